"""Video / image / clip -> emotion prediction, free of any web framework (the service is a thin shell).

Video: the upload is decoded in one streaming pass that keeps only the frames the timeline needs; the
video is cut into segments of about `segment_seconds`, and each segment gets one clip of `num_frames`
frames `frame_stride` apart from its middle (the stride and face crop size the model was trained with,
read from the checkpoint). The main face is tracked over those frames with the same detector, tracking
and eye-level alignment as preprocessing (`s4d.data.faces`), the aligned crops go through the same
resize + ImageNet normalisation as the data loaders, and the DFER head scores every segment. The video
answer is the mean of the segment probabilities (as multi-view evaluation averages its views).

Image: the SFER head on the largest face, aligned; a picture that already is a face crop (the face fills
most of it, or a detector only finds the face once the picture is padded) is used whole.

Every bad input ends as a `ServingError` with a machine-readable `code`, an HTTP status and a message
that names the problem; the service turns it into a JSON 4xx answer.

Limits and knobs are a `ServingSettings`, read from environment variables (see `ServingSettings.from_env`
and serving/README.md).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Mapping

import cv2
import numpy as np
import torch

from s4d.data.faces import FaceDetector, align_face, track_faces
from s4d.data.loaders import MEAN, STD, clip_indices, spatial_crops
from s4d.data.media import MAX_PIXELS, TIMEOUT_MS, MediaError, open_capture, read_image, read_media
from s4d.models.checkpoint import build_model, read_checkpoint
from s4d.precision import use_bf16 as measured_bf16
from s4d.registry import label_names

logger = logging.getLogger("s4d.serving")

DEFAULT_FPS = 25.0  # for timestamps when a container does not tell its frame rate
TRUNCATED_BELOW = 0.9  # a video that decodes to fewer than this share of its declared frames is truncated
FACE_CROP_SHARE = 0.4  # a face box covering this share of the picture: the picture is a face crop
MIN_SIDE = 16  # pixels; smaller pictures cannot hold a face the detector can find


# -------------------------------------------------------------------------------------------- settings
def _env(name: str, default: Any, help: str) -> Any:
    return field(default=default, metadata={"env": name, "help": help})


@dataclass(frozen=True)
class ServingSettings:
    """Serving limits and knobs. Each field is read from its environment variable (defaults below)."""

    max_upload_mb: float = _env("S4D_MAX_UPLOAD_MB", 50.0, "largest accepted upload (MiB); larger -> 413 too_large")
    max_seconds: float = _env("S4D_MAX_SECONDS", 60.0, "longest accepted video (s); longer -> 422 too_long")
    uncertain_threshold: float = _env("S4D_UNCERTAIN_THRESHOLD", 0.5,
                                      "answers whose top probability is below this are flagged uncertain")
    segment_seconds: float = _env("S4D_SEGMENT_SECONDS", 1.0, "timeline resolution: one clip per segment (s)")
    max_segments: int = _env("S4D_MAX_SEGMENTS", 30, "most timeline segments per video (longer videos get "
                                                   "longer segments)")
    detect_every: int = _env("S4D_DETECT_EVERY", 4, "run the face detector on every k-th sampled frame, track "
                                                  "in between (as preprocessing does)")
    detector: str = _env("S4D_FACE_DETECTOR", "mtcnn", "face detector backend: mtcnn | yunet")
    max_side: int = _env("S4D_MAX_SIDE", 960, "decoded frames are downscaled to this long side (px)")
    device: str = _env("S4D_DEVICE", "auto", "auto (cuda if available) | cpu | cuda")
    bf16: str = _env("S4D_BF16", "auto", "auto (CUDA with bf16, or a CPU measured faster in bf16) | on | off")
    torch_threads: int = _env("S4D_TORCH_THREADS", 0, "CPU threads per model/detector call; 0 = measure 1 vs all "
                                                     "cores per batch size and keep the faster (shared CPUs)")
    moae_full_capacity: bool = _env("S4D_MOAE_FULL_CAPACITY", True, "MoAE experts take every token routed to "
                                    "them (no capacity drop): a clip's answer never depends on the clips "
                                    "batched with it")
    batch_max_size: int = _env("S4D_BATCH_MAX_SIZE", 32, "adaptive batching: most clips per model call")
    batch_max_latency_ms: int = _env("S4D_BATCH_MAX_LATENCY_MS", 30000,
                                     "adaptive batching: a queued clip older than this is refused (503)")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ServingSettings":
        """Defaults, overridden by the environment. A value of the wrong type or range raises ValueError
        naming the variable."""
        env = os.environ if env is None else env
        values = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            if name not in env or env[name] == "":
                continue
            raw = env[name]
            try:
                if isinstance(f.default, bool):
                    if raw.strip().lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                        raise ValueError(raw)
                    values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
                else:
                    values[f.name] = type(f.default)(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r}: expected a {type(f.default).__name__}") from None
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                env = next(f.metadata["env"] for f in dataclasses.fields(self) if f.name == name)
                raise ValueError(f"{env}={getattr(self, name)!r}: {what}")

        need(self.max_upload_mb > 0, "max_upload_mb", "must be > 0")
        need(self.max_seconds > 0, "max_seconds", "must be > 0")
        need(0.0 <= self.uncertain_threshold <= 1.0, "uncertain_threshold", "must be in [0, 1]")
        need(self.segment_seconds > 0, "segment_seconds", "must be > 0")
        need(self.max_segments >= 1, "max_segments", "must be >= 1")
        need(self.detect_every >= 1, "detect_every", "must be >= 1")
        need(self.detector in ("mtcnn", "yunet"), "detector", "must be mtcnn or yunet")
        need(self.max_side >= 64, "max_side", "must be >= 64")
        need(self.device in ("auto", "cpu", "cuda"), "device", "must be auto, cpu or cuda")
        need(self.bf16 in ("auto", "on", "off"), "bf16", "must be auto, on or off")
        need(self.torch_threads >= 0, "torch_threads", "must be >= 0")
        need(self.batch_max_size >= 1, "batch_max_size", "must be >= 1")
        need(self.batch_max_latency_ms >= 1, "batch_max_latency_ms", "must be >= 1")

    def as_env(self) -> dict[str, Any]:
        """{ENV_NAME: value in force}."""
        return {f.metadata["env"]: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def describe(cls) -> list[dict]:
        """[{env, default, help}] for documentation and the metadata endpoint."""
        return [{"env": f.metadata["env"], "default": f.default, "help": f.metadata["help"]}
                for f in dataclasses.fields(cls)]


# ---------------------------------------------------------------------------------------------- errors
# HTTP status per problem. 413: the request is too big; 415: not a kind of media we can decode;
# 422: media we understood but cannot answer for (no face, too long, damaged).
STATUS = {
    "empty": 400, "bad_request": 400, "bad_clips": 400,
    "too_large": 413,
    "not_media": 415, "unsupported_codec": 415, "not_video": 415, "not_image": 415,
    "unreadable": 422, "too_long": 422, "no_face": 422, "too_small": 422, "no_static_head": 422,
    "missing": 400,
}


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


# --------------------------------------------------------------------------------------------- planning
@dataclass
class Segment:
    t_start: float
    t_end: float
    frames: np.ndarray  # original frame indices of its clip (num_frames of them)


def plan_segments(total: int, fps: float, num_frames: int, stride: int, segment_seconds: float,
                  max_segments: int) -> list[Segment]:
    """Cut `total` frames into about duration / segment_seconds segments (1 .. max_segments) and place
    one clip of `num_frames` frames `stride` apart in the middle of each. Clips longer than the video
    repeat its last frame, as the training loader does."""
    if total < 1:
        return []
    fps = fps if fps > 0 else DEFAULT_FPS
    count = int(np.clip(round(total / fps / segment_seconds), 1, max_segments))
    span = (num_frames - 1) * stride + 1
    bounds = np.linspace(0, total, count + 1)
    segments = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        start = int(round((a + b) / 2 - span / 2))
        start = max(0, min(start, total - span))
        segments.append(Segment(float(a / fps), float(b / fps), clip_indices(total, num_frames, stride, start)))
    return segments


# --------------------------------------------------------------------------------------------- decoding
@dataclass
class SampledVideo:
    """The frames a plan asked for, decoded and (if large) downscaled."""
    frames: dict[int, np.ndarray]  # original frame index -> (H, W, 3) RGB uint8
    segments: list[Segment]
    fps: float  # 0.0 when unknown
    total_frames: int
    width: int  # original size
    height: int
    scale: float  # decoded frames = original * scale

    @property
    def duration(self) -> float:
        return self.total_frames / (self.fps if self.fps > 0 else DEFAULT_FPS)


_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"BM", b"II*\x00", b"MM\x00*")


def looks_like_image(head: bytes) -> bool:
    return head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _downscale(frame: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return frame
    size = (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def decode_for_timeline(path: str | os.PathLike, num_frames: int, stride: int, settings: ServingSettings,
                        name: str = "upload") -> SampledVideo:
    """Decode a video keeping only the frames of the timeline's clips.

    OpenCV streams through the file once (frames that are not needed are grabbed, never converted) and
    stops after the last frame needed. What OpenCV cannot open or decode goes to `read_media` (PyAV),
    which also says precisely why a file is unusable (empty, not media, damaged, unknown codec)."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size == 0:
        raise ServingError("empty", f"{name}: the file is empty (0 bytes)")
    if size > settings.max_upload_bytes:
        raise ServingError("too_large", f"{name}: {size / 2**20:.1f} MiB is above the upload limit of "
                           f"{settings.max_upload_mb:g} MiB")
    with open(path, "rb") as f:
        head = f.read(512)
    if looks_like_image(head):
        raise ServingError("not_video", f"{name}: this is an image, not a video; send it to /predict_image")

    def plan(total: int, fps: float) -> list[Segment]:
        return plan_segments(total, fps, num_frames, stride, settings.segment_seconds, settings.max_segments)

    sampled = _decode_opencv(path, name, settings, plan, stride)
    if sampled is not None:
        return sampled
    try:  # OpenCV could not open it or decoded nothing: PyAV decodes it or names the problem
        video = read_media(path, max_seconds=settings.max_seconds)
    except MediaError as e:
        raise ServingError.from_media(e, name) from None
    if video.num_frames == 1 and video.fps == 0.0:
        raise ServingError("not_video", f"{name}: this is an image, not a video; send it to /predict_image")
    declared = _declared_frames(path)
    if declared and video.num_frames < TRUNCATED_BELOW * declared:
        raise ServingError("unreadable", f"{name}: truncated or damaged: only {video.num_frames} of the "
                           f"{declared} frames it declares could be decoded")
    segments = plan(video.num_frames, video.fps)
    scale = min(1.0, settings.max_side / max(video.width, video.height))
    wanted = sorted({int(i) for s in segments for i in s.frames})
    return SampledVideo({i: _downscale(video.frames[i], scale) for i in wanted}, segments, video.fps,
                        video.num_frames, video.width, video.height, scale)


