"""Decode videos and images into RGB uint8 frames, or fail with a `MediaError` that says why.

OpenCV (its bundled FFmpeg) decodes first because it is the fastest here; PyAV is the fallback for what
OpenCV cannot open, and it tells an unknown codec apart from a broken file. Every failure - missing,
empty, garbage, truncated, too long, too large - becomes a `MediaError` with a machine-readable `code`,
so a batch job can skip and list the file and a service can answer with a clear message.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import cv2
import numpy as np

Source = Union[str, os.PathLike, bytes]

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".webm", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".gif"}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS

MAX_PIXELS = 8192 * 8192  # per frame/image; above this decoding is a memory hazard, not a face clip
MAX_DECODED_BYTES = 2 * 1024**3  # all decoded frames of one video together
TIMEOUT_MS = 15_000  # FFmpeg gives up on a stalled open/read instead of hanging


class MediaError(Exception):
    """A file that cannot be used as media. `code` is one of: missing, empty, not_media, unreadable,
    unsupported_codec, too_long, too_large."""

    def __init__(self, code: str, source: str, problem: str):
        super().__init__(f"{source}: {problem}")
        self.code = code
        self.source = source
        self.problem = problem

    def __reduce__(self):  # so it crosses process boundaries intact
        return MediaError, (self.code, self.source, self.problem)


@dataclass
class Video:
    frames: np.ndarray  # (T, H, W, 3) RGB uint8
    fps: float  # 0.0 when the container does not say
    source: str

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def height(self) -> int:
        return self.frames.shape[1]

    @property
    def width(self) -> int:
        return self.frames.shape[2]

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), the order PIL and OpenCV use."""
        return self.width, self.height

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


def read_media(source: Source, max_frames: int | None = None, max_seconds: float | None = None) -> Video:
    """A video, or an image as a 1-frame Video. Images are told apart by their first bytes, not the name."""
    if isinstance(source, bytes):
        head = source[:512]
    else:
        _check_file(os.fspath(source))
        head = _head(os.fspath(source))
    if _sniff_bytes(head) == "image":
        return Video(read_image(source)[None], fps=0.0, source=_label(source))
    return read_video(source, max_frames, max_seconds)


