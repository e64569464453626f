"""Helpers for the serving tests and benchmark (not part of the bento): a tiny model in an isolated
BentoML store, a real `bentoml serve` subprocess (started, awaited, stopped by process group), and synthetic media.

Nothing here is used by the service itself; benchmarks import it as `tests.serving_helpers`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from s4d.io import free_port

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT.parent / "shared" / "media"
NO_TELEMETRY = {"BENTOML_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
LABELS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def bentoml_cli() -> list[str]:
    """The bentoml command of this interpreter's environment."""
    exe = Path(sys.executable).with_name("bentoml")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "bentoml"]


def env_for(home: str | os.PathLike, **extra: str) -> dict[str, str]:
    """The environment of a subprocess using the BentoML store at `home`."""
    env = {**os.environ, **NO_TELEMETRY, "BENTOML_HOME": str(home)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ------------------------------------------------------------------------------------------------ model
def make_checkpoint(path: str | os.PathLike, profile=None, labels: list[str] | None = None, seed: int = 0,
                    static: bool = True, **config) -> Path:
    """A fine-tuned-format checkpoint of an untrained S4D classifier (the `tiny` profile unless told)."""
    import torch

    from s4d.config import tiny_profile
    from s4d.models.checkpoint import save_checkpoint
    from s4d.models.classifier import S4DClassifier

    labels = labels or LABELS
    cfg = dataclasses.replace(profile or tiny_profile(), **config)
    torch.manual_seed(seed)
    model = S4DClassifier(cfg, len(labels), len(labels) if static else 0)
    meta = {"labels": {"dynamic": labels, "static": labels if static else []},
            "val": {"dynamic": {"uar": 0.5, "war": 0.55}}, "epoch": 3, "select_metric": "uar",
            "params": {"profile": "tiny", "data": {"frame_stride": 2, "face_size": 112}}}
    save_checkpoint(path, model, meta=meta)
    return Path(path)


def store_model(checkpoint: str | os.PathLike, home: str | os.PathLike, name: str = "s4d-champion",
                metadata: dict | None = None) -> str:
    """s4d.registry.save_to_store in a subprocess whose BentoML home is `home` (a process reads its
    BentoML home once, so the caller's own store is never touched). Returns the tag."""
    code = ("import json, sys; from s4d.registry import save_to_store; "
            "print(save_to_store(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))")
    out = subprocess.run([sys.executable, "-c", code, str(checkpoint), name, json.dumps(metadata or {})],
                         cwd=ROOT, env=env_for(home), capture_output=True, text=True, timeout=300)
    if out.returncode:
        raise RuntimeError(f"save_to_store failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


# ----------------------------------------------------------------------------------------------- server
class ServiceProcess:
    """`bentoml serve TARGET` in its own process group on a free port; `with` starts it (waiting for
    /readyz) and stops it (SIGTERM to the group, SIGKILL after a grace period)."""

    def __init__(self, target: str, home: str | os.PathLike, log: str | os.PathLike, env: dict | None = None,
                 port: int | None = None, cwd: str | os.PathLike = ROOT, ready_timeout: float = 90.0):
        self.target, self.home, self.log_path = target, home, Path(log)
        self.env = env_for(home, **(env or {}))
        self.port = port or free_port()
        self.cwd, self.ready_timeout = cwd, ready_timeout
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServiceProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([*bentoml_cli(), "serve", self.target, "--host", "127.0.0.1",
                                      "--port", str(self.port)], cwd=self.cwd, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        import requests

        deadline = time.time() + self.ready_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"bentoml serve not ready after {self.ready_timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        self._log.close()

    def __enter__(self) -> "ServiceProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------ media
def encode_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 25.0, codec: str = "libx264",
                 faststart: bool = False) -> Path:
    """Write RGB frames (T, H, W, 3) with PyAV; the container follows the file name (mp4, mkv, webm, avi,
    mov). Fast encoder settings: this is for tests."""
    from fractions import Fraction

    import av

    path = Path(path)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.options = {"libx264": {"preset": "ultrafast"},
                          "libvpx": {"deadline": "realtime", "cpu-used": "8"}}.get(codec, {})
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def synthetic_face_frames(seconds: float = 2.0, fps: float = 25.0, size: int = 320, seed: int = 0) -> np.ndarray:
    """A video of the project's rendered synthetic faces (the face detector finds them): consecutive
    rendered clips, upscaled to `size` px."""
    import cv2

    from s4d.config import SyntheticConfig
    from s4d.data.synthetic.sample import render_clip

    cfg = SyntheticConfig(seed=seed, frame_size=160)
    need, out, index = int(round(seconds * fps)), [], 0
    while len(out) < need:
        clip, _ = render_clip(cfg, index)
        out += [cv2.resize(f, (size, size), interpolation=cv2.INTER_LINEAR) for f in clip]
        index += 1
    return np.stack(out[:need])


def synthetic_face_image(size: int = 256, seed: int = 0, tries: int = 12) -> np.ndarray:
    """One rendered synthetic face (RGB) in which the MTCNN detector finds a face: the middle frame of the
    first rendered clip that passes (some renders hold an occluder or a strong head turn)."""
    import cv2

    from s4d.data.faces import FaceDetector
    from s4d.config import SyntheticConfig
    from s4d.data.synthetic.sample import render_clip

    cfg = SyntheticConfig(seed=seed, frame_size=160)
    detector, first = FaceDetector("mtcnn"), None
    for index in range(tries):
        clip, _ = render_clip(cfg, index)
        image = cv2.resize(clip[len(clip) // 2], (size, size), interpolation=cv2.INTER_LINEAR)
        first = image if first is None else first
        if len(detector.detect([image])[0]):
            return image
    return first


def plain_frames(seconds: float, fps: float = 10.0, size=(96, 64)) -> np.ndarray:
    """Faceless frames: a dot moving over a grey background."""
    count = int(round(seconds * fps))
    frames = np.full((count, size[1], size[0], 3), 90, np.uint8)
    for t in range(count):
        x = int(8 + (size[0] - 16) * t / max(count - 1, 1))
        frames[t, size[1] // 2 - 4:size[1] // 2 + 4, x - 4:x + 4] = (200, 40, 40)
    return frames


def write_mp4v(path: str | os.PathLike, frames: np.ndarray, fps: float = 10.0) -> Path:
    """A quick MPEG-4 part 2 file through OpenCV (no PyAV needed)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames.shape[2], frames.shape[1]))
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    return Path(path)


def unsupported_codec_avi(path: str | os.PathLike) -> Path:
    """An AVI whose video stream names a codec no decoder knows (the MJPG FourCC patched to QQQQ)."""
    import cv2

    tmp = Path(path).with_suffix(".mjpg.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for t in range(10):
        writer.write(np.full((48, 64, 3), 20 * t, np.uint8))
    writer.release()
    Path(path).write_bytes(tmp.read_bytes().replace(b"MJPG", b"QQQQ"))
    tmp.unlink()
    return Path(path)