def _declared_frames(path: str) -> int:
    """The frame count the container declares (0 when it does not say or cannot be read)."""
    try:
        import av

        with av.open(path, timeout=TIMEOUT_MS / 1000) as container:
            return int(container.streams.video[0].frames or 0) if container.streams.video else 0
    except Exception:  # noqa: BLE001 - only a hint for the truncation check
        return 0


def _decode_opencv(path: str, name: str, settings: ServingSettings, plan, stride: int) -> SampledVideo | None:
    cap, fps, width, height, declared = open_capture(path)
    try:
        if not cap.isOpened():
            return None
        if width * height > MAX_PIXELS:
            raise ServingError("too_large", f"{name}: frames are {width}x{height}, above {MAX_PIXELS} pixels")
        rate = fps if fps > 0 else DEFAULT_FPS
        if declared and declared / rate > settings.max_seconds:
            raise ServingError("too_long", f"{name}: the video lasts {declared / rate:.1f} s, longer than the "
                               f"limit of {settings.max_seconds:g} s")
        scale = min(1.0, settings.max_side / max(width, height, 1))
        known = declared > 1  # a frame count to plan from before decoding (else keep every stride-th frame)
        segments = plan(declared, fps) if known else []
        wanted = {int(i) for s in segments for i in s.frames}
        last = max(wanted) if known else None
        frames: dict[int, np.ndarray] = {}
        index = 0
        while last is None or index <= last:
            if not cap.grab():
                break
            if (index in wanted) if known else (index % stride == 0):
                ok, bgr = cap.retrieve()
                if ok:
                    frames[index] = _downscale(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), scale)
            index += 1
            if not known and index / rate > settings.max_seconds:
                raise ServingError("too_long", f"{name}: the video is longer than the limit of "
                                   f"{settings.max_seconds:g} s")
        if not frames:
            return None
        if known:
            if index <= last:  # the file ended before the frames it declares
                if index < TRUNCATED_BELOW * declared:
                    raise ServingError("unreadable", f"{name}: truncated or damaged: only {index} of the "
                                       f"{declared} frames it declares could be decoded")
                segments = plan(index, fps)
            total = declared if index > last else index
        else:
            total = index
            segments = plan(total, fps)
        # Every planned frame maps to the nearest decoded one (exact unless the tail was missing or
        # frames were kept every stride-th).
        available = np.array(sorted(frames))
        for s in segments:
            nearest = np.abs(available[None, :] - s.frames[:, None]).argmin(axis=1)
            s.frames = available[nearest]
        return SampledVideo(frames, segments, fps, total, width, height, scale)
    finally:
        cap.release()


