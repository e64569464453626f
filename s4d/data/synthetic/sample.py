"""One sample from (config, index): a clip's frames or a still image, as JPEG bytes or decoded RGB arrays.

Each sample draws all its randomness from rng(seed, kind, index), so it comes out byte-identical whichever
process renders it and in whatever order. The decoded arrays are exactly what a reader gets from the files.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from s4d.data.synthetic.camera import Camera, decode_jpeg, develop, encode_jpeg, sample_camera
from s4d.config import SyntheticConfig
from s4d.data.synthetic.dynamics import Timeline, clip_timeline, still_face
from s4d.data.synthetic.face import Identity, sample_identity
from s4d.data.synthetic.plan import Sample, image_plan, sample_at, stream_rng, video_plan
from s4d.data.synthetic.render import draw_face
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


def image_jpeg(cfg: SyntheticConfig, index: int, kind: str = "image") -> bytes:
    sample = sample_at(cfg, kind, index)  # kind "pool_image": the unlabelled pool
    idt = identity_of(cfg.seed, sample.identity, cfg.glasses_rate)
    rng = stream_rng(cfg.seed, kind, index)
    aus, pose = still_face(sample.emotion, idt, rng, cfg.max_yaw_deg, cfg.min_intensity, cfg.lookalike_blend)
    canvas = background(rng, cfg.image_size * cfg.supersample)
    draw_face(canvas, idt, aus, pose, cfg.face_scale)
    if rng.uniform() < cfg.occlusion_rate:
        draw_occluder(canvas, sample_occluder(rng, idt.skin, moving=False), 0.0)
    camera = sample_camera(rng, cfg.image_size, cfg.max_blur_sigma, cfg.noise_std, cfg.jpeg_quality_min)
    return encode_jpeg(develop(canvas, camera, cfg.image_size, rng), camera.jpeg_quality)


def render_clip(cfg: SyntheticConfig, index: int) -> tuple:
    """(frames [T, S, S, 3] uint8 RGB, Sample) for clip id index+1, decoded from its JPEG bytes."""
    frames = np.stack([decode_jpeg(data) for data in clip_jpegs(cfg, index)])
    return frames, video_plan(cfg)[index]


def render_image(cfg: SyntheticConfig, index: int) -> tuple:
    """(image [S, S, 3] uint8 RGB, Sample) for image `index` of image_plan(cfg)."""
    return decode_jpeg(image_jpeg(cfg, index)), image_plan(cfg)[index]
