"""The camera between the drawn scene and the file: downsampling, lighting, blur, sensor noise, JPEG."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Camera:
    light: np.ndarray  # [S, S, 3] float32 gain field: ambient level, a directional fall-off, colour temperature
    blur_sigma: float  # defocus, output pixels (0 = sharp)
    motion_blur: int  # horizontal motion-blur kernel length, output pixels (0/1 = none)
    noise_std: float  # sensor noise, grey levels
    jpeg_quality: int


def sample_camera(rng: np.random.Generator, size: int, max_blur_sigma: float, noise_std: float,
                  jpeg_quality_min: int, web_still: float = 0.0) -> Camera:
    """`web_still` (0..1, synthetic.domain_gap for stills) moves the draws from a movie camera towards a web
    still's: brighter frontal light, a warm cast, sharper, less noise, harder re-compression. The random
    draws are the same at any value, so 0 gives the video camera exactly."""
    ambient = rng.uniform(0.6, 1.05) + 0.25 * web_still
    strength = rng.uniform(0.0, 0.4) * (1 - 0.6 * web_still)  # how one-sided the light is
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = (np.mgrid[0:size, 0:size] + 0.5) / size - 0.5
    side = np.cos(angle) * xs + np.sin(angle) * ys  # -0.7 .. 0.7 across the frame
    gain = ambient * (1 + strength * 1.4 * side)
    tint = 1 + rng.normal(0, 0.05, 3) + web_still * np.array([0.06, 0.0, -0.06])  # warm / cool light
    light = (gain[..., None] * tint).astype(np.float32)
    dark = ambient < 0.7  # low light: more noise
    return Camera(
        light=light,
        blur_sigma=float(rng.uniform(0, max_blur_sigma) * (1 - 0.75 * web_still)),
        motion_blur=int(rng.integers(3, 6)) if rng.uniform() < 0.1 * (1 - web_still) else 0,
        noise_std=float(rng.uniform(0.2, 1.0) * noise_std * (1.5 if dark else 1.0) * (1 - 0.5 * web_still)),
        jpeg_quality=int(rng.integers(max(min(20, jpeg_quality_min), jpeg_quality_min - round(40 * web_still)), 96)),
    )


def develop(canvas: np.ndarray, camera: Camera, size: int, rng: np.random.Generator) -> np.ndarray:
    """Supersampled RGB canvas -> output-size RGB uint8 frame as the sensor would record it."""
    img = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    img *= camera.light
    if camera.blur_sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), camera.blur_sigma)
    if camera.motion_blur > 1:
        img = cv2.blur(img, (camera.motion_blur, 1))
    img += rng.normal(0, camera.noise_std, img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def encode_jpeg(frame_rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