# --------------------------------------------------------------------------------------------- predictor
def _box(box: np.ndarray, scale: float) -> list[float]:
    """A box in the decoded frame -> [x1, y1, x2, y2] in original pixels, 0.1 px precision."""
    return [round(float(v) / scale, 1) for v in box]


def as_pixels(array: Any) -> np.ndarray:
    """Pixel values (any integer or float array with values in 0..255) -> uint8; ValueError otherwise."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"clips must be numbers (pixel values 0..255), got {array.dtype} values")
    if array.size and (not np.isfinite(array).all() or array.min() < 0 or array.max() > 255):
        raise ValueError("clips must hold pixel values in 0..255")
    return np.rint(array).astype(np.uint8) if np.issubdtype(array.dtype, np.floating) else array.astype(np.uint8)


def decode_compact(value: Any) -> Any:
    """{"shape": [...], "dtype": "uint8", "data": base64} -> ndarray; anything else is returned as is."""
    if not isinstance(value, Mapping):
        return value
    import base64

    if value.get("dtype", "uint8") != "uint8":
        raise ValueError(f"compact clips must be uint8, got dtype {value.get('dtype')!r}")
    try:
        raw = base64.b64decode(value["data"], validate=True)
        shape = tuple(int(d) for d in value["shape"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"compact clips need 'shape' (a list of ints) and 'data' (base64): {e}") from None
    if any(d < 0 for d in shape) or int(np.prod(shape)) != len(raw):
        raise ValueError(f"compact clips: {len(raw)} bytes do not fill shape {list(shape)}")
    return np.frombuffer(raw, np.uint8).reshape(shape).copy()


def encode_compact(clips: np.ndarray) -> dict:
    """The compact JSON form of a uint8 clip array (for clients)."""
    import base64

    clips = np.ascontiguousarray(clips, dtype=np.uint8)
    return {"shape": list(clips.shape), "dtype": "uint8", "data": base64.b64encode(clips.tobytes()).decode()}


def plain(value: Any) -> Any:
    """JSON-safe copy of an answer: numpy scalars/arrays -> Python numbers/lists."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def full_moae_capacity(model: torch.nn.Module) -> int:
    """Give every MoAE layer room for all its tokens, so no token is dropped over capacity.

    In training, an expert takes at most capacity_factor * tokens * top_k / experts of the tokens of the
    whole batch, and the rest skip the adapters. At inference that would make a clip's answer depend on
    which other clips share its batch (adaptive batching, the segments of one video). With capacity =
    tokens nothing is dropped and each token gets exactly its top-k experts. Returns the layers changed."""
    layers = model.moae_layers() if hasattr(model, "moae_layers") else []
    for layer in layers:
        layer.capacity_factor = max(float(layer.capacity_factor), layer.num_experts / layer.top_k)
    return len(layers)


