"""Face detection, tracking through a clip, and eye-level alignment.

- `FaceDetector.detect(frames)`: boxes + 5 landmarks + scores per frame (MTCNN batched, or YuNet).
- `track_faces(frames, detector, detect_every=k)`: the detector runs on every k-th frame only; the
  largest/most stable face is kept; boxes are interpolated between detections. Where the face appears,
  vanishes or jumps between two sampled frames, every frame of that gap is detected, so presence is
  never interpolated across a change.
- `crop_track(frames, track)`: the aligned crops of the frames that hold the face.
- `align_face(frame, landmarks, box=...)`: rotate so the eyes are level, scale to the face, crop, resize.

Landmark order (both backends, image coordinates): eye on the image left, eye on the image right,
nose, mouth corner on the image left, mouth corner on the image right.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

BACKENDS = ("mtcnn", "yunet")


@dataclass
class Detections:
    """The faces found in one frame, highest score first."""
    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2 in frame pixels
    landmarks: np.ndarray  # (N, 5, 2) float32
    scores: np.ndarray  # (N,) float32 in [0, 1]

    def __len__(self) -> int:
        return len(self.scores)


class FaceDetector:
    """MTCNN (facenet-pytorch, the S4D paper's detector) or YuNet (yuface, faster, CPU only).

    Frames are RGB uint8. Frames whose long side exceeds `max_side` are downscaled for detection
    (detection cost grows with pixels; faces in DFER clips are large) and the results scaled back.
    `min_face_size` is in pixels of that detector input. `pyramid_factor` (MTCNN only) is the ratio
    between the image scales searched: 0.709 (MTCNN's own) looks at more scales, a smaller one at fewer.
    Weights ship inside both wheels.
    """

    def __init__(self, backend: str = "mtcnn", device: str = "cpu", min_face_size: int = 40,
                 min_score: float | None = None, max_side: int = 640, batch_size: int = 16,
                 pyramid_factor: float = 0.709):
        if backend not in BACKENDS:
            raise ValueError(f"unknown face detector backend {backend!r}; expected one of {BACKENDS}")
        self.backend = backend
        self.min_score = min_score if min_score is not None else {"mtcnn": 0.9, "yunet": 0.6}[backend]
        self.min_face_size = min_face_size
        self.max_side = max_side
        self.batch_size = batch_size
        if backend == "mtcnn":
            from facenet_pytorch import MTCNN

            self._mtcnn = MTCNN(keep_all=True, min_face_size=min_face_size, factor=pyramid_factor, device=device)
        else:
            import yuface  # noqa: F401  (fail here, not on the first frame)

    def detect(self, frames: Sequence[np.ndarray] | np.ndarray) -> list[Detections]:
        """Faces in each frame. `frames` is a sequence of (H, W, 3) RGB arrays or one (T, H, W, 3) array;
        a single (H, W, 3) frame is taken as a batch of one."""
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            frames = frames[None]
        results: list[Detections] = []
        for start in range(0, len(frames), self.batch_size):
            batch = frames[start:start + self.batch_size]
            if len({f.shape for f in batch}) == 1:
                results += self._detect_batch(batch)
            else:  # MTCNN batches need one size; mixed sizes go one by one
                for frame in batch:
                    results += self._detect_batch([frame])
        return results

    def _detect_batch(self, frames) -> list[Detections]:
        height, width = frames[0].shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        if min(height, width) * scale < self.min_face_size:  # no face fits (and MTCNN would crash)
            nothing = (np.zeros((0, 4)), np.zeros((0, 5, 2)), np.zeros(0))
            return [Detections(*(a.astype(np.float32) for a in nothing)) for _ in frames]
        if scale < 1.0:
            size = (round(width * scale), round(height * scale))
            frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
        raw = self._run_mtcnn(frames) if self.backend == "mtcnn" else [self._run_yunet(f) for f in frames]
        out = []
        for boxes, landmarks, scores in raw:
            keep = scores >= self.min_score
            order = np.argsort(-scores[keep])
            out.append(Detections((boxes[keep][order] / scale).astype(np.float32),
                                  (landmarks[keep][order] / scale).astype(np.float32),
                                  scores[keep][order].astype(np.float32)))
        return out

    def _run_mtcnn(self, frames):
        boxes, scores, points = self._mtcnn.detect(np.stack(frames), landmarks=True)
        for b, s, p in zip(boxes, scores, points):
            if b is None:  # facenet-pytorch gives None for a frame without faces
                yield np.zeros((0, 4)), np.zeros((0, 5, 2)), np.zeros(0)
            else:
                yield np.asarray(b, np.float64), np.asarray(p, np.float64), np.asarray(s, np.float64)

    def _run_yunet(self, frame):
        import yuface

        rows = yuface.c_detect(np.ascontiguousarray(frame[:, :, ::-1])).astype(np.float64)  # wants BGR
        rows = rows[np.minimum(rows[:, 3], rows[:, 4]) >= self.min_face_size]
        # columns: score in percent, x, y, w, h, then 5 landmark (x, y) pairs
        boxes = np.concatenate([rows[:, 1:3], rows[:, 1:3] + rows[:, 3:5]], axis=1)
        return boxes, rows[:, 5:15].reshape(-1, 5, 2), rows[:, 0] / 100.0


# --------------------------------------------------------------------------------------------- tracking
@dataclass
class FaceTrack:
    """One face followed through a clip. Rows of frames without the face are NaN."""
    boxes: np.ndarray  # (T, 4) float32
    landmarks: np.ndarray  # (T, 5, 2) float32
    scores: np.ndarray  # (T,) detector score; interpolated frames get the lower of their two neighbours
    present: np.ndarray  # (T,) bool
    detected: np.ndarray  # (T,) bool: the detector ran on this frame

    @property
    def num_present(self) -> int:
        return int(self.present.sum())

    @property
    def detector_frames(self) -> int:
        return int(self.detected.sum())


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def track_faces(frames: Sequence[np.ndarray] | np.ndarray, detector: FaceDetector, detect_every: int = 5,
                min_iou: float = 0.3, positions: Sequence[float] | None = None) -> FaceTrack:
    """Follow the main face of a clip while running the detector on about 1 frame in `detect_every`.

    1. Detect on frames 0, k, 2k, ... and the last frame.
    2. Link detections of consecutive sampled frames into tracks by box overlap (IoU >= min_iou with
       the track's latest box). The main face is the track with the largest sum of sqrt(box area) *
       score: big and long-lived beats a one-frame false alarm (e.g. a hand) or a small background face.
       Tracks that never coexist with it, have a similar size and 2+ detections are the same face
       coming back elsewhere (after a cut) and join it.
    3. Where the face appears, vanishes or jumps (a cut) between two sampled frames, detect every frame
       in between, so presence there comes from a detection on that very frame.
    4. Between two detected frames that both hold the face, interpolate box and landmarks linearly in
       `positions` (each frame's index or time in the video; default 0, 1, 2, ...): frames sampled
       unevenly, such as the clips of a timeline, are placed where they are in time.
    """
    if detect_every < 1:
        raise ValueError(f"detect_every must be >= 1, got {detect_every}")
    count = len(frames)
    track = FaceTrack(np.full((count, 4), np.nan, np.float32), np.full((count, 5, 2), np.nan, np.float32),
                      np.zeros(count, np.float32), np.zeros(count, bool), np.zeros(count, bool))
    if count == 0:
        return track
    where = np.arange(count, dtype=np.float64) if positions is None else np.asarray(positions, np.float64)
    if where.shape != (count,) or (count > 1 and not (np.diff(where) > 0).all()):
        raise ValueError(f"positions must be {count} increasing numbers, one per frame")
    sampled = sorted(set(range(0, count, detect_every)) | {count - 1})
    found = dict(zip(sampled, detector.detect([frames[i] for i in sampled])))

    def keep(i: int, dets: Detections, j: int) -> None:
        track.boxes[i], track.landmarks[i], track.scores[i] = dets.boxes[j], dets.landmarks[j], dets.scores[j]
        track.present[i] = True

    track.detected[sampled] = True
    for i, j in _main_face(sampled, found, min_iou).items():
        keep(i, found[i], j)

    # Step 3: gaps where the face appears, vanishes or jumps are detected frame by frame.
    def changes(a: int, b: int) -> bool:
        if track.present[a] and track.present[b]:
            return box_iou(track.boxes[a], track.boxes[b]) < min_iou
        return bool(track.present[a] or track.present[b])

    gaps = [(a, b) for a, b in zip(sampled, sampled[1:]) if b - a > 1 and changes(a, b)]
    refine = [i for a, b in gaps for i in range(a + 1, b)]
    refined = dict(zip(refine, detector.detect([frames[i] for i in refine]))) if refine else {}
    for a, b in gaps:
        references = [track.boxes[e] for e in (a, b) if track.present[e]]
        for i in range(a + 1, b):
            track.detected[i] = True
            j = _best_match(refined[i], references, min_iou)
            if j is not None:
                keep(i, refined[i], j)

    # Step 4: interpolate between consecutive detected frames that both hold the face.
    known = np.flatnonzero(track.detected)
    for a, b in zip(known, known[1:]):
        if b - a > 1 and track.present[a] and track.present[b]:
            t = ((where[a + 1:b] - where[a]) / (where[b] - where[a])).astype(np.float32)
            track.boxes[a + 1:b] = track.boxes[a] + t[:, None] * (track.boxes[b] - track.boxes[a])
            track.landmarks[a + 1:b] = (track.landmarks[a]
                                        + t[:, None, None] * (track.landmarks[b] - track.landmarks[a]))
            track.scores[a + 1:b] = min(track.scores[a], track.scores[b])
            track.present[a + 1:b] = True
    return track


def _best_match(dets: Detections, references: list[np.ndarray], min_iou: float) -> int | None:
    """The detection that overlaps a reference box most, if it overlaps enough."""
    if len(dets) == 0:
        return None
    overlaps = np.array([[box_iou(box, ref) for ref in references] for box in dets.boxes]).max(axis=1)
    return int(np.argmax(overlaps)) if overlaps.max() >= min_iou else None


def _main_face(sampled: list[int], found: dict[int, Detections], min_iou: float) -> dict[int, int]:
    """Sampled frame -> index of the main face among its detections (see track_faces, step 2)."""
    tracks: list[dict] = []  # {"last": latest box, "hits": {frame: detection index}, "sizes": [...], "weight"}
    for i in sampled:
        dets, free = found[i], list(tracks)
        for j in range(len(dets)):  # highest score first
            overlaps = [box_iou(t["last"], dets.boxes[j]) for t in free]
            if overlaps and max(overlaps) >= min_iou:
                t = free.pop(int(np.argmax(overlaps)))
            else:
                t = {"hits": {}, "sizes": [], "weight": 0.0}
                tracks.append(t)
            x1, y1, x2, y2 = dets.boxes[j]
            size = float(np.sqrt(max(x2 - x1, 0) * max(y2 - y1, 0)))
            t["last"], t["hits"][i] = dets.boxes[j], j
            t["sizes"].append(size)
            t["weight"] += size * float(dets.scores[j])
    if not tracks:
        return {}
    tracks.sort(key=lambda t: -t["weight"])
    main, size = [tracks[0]], np.median(tracks[0]["sizes"])
    for t in tracks[1:]:
        first, last = min(t["hits"]), max(t["hits"])
        apart = all(last < min(m["hits"]) or first > max(m["hits"]) for m in main)
        if apart and len(t["hits"]) >= 2 and 0.5 <= np.median(t["sizes"]) / size <= 2.0:
            main.append(t)
    return {i: j for t in main for i, j in t["hits"].items()}


# -------------------------------------------------------------------------------------------- alignment
def alignment_matrix(landmarks: np.ndarray, out_size: int = 224, margin: float = 0.2,
                     box: np.ndarray | None = None) -> np.ndarray:
    """The 2x3 affine map from frame pixels to the aligned crop.

    Rotation: about the face centre so the two eyes (landmarks 0 and 1) are level.
    Scale: the crop side is the face size times (1 + margin); the face size is max(box w, h) when a box
    is given (robust to head yaw), else estimated from eye distance and eye-to-mouth distance.
    Centre: the box centre, else the middle of eyes and mouth.
    """
    points = np.asarray(landmarks, np.float64).reshape(5, 2)
    eye_a, eye_b = points[0], points[1]
    eyes, mouth = (eye_a + eye_b) / 2, (points[3] + points[4]) / 2
    angle = np.degrees(np.arctan2(eye_b[1] - eye_a[1], eye_b[0] - eye_a[0]))
    if box is not None:
        x1, y1, x2, y2 = np.asarray(box, np.float64)
        center, face_size = ((x1 + x2) / 2, (y1 + y2) / 2), max(x2 - x1, y2 - y1)
    else:  # ratios of MTCNN boxes to landmark distances on frontal and 45-degree faces
        center = tuple((eyes + mouth) / 2)
        face_size = max(2.2 * np.linalg.norm(eye_b - eye_a), 2.5 * np.linalg.norm(mouth - eyes))
    side = max(face_size * (1.0 + margin), 1.0)
    matrix = cv2.getRotationMatrix2D(center, angle, out_size / side)
    matrix[:, 2] += (out_size / 2 - center[0], out_size / 2 - center[1])
    return matrix


def align_face(frame: np.ndarray, landmarks: np.ndarray, out_size: int = 224, margin: float = 0.2,
               box: np.ndarray | None = None) -> np.ndarray:
    """An (out_size, out_size, 3) crop of `frame` with the eyes level; outside the frame is black."""
    matrix = alignment_matrix(landmarks, out_size, margin, box)
    shrink = int(1.0 / np.hypot(*matrix[0, :2]))  # > 1 when the face is much larger than the crop
    if shrink < 2:
        return cv2.warpAffine(frame, matrix, (out_size, out_size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT)
    # A bilinear warp would alias at a strong downscale: warp larger, then area-average down.
    shrink = min(shrink, 4)
    big_matrix = matrix * shrink
    big_matrix[:, 2] += (shrink - 1) / 2  # crop pixel j is the mean of big pixels shrink*j .. shrink*j+shrink-1
    big = cv2.warpAffine(frame, big_matrix, (out_size * shrink,) * 2, flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT)
    return cv2.resize(big, (out_size, out_size), interpolation=cv2.INTER_AREA)


def crop_track(frames: Sequence[np.ndarray] | np.ndarray, track: FaceTrack, out_size: int = 224,
               margin: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Aligned crops of the frames that hold the tracked face: ((P, out_size, out_size, 3), frame indices)."""
    indices = np.flatnonzero(track.present)
    crops = np.zeros((len(indices), out_size, out_size, 3), np.uint8)
    for n, i in enumerate(indices):
        crops[n] = align_face(frames[i], track.landmarks[i], out_size, margin, box=track.boxes[i])
    return crops, indices
