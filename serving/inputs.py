"""Request decoding and limits: uploads and clip arrays -> arrays the predictor can use, or a `ServingError`.

Every check that bounds time or memory runs before the expensive step it protects: the upload's size
before it is opened, the container (sniffed from its bytes; the client's file name is never used)
before FFmpeg sees it, frame/image dimensions from the header before a pixel is decoded, the clip count
before a clip array is built. Decoding and sniffing themselves are `s4d.data.media`'s.
"""
from __future__ import annotations

import base64
import os
from itertools import chain
from dataclasses import dataclass
from typing import Any, Mapping

import cv2
import numpy as np

from s4d.data.media import (UPLOAD_CONTAINERS, MediaError, decode_selected, probe_video, read_image, sniff_file)
from serving.planning import Segment, plan_segments
from serving.settings import ServingSettings

TRUNCATED_BELOW = 0.9  # a video that holds fewer than this share of its declared frames is truncated
MIN_SIDE = 16  # pixels; smaller pictures cannot hold a face the detector can find

# HTTP status per problem. 413: the request is too big; 415: not a kind of input we accept;
# 422: input we understood but cannot answer for (no face, too long, damaged).
STATUS = {
    "empty": 400, "bad_request": 400, "bad_clips": 400, "missing": 400, "bad_json": 400,
    "not_found": 404, "method_not_allowed": 405,
    "too_large": 413, "too_many_clips": 413,
    "not_media": 415, "unsupported_codec": 415, "not_video": 415, "not_image": 415, "bad_content_type": 415,
    "unreadable": 422, "too_long": 422, "no_face": 422, "too_small": 422, "no_static_head": 422,
    "internal": 500, "overloaded": 503,
}
ACCEPTED_VIDEO = "MP4/MOV/M4V, Matroska/WebM or AVI"


class ServingError(Exception):
    """A request the service cannot answer; `code` names the problem, `status` is the HTTP status."""

    def __init__(self, code: str, message: str, status: int | None = None, **detail: Any):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS.get(code, 400)
        self.detail = detail

    @classmethod
    def from_media(cls, error: MediaError, name: str = "upload") -> "ServingError":
        return cls(error.code, f"{name}: {error.problem}")

    def to_dict(self) -> dict:
        body = {"error": self.message, "code": self.code, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        return body


def _check_size(path: str, settings: ServingSettings, name: str) -> None:
    size = os.path.getsize(path)
    if size == 0:
        raise ServingError("empty", f"{name}: the file is empty (0 bytes)")
    if size > settings.max_upload_bytes:
        raise ServingError("too_large", f"{name}: {size / 2**20:.1f} MiB is above the upload limit of "
                           f"{settings.max_upload_mb:g} MiB")


# ------------------------------------------------------------------------------------------------ video
@dataclass
class SampledVideo:
    """The frames a plan asked for, decoded and (if large) downscaled."""
    frames: dict[int, np.ndarray]  # frame index -> (h, w, 3) RGB uint8
    segments: list[Segment]
    fps: float  # from the frame timestamps (or the header); 0.0 when unknown
    total_frames: int
    width: int  # original size
    height: int
    scale: float  # decoded frames = original * scale
    duration: float  # seconds
    times: np.ndarray  # (total_frames,) presentation time of each frame (s)


def decode_for_timeline(path: str | os.PathLike, num_frames: int, stride: int, settings: ServingSettings,
                        name: str = "upload") -> SampledVideo:
    """Decode a video upload keeping only the frames of the timeline's clips.

    1. size, then the container sniffed from the bytes (MP4/MOV, Matroska/WebM, AVI; anything else,
       playlists included, is refused before FFmpeg opens it);
    2. header and packet timestamps (no decoding): frame size, duration, frame count, frame rate;
    3. one decoding pass that converts only the planned frames, downscaled by the decoder's scaler."""
    path = os.fspath(path)
    _check_size(path, settings, name)
    kind, _ = sniff_file(path)
    if kind == "image":
        raise ServingError("not_video", f"{name}: this is an image, not a video; send it to /predict_image")
    if kind != "video":
        raise ServingError("not_media", f"{name}: not a recognised video file (accepted: {ACCEPTED_VIDEO})")
    try:
        info = probe_video(path, name, UPLOAD_CONTAINERS, settings.max_pixels, settings.max_seconds)
        if info.declared and info.frames < TRUNCATED_BELOW * info.declared:
            raise ServingError("unreadable", f"{name}: truncated or damaged: only {info.frames} of the "
                               f"{info.declared} frames it declares are in the file")

        def plan(total: int) -> list[Segment]:
            return plan_segments(total, info.fps, num_frames, stride, settings.segment_seconds,
                                 settings.max_segments, info.times[:total])

        segments = plan(info.frames)
        wanted = {int(i) for s in segments for i in s.frames}
        frames, decoded = decode_selected(path, name, wanted, UPLOAD_CONTAINERS, settings.max_pixels,
                                          settings.max_side)
    except MediaError as e:
        raise ServingError.from_media(e, name) from None
    if not frames:
        raise ServingError("unreadable", f"{name}: truncated or damaged: no frame could be decoded")
    total = info.frames
    if decoded <= max(wanted):  # the decoder stopped before the end of the plan
        if decoded < TRUNCATED_BELOW * info.frames:
            raise ServingError("unreadable", f"{name}: truncated or damaged: only {decoded} of its "
                               f"{info.frames} frames could be decoded")
        total = decoded
        segments = plan(total)
    available = np.array(sorted(frames))  # every planned frame maps to the nearest decoded one
    for s in segments:
        s.frames = available[np.abs(available[None, :] - s.frames[:, None]).argmin(axis=1)]
    first = frames[int(available[0])]
    scale = first.shape[1] / info.width if info.width else 1.0
    duration = float(info.times[total - 1]) + (1.0 / info.fps if info.fps > 0 else 0.0)
    return SampledVideo(frames, segments, info.fps, total, info.width, info.height, scale, duration,
                        info.times[:total])


# ------------------------------------------------------------------------------------------------ image
def read_upload_image(path: str | os.PathLike, settings: ServingSettings, name: str = "upload"):
    """An image upload -> (RGB array with long side <= max_side, original width, original height, scale)."""
    path = os.fspath(path)
    _check_size(path, settings, name)
    kind, _ = sniff_file(path)
    if kind != "image":
        raise ServingError("not_image", f"{name}: not a recognised image file (JPEG, PNG, BMP, WebP, TIFF); "
                           f"videos go to /predict_video")
    try:
        from PIL import Image

        image = read_image(path, max_pixels=settings.max_pixels, max_side=settings.max_side)
        with Image.open(path) as im:  # the header (known to be within the limit): the original size
            width, height = im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF-rotated by a quarter turn
                width, height = height, width
    except MediaError as e:
        raise ServingError.from_media(e, name) from None
    except Exception:  # noqa: BLE001 - PIL refusing the header is a damaged image
        raise ServingError("unreadable", f"{name}: a damaged or truncated image") from None
    if min(image.shape[:2]) < MIN_SIDE:
        raise ServingError("too_small", f"{name}: {width}x{height} pixels is too small to hold a face")
    scale = min(1.0, settings.max_side / max(image.shape[:2]))
    if scale < 1.0:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image, width, height, max(image.shape[:2]) / max(width, height)


# ------------------------------------------------------------------------------------------------ clips
def as_pixels(array: Any) -> np.ndarray:
    """Pixel values (any integer or float array with values in 0..255) -> uint8; ValueError otherwise."""
    try:
        array = np.asarray(array)
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise ValueError(f"clips must be a regular (B, T, H, W, 3) array of numbers: {e}") from None
    if array.dtype == np.uint8:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"clips must be numbers (pixel values 0..255), got {array.dtype} values")
    if array.size and (not np.isfinite(array).all() or array.min() < 0 or array.max() > 255):
        raise ValueError("clips must hold pixel values in 0..255")
    return np.rint(array).astype(np.uint8) if np.issubdtype(array.dtype, np.floating) else array.astype(np.uint8)


