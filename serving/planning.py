"""Segment planning: where the timeline's clips sit in a video of `total` frames."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from s4d.data.loaders import clip_indices


@dataclass
class Segment:
    t_start: float
    t_end: float
    frames: np.ndarray  # frame indices of its clip (num_frames of them)


def plan_segments(total: int, fps: float, num_frames: int, stride: int, segment_seconds: float,
                  max_segments: int, times: np.ndarray | None = None) -> list[Segment]:
    """Cut `total` frames into about duration / segment_seconds segments (1 .. max_segments) and place
    one clip of `num_frames` frames `stride` apart in the middle of each. Clips longer than the video
    repeat its last frame, as the training loader does. `times` (seconds of each frame) gives the
    segment bounds where frames are not evenly spaced; else frame / fps."""
    if total < 1:
        return []
    fps = fps if fps > 0 else 25.0
    duration = total / fps if times is None else float(times[-1]) + 1.0 / fps
    count = int(np.clip(round(duration / segment_seconds), 1, max_segments))
    span = (num_frames - 1) * stride + 1
    bounds = np.linspace(0, total, count + 1)

    def when(position: float) -> float:
        if times is None:
            return float(position / fps)
        return float(np.interp(position, np.arange(total + 1), np.append(times, duration)))

    segments = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        start = int(round((a + b) / 2 - span / 2))
        start = max(0, min(start, total - span))
        segments.append(Segment(when(a), when(b), clip_indices(total, num_frames, stride, start)))
    return segments
