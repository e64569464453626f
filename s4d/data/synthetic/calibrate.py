"""Calibration of the synthetic videos: learnable, not saturated, and time matters.

    python -m s4d.data.synthetic.calibrate [--video-identities 200] [--clips-per-identity 6] [--workers 2]

Renders every clip of a config in memory (the same bytes generate() writes), then fits two quick baselines
on identical features, HOG of a grey centre crop (64 px, 8-px cells, 9 orientations):
  single-frame: one ridge classifier over individual frames; a clip's score is the mean over its frames.
  temporal:     one ridge classifier over one vector per clip: mean appearance, the change from the first
                frame to the most-changed frame (removes the identity), and upper/lower-face motion statistics.
Both are closed-form ridge fits (+ horizontal flips), regularisation picked on the val split, refit on
train+val, scored on test; deterministic and a few seconds after rendering. A linear classifier on the true
AU values (no pixels) gives the same comparison without perception. Chance is 1/7.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from s4d.config import SyntheticConfig
from s4d.data.synthetic.face import EMOTIONS, UPPER_FACE
from s4d.data.synthetic.generate import _worker_state, map_samples
from s4d.data.synthetic.plan import video_plan
from s4d.data.synthetic.sample import clip_scene, render_clip

CROP = 0.8  # central share of the frame kept (the face)
SIDE = 64  # crop resized to this, pixels
CELL = 8  # HOG cell, pixels
BINS = 9  # HOG orientations
LAMBDAS = (0.3, 1.0, 3.0, 10.0, 30.0)


def hog(grey: np.ndarray) -> np.ndarray:
    """[T, H, W] uint8 -> [T, BINS * (H/CELL) * (W/CELL)] float32 cell histograms of gradient orientation."""
    g = grey.astype(np.float32) / 255
    gx, gy = np.zeros_like(g), np.zeros_like(g)
    gx[:, :, 1:-1] = g[:, :, 2:] - g[:, :, :-2]
    gy[:, 1:-1, :] = g[:, 2:, :] - g[:, :-2, :]
    magnitude = np.sqrt(gx ** 2 + gy ** 2 + 1e-6)
    orientation = np.remainder(np.arctan2(gy, gx), np.pi)  # unsigned: light/dark flips do not matter
    bins = np.minimum((orientation / np.pi * BINS).astype(np.int64), BINS - 1)
    votes = np.zeros((len(g), BINS) + g.shape[1:], np.float32)
    np.put_along_axis(votes, bins[:, None], magnitude[:, None], axis=1)
    t, _, h, w = votes.shape
    cells = votes.reshape(t, BINS, h // CELL, CELL, w // CELL, CELL).mean(axis=(3, 5))
    cells /= np.sqrt((cells ** 2).sum(axis=1, keepdims=True) + 1e-3)  # local contrast normalisation
    return cells.reshape(t, -1)


def _clip_features(index: int) -> tuple:
    """Worker: HOG of the grey centre crops [T, D] (as rendered, and mirrored) and the true AUs [T, n_aus]."""
    cfg = _worker_state["cfg"]
    frames, _ = render_clip(cfg, index)
    size = frames.shape[1]
    lo = int(round(size * (1 - CROP) / 2))
    grey = np.stack([cv2.resize(cv2.cvtColor(f[lo:size - lo, lo:size - lo], cv2.COLOR_RGB2GRAY), (SIDE, SIDE),
                                interpolation=cv2.INTER_AREA) for f in frames])
    aus = clip_scene(cfg, index).timeline.aus.astype(np.float32)
    return hog(grey), hog(np.ascontiguousarray(grey[:, :, ::-1])), aus


def hog_upper_face(dim: int) -> torch.Tensor:
    """Which HOG dimensions lie in the upper half of the crop (brows, eyes)."""
    side = int(round((dim // BINS) ** 0.5))
    rows = torch.arange(side)[:, None].expand(side, side)
    return (rows < side // 2).expand(BINS, side, side).flatten()


def temporal_features(h: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """[N, T, D] per-frame features -> [N, D'] one vector per clip; `upper` [D] marks upper-face dims."""
    n = len(h)
    change = h - h[:, :1]
    apex = change.norm(dim=-1).argmax(1)
    stats, peaks = [], []
    for part in (h[:, :, upper], h[:, :, ~upper]):
        step = (part[:, 1:] - part[:, :-1]).norm(dim=-1)  # motion per frame
        jerk = (part[:, 2:] - 2 * part[:, 1:-1] + part[:, :-2]).norm(dim=-1)  # tremor
        away = (part - part[:, :1]).norm(dim=-1)  # distance from the first frame
        stats.append(torch.stack([step.max(1).values, step.mean(1), step.max(1).values / (step.sum(1) + 1e-6),
                                  jerk.mean(1), away[:, -1], away.max(1).values,
                                  away[:, -1] / (away.max(1).values + 1e-6)], 1))
        peaks.append(step.argmax(1).float() / h.shape[1])
    return torch.cat([h.mean(1), change[torch.arange(n), apex]] + stats + [(peaks[0] - peaks[1])[:, None]], 1)


class Ridge:
    """Closed-form ridge regression onto centred one-hot targets, on standardised features.

    The Gram matrix is computed once; `fit(lam)` then costs one small solve per regularisation strength.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        x = x.double()
        self.mean, self.std = x.mean(0), x.std(0) + 1e-6
        z = (x - self.mean) / self.std
        target = F.one_hot(y, len(EMOTIONS)).double() - 1.0 / len(EMOTIONS)
        self.gram, self.moment, self.n = z.T @ z, z.T @ target, len(z)

    def fit(self, lam: float) -> "Ridge":
        eye = torch.eye(len(self.gram), dtype=self.gram.dtype)
        self.weight = torch.linalg.solve(self.gram + lam * self.n * eye, self.moment)
        return self

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean) / self.std) @ self.weight


def _accuracy(scores: torch.Tensor, y: torch.Tensor) -> float:
    return float((scores.argmax(-1) == y).double().mean())


def evaluate(per_frame: torch.Tensor, per_frame_flip: torch.Tensor | None, upper: torch.Tensor, y: torch.Tensor,
             split: np.ndarray, lambdas=LAMBDAS) -> dict:
    """Single-frame vs temporal accuracy on the test split; lambda picked on val, refit on train+val."""
    n, t, _ = per_frame.shape
    sets = {name: torch.from_numpy(np.isin(split, names)) for name, names in
            (("train", ["train"]), ("val", ["val"]), ("fit", ["train", "val"]), ("test", ["test"]))}
    views = [per_frame] + ([per_frame_flip] if per_frame_flip is not None else [])

    def frames_of(mask):
        x = torch.cat([v[mask].reshape(-1, v.shape[-1]) for v in views])
        return x, y[mask].repeat_interleave(t).repeat(len(views))

    def clips_of(mask):
        x = torch.cat([temporal_features(v[mask], upper) for v in views])
        return x, y[mask].repeat(len(views))

    def single_scores(model, mask):
        return model.scores(per_frame[mask].reshape(-1, per_frame.shape[-1])).reshape(-1, t, len(EMOTIONS))

    def pick(score, data) -> float:
        """The lambda with the best val accuracy when trained on train (the middle one if there is no val)."""
        if not sets["val"].any():
            return lambdas[len(lambdas) // 2]
        model = Ridge(*data(sets["train"]))
        return max(lambdas, key=lambda lam: _accuracy(score(model.fit(lam), sets["val"]), y[sets["val"]]))

    def clip_scores(model, mask):
        return model.scores(temporal_features(per_frame[mask], upper))

    single_lam = pick(lambda m, mask: single_scores(m, mask).mean(1), frames_of)
    single = Ridge(*frames_of(sets["fit"])).fit(single_lam)
    frame_scores = single_scores(single, sets["test"])
    temporal_lam = pick(clip_scores, clips_of)
    temporal = Ridge(*clips_of(sets["fit"])).fit(temporal_lam)
    y_test = y[sets["test"]]
    return {
        "single_frame": _accuracy(frame_scores.mean(1), y_test),
        "single_frame_middle": _accuracy(frame_scores[:, t // 2], y_test),
        "temporal": _accuracy(clip_scores(temporal, sets["test"]), y_test),
        "lambda": {"single_frame": single_lam, "temporal": temporal_lam},
    }


def calibrate(cfg: SyntheticConfig, workers: int | None = None, progress: bool = True) -> dict:
    """Render cfg's clips, fit both baselines on pixels (HOG) and on the true AUs; return the accuracies."""
    torch.manual_seed(0)
    start = time.perf_counter()
    plan = video_plan(cfg)
    results = map_samples(_clip_features, list(range(len(plan))), cfg, workers, desc="calibrate",
                          progress=progress)
    rendered = time.perf_counter()
    hogs, flipped, aus = (torch.from_numpy(np.stack([r[k] for r in results])) for k in range(3))
    y = torch.tensor([EMOTIONS.index(s.emotion) for s in plan])
    split = np.array([s.split for s in plan])
    pixels = evaluate(hogs, flipped, hog_upper_face(hogs.shape[-1]), y, split)
    oracle = evaluate(aus, None, torch.from_numpy(UPPER_FACE), y, split)
    return {
        "chance": 1 / len(EMOTIONS),
        "clips": {name: int((split == name).sum()) for name in ("train", "val", "test")},
        "pixels": pixels,
        "true_aus": oracle,
        "seconds": {"render": round(rendered - start, 1), "fit": round(time.perf_counter() - rendered, 1)},
        "config": dataclasses.asdict(cfg),
    }


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m s4d.data.synthetic.calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video-identities", type=int, default=200, help="people in the videos (default 200)")
    parser.add_argument("--clips-per-identity", type=int, default=6, help="clips per person (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--workers", type=int, default=None, help="render processes (default: all cores)")
    args = parser.parse_args(argv)
    cfg = SyntheticConfig(seed=args.seed, video_identities=args.video_identities,
                          clips_per_identity=args.clips_per_identity)
    report = calibrate(cfg, args.workers)
    report.pop("config")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
