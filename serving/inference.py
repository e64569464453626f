"""The Predictor: video / image / clip arrays -> emotion predictions, free of any web framework.

Video: `serving.inputs.decode_for_timeline` decodes only the frames of the timeline's clips (one clip of
`num_frames` frames `frame_stride` apart in the middle of each segment of about `segment_seconds`; the
stride and face crop size the model was trained with, read from the checkpoint). The main face is
tracked over those frames with the detector, tracking and eye-level alignment of preprocessing
(`s4d.data.faces`), the aligned crops get the data loaders' resize + normalisation, and the DFER head
scores every segment. The video answer is the mean of the segment probabilities (as multi-view
evaluation averages its views).

Image: the SFER head on the largest face, aligned; a picture that already is a face crop (the face fills
most of it, or a detector only finds the face once the picture is padded) is used whole.

Every bad input ends as a `ServingError` (serving.inputs) with a machine-readable `code` and status.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

import cv2
import numpy as np
import torch

from s4d.data.faces import FaceDetector, align_face, track_faces
from s4d.data.loaders import normalise, spatial_crops
from s4d.models.checkpoint import build_model, read_checkpoint, trained_data
from s4d.precision import configure as configure_attention
from s4d.precision import use_bf16 as measured_bf16
from s4d.registry import label_names
from serving.inputs import ServingError, decode_for_timeline, read_upload_image
from serving.settings import ServingSettings

logger = logging.getLogger("s4d.serving")

FACE_CROP_SHARE = 0.4  # a face box covering this share of the picture: the picture is a face crop
VIDEO_PYRAMID_FACTOR = 0.6  # scale step of the video face detector's image pyramid (MTCNN's own: 0.709)


# --------------------------------------------------------------------------------------------- predictor
def _box(box: np.ndarray, scale: float, width: int, height: int) -> list[float]:
    """A box in the decoded frame -> [x1, y1, x2, y2] in original pixels, clipped to the picture (a face
    at the border is detected with a box reaching past it), 0.1 px precision."""
    x1, y1, x2, y2 = (float(v) / scale for v in box)
    return [round(min(max(v, 0.0), limit), 1) for v, limit in ((x1, width), (y1, height), (x2, width), (y2, height))]


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
    return measured_bf16("auto", device)  # CUDA with bf16, or a CPU measured faster in bf16 (cached per machine)


def video_detector(settings: ServingSettings, device: str = "cpu") -> FaceDetector:
    """The face detector of the video path. Frames are seen at a reduced size (measured 2.2x faster at
    320 than at 640 px on 2 cores; DFER faces are large) over fewer scales (pyramid factor 0.6: 35% less
    detector CPU than MTCNN's 0.709; the answers against a dense reference are in serving/README.md)."""
    return FaceDetector(settings.detector, device=device, max_side=settings.detect_side, min_face_size=24,
                        pyramid_factor=VIDEO_PYRAMID_FACTOR)


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
        configure_attention(self.model, model.cfg, self.bf16, train=False, device=self.device)  # measured kernel
        self.labels = labels
        self.face_size, self.margin, self.frame_stride = face_size, margin, frame_stride
        self.img_size, self.num_frames = model.cfg.img_size, model.cfg.num_frames
        self.has_static = getattr(model, "head_static", None) is not None
        self.info = dict(info or {})
        # Images keep 640 px and every scale: a group photo's small faces must be found.
        self.detector = detector or video_detector(self.settings, str(self.device))
        self.image_detector = detector or FaceDetector(self.settings.detector, device=str(self.device))
        self._lock = threading.Lock()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        fixed = self.settings.torch_threads or (torch.get_num_threads() if self.device.type == "cuda" else 0)
        self.threads = ThreadTuner(cores, fixed)
        self._pool = ThreadPoolExecutor(max(1, cores), thread_name_prefix="s4d-model")
        if self.settings.moae_full_capacity:
            full_moae_capacity(self.model)

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
        data = trained_data(ckpt)
        kwargs.setdefault("face_size", int(data.get("face_size", 112)))
        kwargs.setdefault("frame_stride", int(data.get("frame_stride", 2)))
        names = label_names(meta, model.num_dynamic_classes, model.num_static_classes)
        return cls(model, names, settings, info=info, **kwargs)

    # ------------------------------------------------------------------------------------ tensors
    def _normalise(self, crops: np.ndarray) -> torch.Tensor:
        """(T, S, S, 3) uint8 aligned crops -> (3, T, img, img) float, exactly as the loaders do."""
        frames = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2)
        return normalise(spatial_crops(frames, self.img_size, 1)[0])

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
        return self._with_detector(lambda: self.image_detector.detect(frames), len(frames))

    def _track(self, frames, positions=None):
        return self._with_detector(lambda: track_faces(frames, self.detector, detect_every=self.settings.detect_every,
                                                       positions=positions), len(frames))

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
            self._with_detector(lambda: self.detector.detect([frame] * 4), 4)

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
        track = self._track(frames, positions=indices)  # boxes are interpolated in time, not in list order
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
        times = video.times
        faces = []
        for n, index in enumerate(indices):
            box = _box(track.boxes[n], video.scale, video.width, video.height) if track.present[n] else None
            faces.append({"frame": index, "t": round(float(times[index]), 3), "box": box,
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
        work, width, height, scale = read_upload_image(path, self.settings, name)
        dets = self._detect([work])[0]
        whole, box, score, found = False, None, None, len(dets)
        others = [_box(b, scale, width, height) for b in dets.boxes]  # every face found, for the demo page
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
                    others = [_box(b, scale, width, height)]
            if not whole:
                raise ServingError("no_face", f"{name}: no face found in the {width}x{height} image")
        t1 = time.perf_counter()
        x = self._normalise(face[None])[:, 0][None]  # (1, 3, H, W): a one-frame clip's frame
        probs = self._probabilities(x)[0]
        t2 = time.perf_counter()
        names = self.labels["static"]
        return {"kind": "image", "head": "static", **self._answer(probs, names), "labels": names,
                "face": {"box": _box(box, scale, width, height), "score": round(score, 4), "boxes": others,
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
        x = normalise(torch.from_numpy(np.ascontiguousarray(clips)).permute(0, 1, 4, 2, 3))  # (B, 3, T, H, W)
        return self._probabilities(x).astype(np.float32)

    def _model_ref(self) -> dict:
        return {k: self.info[k] for k in ("tag", "name", "version") if k in self.info}