def pick_device(setting: str = "auto") -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def use_bf16(setting: str, device: torch.device) -> bool:
    if setting == "on":
        return True
    if setting == "off":
        return False
    return measured_bf16("auto", device)  # CUDA with bf16, or a CPU measured faster in bf16 (s4d.precision)


class ThreadTuner:
    """Chooses how a CPU call uses the cores, from measured speed.

    Modes: 1 (one thread), N (torch's intra-op threads over all N cores) and, for batches of 2+ items,
    -N (the batch split into N parts run side by side, one thread each). On a dedicated machine N threads
    are fast for large batches; on a shared one (other jobs on the cores) an N-thread call waits for a
    descheduled thread at every parallel region and can be many times slower than one thread, while the
    independent parts of -N do not wait for each other. So each (kind, batch-size bucket) tries every
    mode, keeps an average of seconds per item for each, uses the fastest, and re-checks the runner-up
    every `explore_every` calls (the load changes)."""

    def __init__(self, cores: int, fixed: int = 0, explore_every: int = 32):
        self.cores = max(1, cores)
        self.options = [fixed] if fixed else sorted({1, self.cores})
        self.explore_every = explore_every
        self.seconds: dict[tuple, dict[int, float]] = {}
        self.calls: dict[tuple, int] = {}

    @staticmethod
    def bucket(n: int) -> int:
        return 1 << min(int(n).bit_length() - 1, 5) if n > 0 else 0  # 1, 2, 4, 8, 16, 32+

    def modes(self, n: int, splittable: bool = True) -> list[int]:
        if len(self.options) > 1 and splittable and n >= 2:
            return [*self.options, -self.cores]
        return list(self.options)

    def choose(self, kind: str, n: int, splittable: bool = True) -> int:
        modes = self.modes(n, splittable)
        if len(modes) == 1:
            return modes[0]
        key = (kind, self.bucket(n))
        seen = self.seconds.setdefault(key, {})
        for mode in modes:
            if mode not in seen:
                return mode
        self.calls[key] = self.calls.get(key, 0) + 1
        ranked = sorted(modes, key=seen.get)
        return ranked[1] if self.calls[key] % self.explore_every == 0 else ranked[0]

    def record(self, kind: str, n: int, mode: int, seconds: float) -> None:
        if len(self.options) == 1 or n < 1:
            return
        seen = self.seconds.setdefault((kind, self.bucket(n)), {})
        per_item = seconds / n
        seen[mode] = per_item if mode not in seen else 0.7 * seen[mode] + 0.3 * per_item

    def summary(self) -> dict:
        """{"kind/bucket": {mode: ms per item}}; mode "-2" = split in 2 parts of one thread each."""
        return {f"{kind}/{bucket}": {str(t): round(1000 * s, 2) for t, s in sorted(seen.items())}
                for (kind, bucket), seen in sorted(self.seconds.items())}


