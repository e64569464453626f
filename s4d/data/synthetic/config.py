"""Parameters of the procedural expression dataset (the `synthetic` section of params.yaml)."""
from dataclasses import dataclass


@dataclass
class SyntheticConfig:
    seed: int = 0  # every sample is seeded from (seed, kind, index): same seed -> same bytes
    root: str = "data/synthetic"  # output folder (videos/, images/, meta.json)
    # videos (DFEW layout)
    frame_size: int = 96  # rendered square video frame, pixels
    num_frames: int = 16  # frames per clip (all clips the same length)
    video_identities: int = 80  # people in the videos
    clips_per_identity: int = 6  # clips per video identity (any expression mix)
    partial_clip_rate: float = 0.25  # share of expressive clips whose expression covers only part of the frames
    min_intensity: float = 0.85  # weakest apex intensity of an expression (1 = full prototype)
    lookalike_blend: float = 0.2  # most an expression blends towards its look-alike (fear/surprise, ...)
    apex_start_rate: float = 0.15  # share of expressive clips already at the apex in frame 1 (no onset to see)
    face_scale: float = 0.45  # face half-width as a share of the frame (aligned-face crops: the face fills it)
    # static images (RAF-DB layout)
    image_size: int = 96  # rendered square still image, pixels
    image_identity_ratio: float = 10.0  # image identities per video identity (static data is far larger)
    images_per_identity: int = 2  # stills per image identity
    # identity-disjoint splits (same fractions for videos and images)
    val_fraction: float = 0.1  # identities in val (written into the train lists, as DFEW/RAF-DB have no val)
    test_fraction: float = 0.2  # identities in test
    # nuisances
    supersample: int = 2  # draw at this multiple of the output size, then INTER_AREA down (anti-aliasing)
    occlusion_rate: float = 0.02  # share of samples with a hand/object in front of the face
    glasses_rate: float = 0.25  # share of identities wearing glasses
    max_yaw_deg: float = 8.0  # head yaw reaches about +-75 % of this; pitch about half, roll a fifth
    noise_std: float = 2.0  # upper bound of sensor noise, in 0..255 grey levels
    max_blur_sigma: float = 0.4  # upper bound of defocus blur, output pixels
    jpeg_quality_min: int = 80  # each sample is written at a quality drawn from [jpeg_quality_min, 95]