def read_video(source: Source, max_frames: int | None = None, max_seconds: float | None = None) -> Video:
    """Decode a video into RGB frames.

    max_frames: keep only the first `max_frames` frames (truncation, not an error).
    max_seconds: refuse a video longer than this with code "too_long" (a limit, e.g. for uploads).
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    with _as_path(source) as (path, label):
        return _read_video_file(path, label, max_frames, max_seconds)


def read_image(source: Source) -> np.ndarray:
    """Decode an image into an (H, W, 3) RGB uint8 array (EXIF orientation applied)."""
    label = _label(source)
    data = source if isinstance(source, bytes) else _read_bytes(source)
    if not data:
        raise MediaError("empty", label, "no bytes")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None:
        image = _read_image_pil(data, label)  # formats OpenCV lacks (e.g. some TIFF/WebP variants)
    else:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise MediaError("too_large", label, f"image is {image.shape[1]}x{image.shape[0]}, above {MAX_PIXELS} pixels")
    return image


# ------------------------------------------------------------------------------------------- internals
@contextmanager
def _as_path(source: Source):
    """(path, label): the path itself, or a temporary file for bytes (OpenCV and FFmpeg want a file)."""
    label = _label(source)
    if not isinstance(source, bytes):
        _check_file(os.fspath(source))
        yield os.fspath(source), label
        return
    if not source:
        raise MediaError("empty", label, "no bytes")
    fd, tmp = tempfile.mkstemp(prefix="s4d-media-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(source)
        yield tmp, label
    finally:
        os.unlink(tmp)


def _label(source: Source) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, bytes) else os.fspath(source)


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise MediaError("missing", path, "no such file")
    if not os.path.isfile(path):
        raise MediaError("not_media", path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise MediaError("empty", path, "the file is empty (0 bytes)")


def _read_bytes(path: str | os.PathLike) -> bytes:
    _check_file(os.fspath(path))
    return Path(path).read_bytes()


def _read_image_pil(data: bytes, label: str) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except Image.DecompressionBombError as e:
        raise MediaError("too_large", label, str(e)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        if _sniff_bytes(data[:512]) == "image":
            raise MediaError("unreadable", label, "a damaged or truncated image") from None
        raise MediaError("not_media", label, "not a recognised image file") from None


def _head(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(512)


def _sniff_bytes(head: bytes) -> str:
    """'image', 'video' or 'unknown' from the file signature (magic bytes)."""
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG", b"BM", b"II*\x00", b"MM\x00*")):
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):  # MP4 / MOV
        return "video"
    if head.startswith((b"\x1a\x45\xdf\xa3", b"GIF8", b"FLV", b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3",
                        b"\x30\x26\xb2\x75")) or (head[:4] == b"RIFF" and head[8:12] == b"AVI "):
        return "video"  # Matroska/WebM, GIF, FLV, MPEG-PS, MPEG video, ASF/WMV, AVI
    if len(head) > 376 and head[0] == head[188] == head[376] == 0x47:  # MPEG-TS: a sync byte every 188
        return "video"
    return "unknown"


def _read_video_file(path: str, label: str, max_frames: int | None, max_seconds: float | None) -> Video:
    video = _read_with_opencv(path, label, max_frames, max_seconds)
    if video is None:  # OpenCV could not open it or decoded nothing
        video = _read_with_pyav(path, label, max_frames, max_seconds)
    return video


def _check_limits(label: str, width: int, height: int, frames: int, fps: float, max_seconds: float | None):
    if width * height > MAX_PIXELS:
        raise MediaError("too_large", label, f"frames are {width}x{height}, above {MAX_PIXELS} pixels")
    if max_seconds is not None and fps > 0 and frames / fps > max_seconds:
        raise MediaError("too_long", label, f"the video is longer than the limit of {max_seconds:g} s")
    if frames * width * height * 3 > MAX_DECODED_BYTES:
        raise MediaError("too_large", label, f"{frames} frames of {width}x{height} need more than "
                         f"{MAX_DECODED_BYTES // 2**20} MiB decoded; pass max_frames")


def open_capture(path: str) -> tuple[cv2.VideoCapture, float, int, int, int]:
    """An OpenCV FFmpeg capture with open/read timeouts, and its header: (capture, fps (0 if unknown),
    width, height, declared frame count (an estimate for some containers)). The caller releases it and
    checks `isOpened()`."""
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, TIMEOUT_MS,
                                                   cv2.CAP_PROP_READ_TIMEOUT_MSEC, TIMEOUT_MS])
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    fps = fps if np.isfinite(fps) and 0 < fps < 1000 else 0.0
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    return cap, fps, width, height, max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)


def _read_with_opencv(path, label, max_frames, max_seconds) -> Video | None:
    cap, fps, width, height, declared = open_capture(path)
    try:
        if not cap.isOpened():
            return None
        wanted = min(declared, max_frames) if max_frames else declared
        _check_limits(label, width, height, wanted, fps, max_seconds)  # refuse before decoding anything
        frames = []
        while max_frames is None or len(frames) < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            if len(frames) % 256 == 0:  # declared counts can lie: keep checking while decoding
                _check_limits(label, width, height, len(frames), fps, max_seconds)
        if not frames:
            return None
        _check_limits(label, width, height, len(frames), fps, max_seconds)
        return Video(np.stack(frames), fps, label)
    finally:
        cap.release()


def _read_with_pyav(path, label, max_frames, max_seconds) -> Video:
    import av

    try:
        container = av.open(path, timeout=TIMEOUT_MS / 1000)
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        known = _sniff_bytes(_head(path)) != "unknown"
        code = "unreadable" if known else "not_media"
        what = "a damaged or truncated media file" if known else "not a recognised video or image file"
        detail = getattr(e, "strerror", None) or type(e).__name__
        raise MediaError(code, label, f"{what} ({detail})") from None
    with container:
        if not container.streams.video:
            raise MediaError("not_media", label, "the file has no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise MediaError("unsupported_codec", label, "no decoder for the video codec")
        fps = float(stream.average_rate or 0.0)
        width, height = stream.codec_context.width, stream.codec_context.height
        _check_limits(label, width, height, stream.frames or 0, fps, max_seconds)
        frames = []
        try:
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
                if len(frames) % 256 == 0:
                    _check_limits(label, frame.width, frame.height, len(frames), fps, max_seconds)
        except av.error.DecoderNotFoundError:
            raise MediaError("unsupported_codec", label,
                             f"no decoder for codec {stream.codec_context.name!r}") from None
        except av.error.FFmpegError:
            pass  # a broken tail: keep the frames decoded so far
    if not frames:
        raise MediaError("unreadable", label, "no frame could be decoded (damaged or truncated file)")
    h, w = frames[0].shape[:2]  # a mid-stream resolution change: bring every frame to the first size
    frames = [f if f.shape[:2] == (h, w) else cv2.resize(f, (w, h)) for f in frames]
    _check_limits(label, frames[0].shape[1], frames[0].shape[0], len(frames), fps, max_seconds)
    return Video(np.stack(frames), fps, label)
