"""Serving limits and knobs, read once from environment variables (`ServingSettings.from_env`)."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping


# -------------------------------------------------------------------------------------------- settings
def _env(name: str, default: Any, help: str) -> Any:
    return field(default=default, metadata={"env": name, "help": help})


@dataclass(frozen=True)
class ServingSettings:
    """Serving limits and knobs. Each field is read from its environment variable (defaults below)."""

    max_upload_mb: float = _env("S4D_MAX_UPLOAD_MB", 50.0, "largest accepted upload (MiB); larger -> 413 too_large")
    max_json_mb: float = _env("S4D_MAX_JSON_MB", 32.0, "largest accepted JSON body (MiB), counted while it "
                              "arrives; larger -> 413 too_large")
    max_clips: int = _env("S4D_MAX_CLIPS", 32, "most clips in one request to /classify_clips; more -> 413 "
                          "too_many_clips")
    max_pixels: int = _env("S4D_MAX_PIXELS", 4096 * 4096, "largest image or video frame (pixels), read from the "
                           "header before decoding; larger -> 413 too_large")
    max_pending: int = _env("S4D_MAX_PENDING", 64, "requests being handled or waiting at once; more -> 503 "
                            "overloaded with Retry-After")
    max_seconds: float = _env("S4D_MAX_SECONDS", 60.0, "longest accepted video (s); longer -> 422 too_long")
    uncertain_threshold: float = _env("S4D_UNCERTAIN_THRESHOLD", 0.5,
                                      "answers whose top probability is below this are flagged uncertain")
    segment_seconds: float = _env("S4D_SEGMENT_SECONDS", 1.0, "timeline resolution: one clip per segment (s)")
    max_segments: int = _env("S4D_MAX_SEGMENTS", 30, "most timeline segments per video (longer videos get "
                                                   "longer segments)")
    detect_every: int = _env("S4D_DETECT_EVERY", 8, "run the face detector on every k-th sampled frame, "
                             "interpolate in between; where the face appears, "
                             "vanishes or jumps, every frame between is detected")
    detector: str = _env("S4D_FACE_DETECTOR", "mtcnn", "face detector backend: mtcnn | yunet")
    detect_side: int = _env("S4D_DETECT_SIDE", 320, "video frames are downscaled to this long side (px) for "
                            "face detection (faces smaller than 24 px there are not looked for); images use 640")
    max_side: int = _env("S4D_MAX_SIDE", 960, "decoded frames are downscaled to this long side (px)")
    device: str = _env("S4D_DEVICE", "auto", "auto (cuda if available) | cpu | cuda")
    bf16: str = _env("S4D_BF16", "auto", "auto (CUDA with bf16, or a CPU measured faster in bf16) | on | off")
    torch_threads: int = _env("S4D_TORCH_THREADS", 0, "CPU threads per model/detector call; 0 = measure 1 vs all "
                                                     "cores per batch size and keep the faster (shared CPUs)")
    moae_full_capacity: bool = _env("S4D_MOAE_FULL_CAPACITY", True, "MoAE experts take every token routed to "
                                    "them (no capacity drop): a clip's answer never depends on the clips "
                                    "batched with it")
    batch_max_size: int = _env("S4D_BATCH_MAX_SIZE", 32, "adaptive batching: most clips per model call "
                                 "(1 = no adaptive batching)")
    batch_max_latency_ms: int = _env("S4D_BATCH_MAX_LATENCY_MS", 30000,
                                     "adaptive batching: a queued clip older than this is refused (503)")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_json_bytes(self) -> int:
        return int(self.max_json_mb * 1024 * 1024)

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
        need(self.max_json_mb > 0, "max_json_mb", "must be > 0")
        need(self.max_clips >= 1, "max_clips", "must be >= 1")
        need(self.max_pixels >= 64 * 64, "max_pixels", "must be >= 4096")
        need(self.max_pending >= 1, "max_pending", "must be >= 1")
        need(self.max_seconds > 0, "max_seconds", "must be > 0")
        need(0.0 <= self.uncertain_threshold <= 1.0, "uncertain_threshold", "must be in [0, 1]")
        need(self.segment_seconds > 0, "segment_seconds", "must be > 0")
        need(self.max_segments >= 1, "max_segments", "must be >= 1")
        need(self.detect_every >= 1, "detect_every", "must be >= 1")
        need(self.detector in ("mtcnn", "yunet"), "detector", "must be mtcnn or yunet")
        need(self.detect_side >= 96, "detect_side", "must be >= 96")
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