def refuse_booleans(value: Any) -> None:
    """ValueError if a nested list holds JSON true/false anywhere: numpy would read them as 1/0 pixels.
    The lists are flattened level by level with C-speed iteration (a 32-clip request has ~3M leaves)."""
    level = [value]
    while level:
        types = set(map(type, level))
        if bool in types:
            raise ValueError("clips must be numbers (pixel values 0..255), got JSON true/false")
        if types <= {list, tuple}:
            level = list(chain.from_iterable(level))
        elif list in types or tuple in types:  # ragged: look inside the lists, refused as ragged later
            level = list(chain.from_iterable(v for v in level if isinstance(v, (list, tuple))))
        else:
            return


def count_clips(value: Any, max_clips: int) -> None:
    """Refuse more than `max_clips` clips before any array is built (ValueError naming the cap)."""
    count = None  # only what looks like a batch of clips is counted; other shapes are refused later
    if isinstance(value, Mapping):
        shape = value.get("shape")
        if isinstance(shape, (list, tuple)) and len(shape) == 5 and isinstance(shape[0], int):
            count = shape[0]
    elif isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
        count = len(value)
    if count is not None and count > max_clips:
        raise ValueError(f"too many clips: {count} in one request, at most {max_clips} (S4D_MAX_CLIPS); "
                         f"split the batch")


def decode_compact(value: Any) -> Any:
    """{"shape": [...], "dtype": "uint8", "data": base64} -> ndarray; anything else is returned as is."""
    if not isinstance(value, Mapping):
        return value
    if value.get("dtype", "uint8") != "uint8":
        raise ValueError(f"compact clips must be uint8, got dtype {value.get('dtype')!r}")
    try:
        shape = tuple(value["shape"])
        if any(type(d) is not int or d < 0 for d in shape):  # true/false/8.5/"8" are not sizes
            raise ValueError(f"sizes must be non-negative integers, got {list(shape)}")
        need = int(np.prod(shape, dtype=np.float64))
        data = value["data"]
        if not isinstance(data, str) or len(data) * 3 // 4 > need + 3:  # before decoding it
            raise ValueError(f"{len(data) if isinstance(data, str) else 0} base64 characters for {need} bytes")
        raw = base64.b64decode(data, validate=True)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"compact clips need 'shape' (a list of ints) and 'data' (base64): {e}") from None
    if need != len(raw):
        raise ValueError(f"compact clips: {len(raw)} bytes do not fill shape {list(shape)}")
    return np.frombuffer(raw, np.uint8).reshape(shape).copy()


def encode_compact(clips: np.ndarray) -> dict:
    """The compact JSON form of a uint8 clip array (for clients)."""
    clips = np.ascontiguousarray(clips, dtype=np.uint8)
    return {"shape": list(clips.shape), "dtype": "uint8", "data": base64.b64encode(clips.tobytes()).decode()}
