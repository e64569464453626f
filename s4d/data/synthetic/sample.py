"""One sample from (config, index): a clip's frames or a still image, as JPEG bytes or decoded RGB arrays.

Each sample draws all its randomness from rng(seed, kind, index), so it comes out byte-identical whichever
process renders it and in whatever order. The decoded arrays are exactly what a reader gets from the files.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from s4d.data.synthetic.camera import Camera, decode_jpeg, develop, encode_jpeg, sample_camera
from s4d.config import SyntheticConfig
from s4d.data.synthetic.dynamics import Timeline, clip_timeline, still_face
from s4d.data.synthetic.face import EMOTIONS, LOOKALIKE, Identity, sample_identity
from s4d.data.synthetic.plan import STREAM, Sample, image_plan, sample_at, stream_rng, video_plan
from s4d.data.synthetic.render import Pose, draw_face
from s4d.data.synthetic.scene import Occluder, background, draw_occluder, sample_occluder


@lru_cache(maxsize=256)
def identity_of(seed: int, identity_id: int, glasses_rate: float) -> Identity:
    return sample_identity(stream_rng(seed, "identity", identity_id), glasses_rate)


@dataclass
class ClipScene:
    """Everything that decides a clip's pixels, before drawing (also the latent truth for analysis)."""
    sample: Sample
    identity: Identity
    timeline: Timeline
    coverage: str  # full / partial / apex_start (see dynamics.expression_timing)
    occluder: Occluder | None
    camera: Camera
    rng: np.random.Generator  # what is left of the sample's stream (per-frame sensor noise)


def clip_scene(cfg: SyntheticConfig, index: int, kind: str = "clip") -> ClipScene:
    sample = sample_at(cfg, kind, index)  # kind "pool_clip": the unlabelled pool
    idt = identity_of(cfg.seed, sample.identity, cfg.glasses_rate)
    rng = stream_rng(cfg.seed, kind, index)
    coverage = "full"
    draw = rng.uniform()
    if sample.emotion != "neutral" and draw < cfg.partial_clip_rate:
        coverage = "partial"
    elif sample.emotion != "neutral" and draw < cfg.partial_clip_rate + cfg.apex_start_rate:
        coverage = "apex_start"
    timeline = clip_timeline(sample.emotion, idt, cfg.num_frames, rng, coverage, cfg.max_yaw_deg,
                             cfg.min_intensity, cfg.lookalike_blend)
    occluder = None
    if rng.uniform() < cfg.occlusion_rate:
        occluder = sample_occluder(rng, idt.skin, moving=rng.uniform() < 0.5)
    camera = sample_camera(rng, cfg.frame_size, cfg.max_blur_sigma, cfg.noise_std, cfg.jpeg_quality_min)
    return ClipScene(sample, idt, timeline, coverage, occluder, camera, rng)


def clip_jpegs(cfg: SyntheticConfig, index: int, kind: str = "clip") -> list:
    """The clip's frames as JPEG bytes, in frame order."""
    scene = clip_scene(cfg, index, kind)
    canvas_size = cfg.frame_size * cfg.supersample
    backdrop = background(scene.rng, canvas_size)
    frames = []
    for i in range(cfg.num_frames):
        canvas = backdrop.copy()
        draw_face(canvas, scene.identity, scene.timeline.aus[i], scene.timeline.poses[i], cfg.face_scale)
        if scene.occluder is not None:
            draw_occluder(canvas, scene.occluder, i / max(1, cfg.num_frames - 1))
        frame = develop(canvas, scene.camera, cfg.frame_size, scene.rng)
        frames.append(encode_jpeg(frame, scene.camera.jpeg_quality))
    return frames


# The expression an annotator confuses a label with (static_label_noise): the look-alike pairs, and the
# subtle classes with neutral.
CONFUSED_WITH = {**LOOKALIKE, "sad": "neutral", "neutral": "sad", "happy": "neutral"}


@dataclass
class StillScene:
    """Everything that decides a still's pixels, before drawing (also the latent truth for analysis)."""
    sample: Sample
    identity: Identity
    shown: str  # the expression drawn: the label's, or another one (static_label_noise)
    aus: np.ndarray
    pose: Pose
    backdrop: np.ndarray  # supersampled background canvas
    occluder: Occluder | None
    camera: Camera
    rng: np.random.Generator  # what is left of the sample's stream (sensor noise)


def shown_expression(cfg: SyntheticConfig, index: int, label: str) -> str:
    """The expression a still shows: its label, or with probability static_label_noise another one (two
    thirds of these the class it is confused with, a third any other), as a web annotator's label can
    disagree with the face. Drawn from its own stream, so the rest of the still does not depend on it."""
    rng = np.random.default_rng([cfg.seed, STREAM["image"], index, 1])
    if rng.uniform() >= cfg.static_label_noise:
        return label
    if rng.uniform() < 2 / 3:
        return CONFUSED_WITH[label]
    return str(rng.choice([e for e in EMOTIONS if e != label]))


def still_scene(cfg: SyntheticConfig, index: int, kind: str = "image") -> StillScene:
    """kind "image": a labelled still; "pool_image": a still of the unlabelled pool (web stills too, so the
    domain gap applies; no label to disagree with)."""
    sample = sample_at(cfg, kind, index)
    idt = identity_of(cfg.seed, sample.identity, cfg.glasses_rate)
    rng = stream_rng(cfg.seed, kind, index)
    shown = shown_expression(cfg, index, sample.emotion) if kind == "image" else sample.emotion
    aus, pose = still_face(shown, idt, rng, cfg.max_yaw_deg, cfg.min_intensity, cfg.lookalike_blend)
    gap = cfg.domain_gap  # web stills: posed towards the camera, the corpus' own tighter, higher alignment
    pose = replace(pose, yaw=pose.yaw * (1 - 0.5 * gap), pitch=pose.pitch * (1 - 0.5 * gap),
                   roll=pose.roll * (1 - 0.5 * gap), scale=pose.scale * (1 + 0.15 * gap), dy=pose.dy - 0.04 * gap)
    backdrop = background(rng, cfg.image_size * cfg.supersample)
    occluder = sample_occluder(rng, idt.skin, moving=False) if rng.uniform() < cfg.occlusion_rate else None
    camera = sample_camera(rng, cfg.image_size, cfg.max_blur_sigma, cfg.noise_std, cfg.jpeg_quality_min, gap)
    return StillScene(sample, idt, shown, aus, pose, backdrop, occluder, camera, rng)


def image_jpeg(cfg: SyntheticConfig, index: int, kind: str = "image") -> bytes:
    scene = still_scene(cfg, index, kind)
    canvas = scene.backdrop
    draw_face(canvas, scene.identity, scene.aus, scene.pose, cfg.face_scale)
    if scene.occluder is not None:
        draw_occluder(canvas, scene.occluder, 0.0)
    return encode_jpeg(develop(canvas, scene.camera, cfg.image_size, scene.rng), scene.camera.jpeg_quality)


def render_clip(cfg: SyntheticConfig, index: int) -> tuple:
    """(frames [T, S, S, 3] uint8 RGB, Sample) for clip id index+1, decoded from its JPEG bytes."""
    frames = np.stack([decode_jpeg(data) for data in clip_jpegs(cfg, index)])
    return frames, video_plan(cfg)[index]


def render_image(cfg: SyntheticConfig, index: int) -> tuple:
    """(image [S, S, 3] uint8 RGB, Sample) for image `index` of image_plan(cfg)."""
    return decode_jpeg(image_jpeg(cfg, index)), image_plan(cfg)[index]