class Predictor:
    """A loaded classifier plus the face pipeline. Thread-safe: model and detector calls are serialised
    (on a CPU they would only fight over the same cores)."""

    def __init__(self, model: torch.nn.Module, labels: dict[str, list[str]], settings: ServingSettings | None = None,
                 *, face_size: int = 112, margin: float = 0.2, frame_stride: int = 2,
                 info: dict | None = None, detector: FaceDetector | None = None):
        self.settings = settings or ServingSettings()
        self.device = pick_device(self.settings.device)
        self.bf16 = use_bf16(self.settings.bf16, self.device)
        self.model = model.eval().to(self.device)
        self.labels = labels
        self.face_size, self.margin, self.frame_stride = face_size, margin, frame_stride
        self.img_size, self.num_frames = model.cfg.img_size, model.cfg.num_frames
        self.has_static = getattr(model, "head_static", None) is not None
        self.info = dict(info or {})
        self.detector = detector or FaceDetector(self.settings.detector, device=str(self.device))
        self._lock = threading.Lock()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        fixed = self.settings.torch_threads or (torch.get_num_threads() if self.device.type == "cuda" else 0)
        self.threads = ThreadTuner(cores, fixed)
        self._pool = ThreadPoolExecutor(max(1, cores), thread_name_prefix="s4d-model")
        if self.settings.moae_full_capacity:
            full_moae_capacity(self.model)
        self._mean = torch.tensor(MEAN).view(3, 1, 1, 1)
        self._std = torch.tensor(STD).view(3, 1, 1, 1)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, settings: ServingSettings | None = None,
                        info: dict | None = None, labels: Mapping | None = None, **kwargs) -> "Predictor":
        """Load an s4d-ops classifier checkpoint. `info` (tag, version, metrics, ...) is reported as model
        metadata; `labels` (from the model store) win over the checkpoint's own."""
        ckpt = read_checkpoint(path)
        if ckpt.get("kind") != "classifier":
            raise ValueError(f"{path}: a {ckpt.get('kind')} checkpoint, not a fine-tuned classifier")
        model = build_model(ckpt)
        meta = dict(ckpt.get("meta") or {})
        if labels:
            meta["labels"] = labels
        data = (meta.get("params") or {}).get("data") or {}
        kwargs.setdefault("face_size", int(data.get("face_size", 112)))
        kwargs.setdefault("frame_stride", int(data.get("frame_stride", 2)))
        names = label_names(meta, model.num_dynamic_classes, model.num_static_classes)
        return cls(model, names, settings, info=info, **kwargs)

    # ------------------------------------------------------------------------------------ tensors
    def _normalise(self, crops: np.ndarray) -> torch.Tensor:
        """(T, S, S, 3) uint8 aligned crops -> (3, T, img, img) float, exactly as the loaders do."""
        frames = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2)
        frames = spatial_crops(frames, self.img_size, 1)[0]
        return (frames.permute(1, 0, 2, 3).float() / 255 - self._mean) / self._std

    def _probabilities(self, x: torch.Tensor, chunk: int = 32) -> np.ndarray:
        """Softmax probabilities for a (B, 3, T, H, W) or (B, 3, H, W) batch."""
        out = []
        kind = "video" if x.ndim == 5 else "image"
        with self._lock:
            for start in range(0, len(x), chunk):
                part = x[start:start + chunk]
                mode = self.threads.choose(kind, len(part))
                began = time.perf_counter()
                if mode < 0:  # independent parts side by side, one thread each
                    torch.set_num_threads(1)
                    parts = torch.tensor_split(part, min(-mode, len(part)))
                    probs = torch.cat(list(self._pool.map(self._forward, parts)))
                else:
                    torch.set_num_threads(mode)
                    probs = self._forward(part)
                out.append(probs)
                self.threads.record(kind, len(part), mode, time.perf_counter() - began)
        return torch.cat(out).numpy()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities of one batch (the grad/autocast modes are per thread: set them here)."""
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(x.to(self.device, non_blocking=True))
        return logits.float().softmax(dim=-1).cpu()

    def _with_detector(self, fn, frames: int):
        """Run a detector call under the lock with the faster thread count (judged per detected frame)."""
        with self._lock:
            threads = self.threads.choose("faces", 1, splittable=False)
            torch.set_num_threads(threads)
            calls, began = getattr(self.detector, "calls", None), time.perf_counter()
            result = fn()
            done = (self.detector.calls - calls) if calls is not None else frames  # frames the detector saw
            self.threads.record("faces", 1, threads, (time.perf_counter() - began) / max(done, 1))
            return result

    def _detect(self, frames):
        return self._with_detector(lambda: self.detector.detect(frames), len(frames))

    def _track(self, frames):
        return self._with_detector(
            lambda: track_faces(frames, self.detector, detect_every=self.settings.detect_every), len(frames))

    def _answer(self, probs: np.ndarray, names: list[str]) -> dict:
        top = int(np.argmax(probs))
        return {"label": names[top], "top_probability": float(probs[top]),
                "uncertain": bool(probs[top] < self.settings.uncertain_threshold),
                "threshold": self.settings.uncertain_threshold,
                "probabilities": {n: round(float(p), 6) for n, p in zip(names, probs)}}

    def warm_up(self, rounds: int = 1) -> None:
        """Run the model and the detector once per thread option and common batch size, so kernels are
        initialised and the thread choice is measured before the first client arrives."""
        frame = np.zeros((240, 320, 3), np.uint8)
        for _ in range(rounds * len(self.threads.modes(8))):
            for n in (1, 8):
                self.classify_clips(np.zeros((n, self.num_frames, self.img_size, self.img_size, 3), np.uint8))
            self._detect([frame] * 4)

    def model_info(self) -> dict:
        return {**self.info, "labels": self.labels, "device": str(self.device),
                "dtype": "bfloat16" if self.bf16 else "float32",
                "input": {"img_size": self.img_size, "num_frames": self.num_frames,
                          "frame_stride": self.frame_stride, "face_size": self.face_size,
                          "clip_layout": "(B, T, H, W, 3) uint8 RGB aligned face crops, H = W = img_size"},
                "static_head": self.has_static,
                "moae_full_capacity": self.settings.moae_full_capacity,
                "threads": {"options": self.threads.modes(2), "ms_per_item": self.threads.summary()}}

    # ---------------------------------------------------------------------------------------- video
    def predict_video(self, path: str | os.PathLike, name: str = "upload") -> dict:
        t0 = time.perf_counter()
        video = decode_for_timeline(path, self.num_frames, self.frame_stride, self.settings, name)
        t1 = time.perf_counter()
        indices = sorted(video.frames)
        row = {index: n for n, index in enumerate(indices)}
        frames = [video.frames[i] for i in indices]
        track = self._track(frames)
        t2 = time.perf_counter()
        if track.num_present == 0:
            raise ServingError("no_face", f"{name}: no face found in the {track.detector_frames} frames checked "
                               f"over {video.duration:.1f} s", frames_checked=track.detector_frames)

        crops: dict[int, np.ndarray] = {}

        def crop(r: int) -> np.ndarray:
            if r not in crops:
                crops[r] = align_face(frames[r], track.landmarks[r], self.face_size, self.margin, box=track.boxes[r])
            return crops[r]

        clips, with_face = [], []
        for k, segment in enumerate(video.segments):
            rows = [row[int(i)] for i in segment.frames]
            present = [r for r in rows if track.present[r]]
            if not present:
                continue
            # A frame without the face borrows the nearest one that has it (preprocessing keeps only the
            # frames that hold the face, so a clip never shows an empty frame).
            chosen = [r if track.present[r] else min(present, key=lambda p: abs(p - r)) for r in rows]
            clips.append(self._normalise(np.stack([crop(r) for r in chosen])))
            with_face.append(k)
        probs = self._probabilities(torch.stack(clips))
        t3 = time.perf_counter()

        names = self.labels["dynamic"]
        timeline = []
        by_segment = dict(zip(with_face, probs))
        for k, segment in enumerate(video.segments):
            entry = {"t_start": round(segment.t_start, 3), "t_end": round(segment.t_end, 3),
                     "face": k in by_segment, "frames": [int(i) for i in segment.frames]}
            if k in by_segment:
                p = by_segment[k]
                entry.update(label=names[int(np.argmax(p))], top_probability=float(p.max()),
                             probabilities={n: round(float(v), 6) for n, v in zip(names, p)})
            else:
                entry.update(label=None, top_probability=None, probabilities=None)
            timeline.append(entry)
        rate = video.fps if video.fps > 0 else DEFAULT_FPS
        faces = []
        for n, index in enumerate(indices):
            box = _box(track.boxes[n], video.scale) if track.present[n] else None
            faces.append({"frame": index, "t": round(index / rate, 3), "box": box,
                          "score": round(float(track.scores[n]), 4) if track.present[n] else None,
                          "detected": bool(track.detected[n])})
        answer = self._answer(probs.mean(axis=0), names)
        return {"kind": "video", "head": "dynamic", **answer, "labels": names, "timeline": timeline,
                "faces": faces,
                "video": {"width": video.width, "height": video.height, "fps": round(video.fps, 3),
                          "frames": video.total_frames, "duration": round(video.duration, 3),
                          "segments": len(video.segments), "segments_with_face": len(with_face)},
                "model": self._model_ref(),
                "timing_ms": {"decode": round(1000 * (t1 - t0), 1), "faces": round(1000 * (t2 - t1), 1),
                              "model": round(1000 * (t3 - t2), 1), "total": round(1000 * (t3 - t0), 1)}}

    # ---------------------------------------------------------------------------------------- image
    def predict_image(self, path: str | os.PathLike, name: str = "upload") -> dict:
        t0 = time.perf_counter()
        if not self.has_static:
            raise ServingError("no_static_head", "this model is video-only (it has no static/image head); "
                               "send a video to /predict_video")
        path = os.fspath(path)
        size = os.path.getsize(path)
        if size == 0:
            raise ServingError("empty", f"{name}: the file is empty (0 bytes)")
        if size > self.settings.max_upload_bytes:
            raise ServingError("too_large", f"{name}: {size / 2**20:.1f} MiB is above the upload limit of "
                               f"{self.settings.max_upload_mb:g} MiB")
        try:
            image = read_image(path)
        except MediaError as e:
            if e.code == "not_media":
                raise ServingError("not_image", f"{name}: not a recognised image file (JPEG, PNG, BMP, WebP, "
                                   f"TIFF); videos go to /predict_video") from None
            raise ServingError.from_media(e, name) from None
        height, width = image.shape[:2]
        if min(height, width) < MIN_SIDE:
            raise ServingError("too_small", f"{name}: {width}x{height} pixels is too small to hold a face")
        scale = min(1.0, self.settings.max_side / max(height, width))
        work = _downscale(image, scale)
        dets = self._detect([work])[0]
        whole, box, score, found = False, None, None, len(dets)
        area = work.shape[0] * work.shape[1]
        if len(dets):
            sizes = (dets.boxes[:, 2] - dets.boxes[:, 0]) * (dets.boxes[:, 3] - dets.boxes[:, 1])
            j = int(np.argmax(sizes))
            box, score = dets.boxes[j], float(dets.scores[j])
            whole = bool(sizes[j] >= FACE_CROP_SHARE * area)
            face = work if whole else align_face(work, dets.landmarks[j], self.face_size, self.margin, box=box)
        else:  # a tight face crop has no margin around the face for the detector: pad and look again
            pad = max(work.shape[:2]) // 2
            padded = cv2.copyMakeBorder(work, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            dets = self._detect([padded])[0]
            if len(dets):
                b = dets.boxes[0] - pad
                inside = (np.clip(b[2], 0, work.shape[1]) - np.clip(b[0], 0, work.shape[1])) * \
                         (np.clip(b[3], 0, work.shape[0]) - np.clip(b[1], 0, work.shape[0]))
                if inside >= FACE_CROP_SHARE * area:
                    whole, box, score, face, found = True, b, float(dets.scores[0]), work, 1
            if not whole:
                raise ServingError("no_face", f"{name}: no face found in the {width}x{height} image")
        t1 = time.perf_counter()
        x = spatial_crops(torch.from_numpy(np.ascontiguousarray(face)).permute(2, 0, 1)[None], self.img_size, 1)[0]
        x = ((x.float() / 255 - self._mean[:, 0]) / self._std[:, 0])  # (1, 3, H, W)
        probs = self._probabilities(x)[0]
        t2 = time.perf_counter()
        names = self.labels["static"]
        return {"kind": "image", "head": "static", **self._answer(probs, names), "labels": names,
                "face": {"box": _box(box, scale), "score": round(score, 4),
                         "whole_image": whole, "faces_found": found},
                "image": {"width": width, "height": height},
                "model": self._model_ref(),
                "timing_ms": {"faces": round(1000 * (t1 - t0), 1), "model": round(1000 * (t2 - t1), 1),
                              "total": round(1000 * (t2 - t0), 1)}}

    # ---------------------------------------------------------------------------------------- clips
    def check_clips(self, clips: np.ndarray) -> None:
        """Raise ValueError unless `clips` is (B, T, H, W, 3) uint8 with the model's T and H = W = img_size."""
        want = (self.num_frames, self.img_size, self.img_size, 3)
        if not isinstance(clips, np.ndarray) or clips.ndim != 5 or tuple(clips.shape[1:]) != want:
            shape = tuple(getattr(clips, "shape", ()))
            raise ValueError(f"clips must have shape (B, {', '.join(map(str, want))}) (B clips of "
                             f"{self.num_frames} RGB {self.img_size}x{self.img_size} aligned face crops), "
                             f"got {shape}")
        if clips.shape[0] < 1:
            raise ValueError("clips holds no clip (B = 0)")

    def classify_clips(self, clips: np.ndarray) -> np.ndarray:
        """(B, T, H, W, 3) uint8 aligned face crops -> (B, K) DFER probabilities (float32)."""
        self.check_clips(clips)
        x = torch.from_numpy(np.ascontiguousarray(clips)).permute(0, 4, 1, 2, 3).float()  # (B, 3, T, H, W)
        x = (x / 255 - self._mean) / self._std
        return self._probabilities(x).astype(np.float32)

    def _model_ref(self) -> dict:
        return {k: self.info[k] for k in ("tag", "name", "version") if k in self.info}
