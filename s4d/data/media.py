"""Decode videos and images into RGB uint8 frames, or fail with a `MediaError` that says why.

OpenCV (its bundled FFmpeg) decodes first because it is the fastest here; PyAV is the fallback for what
OpenCV cannot open, and it tells an unknown codec apart from a broken file. Every failure - missing,
empty, garbage, truncated, too long, too large - becomes a `MediaError` with a machine-readable `code`,
so a batch job can skip and list the file and a service can answer with a clear message.

Safety (files may come from strangers): nothing is handed to FFmpeg before its first bytes name one of
the self-contained containers in `CONTAINERS`. FFmpeg picks its demuxer from the file name and content,
and some demuxers open other files or URLs (HLS playlists, concat lists), render text, or read image
sequences; here the demuxer is forced to the sniffed one and only the `file` protocol is allowed.
Image and frame sizes are read from the header and checked against a pixel budget before any pixel is
decoded.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Union

import cv2
import numpy as np

Source = Union[str, os.PathLike, bytes]

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".webm", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".gif"}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS

MAX_PIXELS = 8192 * 8192  # per frame/image; above this decoding is a memory hazard, not a face clip
MAX_FPS = 1000.0  # a header frame rate above this (or <= 0) is not believed: timing comes from timestamps

# Sniffed container -> the FFmpeg demuxer forced for it. Each reads only the file it is given.
CONTAINERS = {"mp4": "mov", "matroska": "matroska", "avi": "avi", "mpegts": "mpegts", "mpeg": "mpeg",
              "flv": "flv", "asf": "asf", "gif": "gif"}
UPLOAD_CONTAINERS = ("mp4", "matroska", "avi")  # mp4/mov/m4v, mkv/webm, avi: what a service accepts
IMAGE_FORMATS = ("jpeg", "png", "bmp", "tiff", "webp")
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


def read_image(source: Source, max_pixels: int = MAX_PIXELS, max_side: int | None = None) -> np.ndarray:
    """Decode an image into an (H, W, 3) RGB uint8 array (EXIF orientation applied).

    The size is read from the header and checked against `max_pixels` before any pixel is decoded (a
    small file can claim a huge picture). With `max_side`, a JPEG is decoded directly at a reduced scale
    (1/2, 1/4, 1/8) where that still leaves at least `max_side` on the long side."""
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    label = _label(source)
    data = source if isinstance(source, bytes) else None
    if data is None:
        _check_file(os.fspath(source))
    elif not data:
        raise MediaError("empty", label, "no bytes")
    try:
        with Image.open(io.BytesIO(data) if data is not None else os.fspath(source)) as im:  # header only
            width, height = im.size
            if width * height > max_pixels:
                raise MediaError("too_large", label, f"image is {width}x{height} = {width * height} pixels, "
                                 f"above the limit of {max_pixels}")
            if max_side and im.format == "JPEG":
                im.draft("RGB", (max_side, max_side))  # scale >= max_side / long side, decoded smaller
            image = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except Image.DecompressionBombError as e:
        raise MediaError("too_large", label, str(e)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        head = data[:512] if data is not None else _head(os.fspath(source))
        if _sniff_bytes(head) == "image":
            raise MediaError("unreadable", label, "a damaged or truncated image") from None
        raise MediaError("not_media", label, "not a recognised image file") from None
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


def _head(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(512)


def sniff(head: bytes) -> tuple[str, str]:
    """(kind, format) from a file's first bytes (magic numbers, never the name): kind is 'image', 'video'
    or 'unknown'; format is a key of CONTAINERS, one of IMAGE_FORMATS, or ''."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image", "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", "png"
    if head.startswith(b"BM") and len(head) >= 26:
        return "image", "bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image", "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image", "webp"
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):  # MP4 / MOV / M4V
        return "video", "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video", "matroska"  # also WebM
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video", "avi"
    if head.startswith(b"GIF8"):
        return "video", "gif"
    if head.startswith(b"FLV"):
        return "video", "flv"
    if head.startswith((b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")):
        return "video", "mpeg"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "video", "asf"
    if len(head) > 376 and head[0] == head[188] == head[376] == 0x47:  # MPEG-TS: a sync byte every 188
        return "video", "mpegts"
    return "unknown", ""


def sniff_file(path: str | os.PathLike) -> tuple[str, str]:
    return sniff(_head(os.fspath(path)))


def _sniff_bytes(head: bytes) -> str:
    return sniff(head)[0]


def _read_video_file(path: str, label: str, max_frames: int | None, max_seconds: float | None) -> Video:
    check_container(path, label)  # before FFmpeg sees the file
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

    container = open_container(path, label)
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


# ------------------------------------------------------------------------------- safe, bounded decoding
def check_container(path: str, label: str, allowed=tuple(CONTAINERS)) -> str:
    """The sniffed container of `path` if it is one of `allowed`, else MediaError('not_media')."""
    kind, fmt = sniff_file(path)
    if fmt in allowed:
        return fmt
    names = ", ".join(sorted(allowed))
    if kind == "image":
        raise MediaError("not_media", label, f"this is an image ({fmt}), not a video")
    if kind == "video":
        raise MediaError("not_media", label, f"a {fmt} container is not accepted here (accepted: {names})")
    raise MediaError("not_media", label, f"not a recognised video file (accepted containers: {names})")


def open_container(path: str, label: str, allowed=tuple(CONTAINERS)):
    """A PyAV input container whose demuxer is forced to the sniffed, allowed container, with only the
    `file` protocol: a playlist or concat list can never make FFmpeg open another file or a URL."""
    import av

    demuxer = CONTAINERS[check_container(path, label, allowed)]
    options = {"protocol_whitelist": "file", "format_whitelist": demuxer}
    try:
        return av.open(path, format=demuxer, options=options, timeout=TIMEOUT_MS / 1000)
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        detail = getattr(e, "strerror", None) or type(e).__name__
        raise MediaError("unreadable", label, f"a damaged or truncated media file ({detail})") from None


@dataclass
class VideoInfo:
    """What the header and the packets say, before any frame is decoded."""
    container: str
    width: int
    height: int
    frames: int  # video packets found (one per frame)
    declared: int  # the frame count the header declares (0 when it does not say)
    fps: float  # from the frame timestamps where they exist, else the header (0.0 when neither)
    header_fps: float
    times: np.ndarray  # (frames,) presentation time of each frame in seconds, from 0

    @property
    def duration(self) -> float:
        if self.frames == 0:
            return 0.0
        step = 1.0 / self.fps if self.fps > 0 else 0.0
        return float(self.times[-1] + step)


def probe_video(path: str, label: str, allowed=UPLOAD_CONTAINERS, max_pixels: int = MAX_PIXELS,
                max_seconds: float | None = None, max_frames: int = 200_000) -> VideoInfo:
    """Header and packet timestamps of a video, without decoding a frame: refuses a disallowed container
    (not_media), frames above `max_pixels` (too_large), a video longer than `max_seconds` (too_long) and
    a codec without decoder (unsupported_codec) before any pixel is decoded."""
    import av

    with open_container(path, label, allowed) as container:
        if not container.streams.video:
            raise MediaError("not_media", label, "the file has no video stream")
        stream = container.streams.video[0]
        codec = stream.codec_context
        if codec is None:
            raise MediaError("unsupported_codec", label, "no decoder for the video codec")
        width, height = int(codec.width or 0), int(codec.height or 0)
        if width * height > max_pixels:
            raise MediaError("too_large", label, f"frames are {width}x{height} = {width * height} pixels, "
                             f"above the limit of {max_pixels}")
        rate = float(stream.average_rate or stream.guessed_rate or 0.0)
        header_fps = rate if np.isfinite(rate) and 0 < rate <= MAX_FPS else 0.0
        declared = int(stream.frames or 0)
        base = float(stream.time_base) if stream.time_base else 0.0
        if max_seconds is not None and container.duration and container.duration / 1e6 > max_seconds + 1:
            raise MediaError("too_long", label, f"the video lasts {container.duration / 1e6:.1f} s, longer "
                             f"than the limit of {max_seconds:g} s")
        stamps, count = [], 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                count += 1
                stamps.append(packet.pts)
                if count > max_frames:
                    raise MediaError("too_long", label, f"more than {max_frames} frames")
                if max_seconds is not None and packet.pts is not None and base and count % 64 == 0 \
                        and (packet.pts - (stamps[0] or 0)) * base > max_seconds + 1:
                    raise MediaError("too_long", label, f"the video is longer than the limit of {max_seconds:g} s")
        except av.error.FFmpegError:
            pass  # a broken tail: the packets found so far
    if count == 0:
        raise MediaError("unreadable", label, "no video frame in the file (damaged or truncated)")
    if base and all(p is not None for p in stamps) and len(set(stamps)) == count:
        times = np.sort(np.asarray(stamps, np.float64)) * base
        times -= times[0]
        steps = np.diff(times)
        step = float(np.median(steps)) if len(steps) else 0.0
        fps = 1.0 / step if step > 0 else header_fps
    else:  # no usable timestamps (some AVI): the header's rate, else a common default
        fps = header_fps
        times = np.arange(count) / (fps if fps > 0 else 25.0)
    info = VideoInfo(check_container(path, label, allowed), width, height, count, declared, fps, header_fps, times)
    if max_seconds is not None and info.duration > max_seconds:
        raise MediaError("too_long", label, f"the video lasts {info.duration:.1f} s, longer than the limit of "
                         f"{max_seconds:g} s")
    return info


def decode_selected(path: str, label: str, wanted: set[int], allowed=UPLOAD_CONTAINERS,
                    max_pixels: int = MAX_PIXELS, max_side: int | None = None) -> tuple[dict[int, np.ndarray], int]:
    """Decode a video once, converting only the frames whose index (presentation order) is in `wanted`
    to RGB uint8, downscaled by the decoder's scaler so the long side is at most `max_side`. Stops after
    the last wanted frame. Returns ({index: frame}, frames decoded); a broken tail ends the decode."""
    import av

    last = max(wanted) if wanted else -1
    frames: dict[int, np.ndarray] = {}
    index = 0
    with open_container(path, label, allowed) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads: the decoder uses the cores
        try:
            for frame in container.decode(stream):
                if frame.width * frame.height > max_pixels:  # a resolution change mid-stream
                    raise MediaError("too_large", label, f"a frame of {frame.width}x{frame.height} is above "
                                     f"the limit of {max_pixels} pixels")
                if index in wanted:
                    scale = min(1.0, max_side / max(frame.width, frame.height)) if max_side else 1.0
                    if scale < 1.0:
                        frame = frame.reformat(width=max(2, round(frame.width * scale)),
                                               height=max(2, round(frame.height * scale)),
                                               interpolation="AREA")
                    frames[index] = frame.to_ndarray(format="rgb24")
                index += 1
                if index > last:
                    break
        except av.error.DecoderNotFoundError:
            raise MediaError("unsupported_codec", label, f"no decoder for codec {stream.codec_context.name!r}") from None
        except av.error.FFmpegError:
            pass
    return frames, index
