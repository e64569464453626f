"""Datasets over manifests: clip sampling from frame folders, image loading, augmentation, samplers.

Videos come out as (C, T, H, W) float tensors, images as (C, H, W), both normalised with the ImageNet
statistics that VideoMAE-style models use. Spatial augmentation is drawn once per clip, so every frame of
a clip gets the same crop, flip and RandAugment ops.

`transforms` (params `data.transforms`) picks how frames become model inputs: `ours` (short side to the
model size, centre crop; test clips spread from the first to the last frame) or `official`, what the published
S4D code does (MSA-LMC/S4D finetune/datasets/kinetics.py VideoClsDatasetFrame, finetune/s4d/sfer/__init__.py):
frames squashed to size x size, test clips on the stride grid from frame 0, fine-tuning clips from a random
window by linspace, stills squashed (fine-tuning: squashed to 1.2 x size, then a random crop).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import pandas as pd
import torch
import torchvision.transforms.v2 as T
from timm.data.random_erasing import RandomErasing
from torch.utils.data import Dataset, WeightedRandomSampler

from s4d.config import InputError
from s4d.data.manifest import outside_root


def worker_init(worker_id: int) -> None:
    """DataLoader workers are forked: drop the threading exit hooks they inherit. A parent such as a Prefect
    flow run registers one that drains services which only run in the parent; in the worker it fails at exit
    and torch reports "DataLoader worker ... exited unexpectedly"."""
    import threading

    getattr(threading, "_threading_atexits", []).clear()


MEAN = (0.485, 0.456, 0.406)  # ImageNet; the official code normalises with the same values
STD = (0.229, 0.224, 0.225)
STILL_TRAIN_SCALE = 1.2  # official stills: Resize((192, 192)) then RandomCrop(160) at 160 px
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class Augment:
    """Training augmentation; `None` in a dataset means evaluation (resize + centre/side crop)."""
    scale: tuple[float, float] = (0.5, 1.0)  # random resized crop area
    flip: bool = True
    rand_augment: bool = True  # RandAugment 2 ops, magnitude 9
    erase_prob: float = 0.25  # random erasing (timm)


def clip_indices(total: int, num_frames: int, stride: int, start: int) -> np.ndarray:
    """Frame indices of one clip from `start`; clips longer than the video repeat the last frame."""
    return np.minimum(start + stride * np.arange(num_frames), total - 1)


def clip_starts(total: int, num_frames: int, stride: int, views: int, rng: np.random.Generator | None):
    """Random start (training, rng given) or `views` starts spread uniformly over the video (testing)."""
    span = max(total - ((num_frames - 1) * stride + 1), 0)
    if rng is not None:
        return [int(rng.integers(0, span + 1))]
    if views == 1:
        return [span // 2]
    return [round(i * span / (views - 1)) for i in range(views)]


def official_test_clips(total: int, num_frames: int, stride: int, clips: int) -> list[np.ndarray]:
    """The official test clips: every `stride`-th frame from frame 0, padded with its last frame to
    `num_frames`; clip i starts int(i * (len - num_frames) / (clips - 1)) along that grid. One clip (the
    official code needs two or more) takes the middle of the grid."""
    grid = np.arange(0, total, stride)
    grid = np.concatenate([grid, np.full(max(num_frames - len(grid), 0), grid[-1])])
    spare = len(grid) - num_frames
    starts = [spare // 2] if clips == 1 else [int(i * spare / (clips - 1)) for i in range(clips)]
    return [grid[s:s + num_frames] for s in starts]


def official_train_clip(total: int, num_frames: int, stride: int, rng: np.random.Generator) -> np.ndarray:
    """The official fine-tuning clip: a window of num_frames * stride frames ending at a random frame in
    [window, total), `num_frames` indices by linspace over it (truncated); a shorter video is spread by
    linspace over all its frames and padded with its last frame."""
    window = num_frames * stride
    if total <= window:
        spread = np.linspace(0, total, num=total // stride)
        idx = np.concatenate([spread, np.full(num_frames - len(spread), total)])
        return np.clip(idx, 0, total - 1).astype(np.int64)
    end = int(rng.integers(window, total))
    return np.clip(np.linspace(end - window, end, num=num_frames), end - window, end - 1).astype(np.int64)


def read_rgb(path: str | Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def list_frames(folder: Path) -> list[str]:
    frames = sorted(f for f in os.listdir(folder) if f.lower().endswith(FRAME_SUFFIXES))
    if not frames:
        raise OSError(f"frame folder {folder} holds no frames")
    return frames


def normalise(frames: torch.Tensor) -> torch.Tensor:
    """(..., T, C, H, W) uint8 frames -> (..., C, T, H, W) float with the ImageNet mean/std: what every model
    input gets (training, evaluation and serving)."""
    mean, std = torch.tensor(MEAN).view(3, 1, 1, 1), torch.tensor(STD).view(3, 1, 1, 1)
    return (frames.transpose(-4, -3).float() / 255 - mean) / std


def spatial_crops(frames: torch.Tensor, size: int, crops: int) -> list[torch.Tensor]:
    """Resize the short side to `size`, then 1 centre crop, or 2 (both ends) / 3 (ends and centre) crops
    along the long side (multi-view)."""
    frames = T.functional.resize(frames, size, antialias=True)
    h, w = frames.shape[-2:]
    if crops == 1:
        return [T.functional.center_crop(frames, [size, size])]
    spare = max(h, w) - size
    along = [0, spare] if crops == 2 else [0, spare // 2, spare]
    middle = (min(h, w) - size) // 2
    boxes = [(a, middle) if h > w else (middle, a) for a in along]  # (top, left)
    return [frames[..., y:y + size, x:x + size] for y, x in boxes]


def squash(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Resize to size x size, aspect ratio not kept: the official Resize((size, size)), bilinear with the
    antialiasing of PIL's resize."""
    return T.functional.resize(frames, [size, size], antialias=True)


class _FramesDataset(Dataset):
    """Common part: manifest rows, root folder, augmentation and normalisation."""
    still = False  # images: the official fine-tuning crop of a still differs from a clip's

    def __init__(self, manifest: pd.DataFrame, root: str | Path, size: int, augment: Augment | None,
                 crops: int = 1, seed: int = 0, allowed: Sequence[str | Path] = (), transforms: str = "ours"):
        if transforms not in ("ours", "official"):
            raise ValueError(f"transforms: {transforms!r} is not one of ours, official")
        if manifest.empty:
            raise ValueError("the manifest holds no rows for this dataset/split")
        # Checked here as well as by validate: a manifest edited after validation must not open /etc/passwd.
        escaping = [f"{id}: {why}" for id, p in zip(manifest["id"], manifest["path"])
                    if (why := outside_root(p, root, allowed))]
        if escaping:
            more = f" (and {len(escaping) - 3} more)" if len(escaping) > 3 else ""
            raise InputError(f"refusing to load {len(escaping)} manifest row(s) outside the dataset root {root}: "
                             f"{'; '.join(escaping[:3])}{more} (paths stay inside the project folder or the "
                             f"configured data.dynamic.root / data.static.root / data.prepared_dir)")
        self.rows = manifest.reset_index(drop=True)
        self.root, self.size, self.augment, self.crops, self.seed = Path(root), size, augment, crops, seed
        self.official = transforms == "official"
        self.epoch = 0
        self.labels = self.rows["label"].to_numpy()
        if augment is not None:
            ops = [T.RandomResizedCrop(size, scale=augment.scale, antialias=True)]
            if self.official and self.still:
                big = round(STILL_TRAIN_SCALE * size)
                ops = [T.Resize([big, big], antialias=True), T.RandomCrop(size)]
            elif self.official:  # frames squashed first, then the random resized crop
                ops = [T.Resize([size, size], antialias=True)] + ops
            ops += [T.RandomHorizontalFlip()] if augment.flip else []
            ops += [T.RandAugment(2, 9)] if augment.rand_augment else []
            self.train_ops = T.Compose(ops)
            self.erase = RandomErasing(augment.erase_prob, mode="pixel", device="cpu") if augment.erase_prob else None
        self.mean = torch.tensor(MEAN).view(3, 1, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1, 1)

    def set_epoch(self, epoch: int) -> None:
        """Reseed per epoch, so a resumed run draws the same clips as an uninterrupted one."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, index))

    def finish(self, frames: torch.Tensor, index: int) -> list[torch.Tensor]:
        """(T, C, H, W) uint8 -> list of normalised (C, T, H, W) views."""
        if self.augment is None and self.official:
            # the official crops (long side - size) / (crops - 1) apart all start at 0 on a squashed frame: one view
            return [self.normalise(squash(frames, self.size))]
        if self.augment is None:
            return [self.normalise(view) for view in spatial_crops(frames, self.size, self.crops)]
        # torchvision and timm draw from the global torch / Python RNGs: seed them from (seed, epoch, index)
        # inside a forked torch RNG, so a sample's augmentation never depends on worker or process history.
        seed = int(self.rng(index).integers(2 ** 31))
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed also queues lazy CUDA seeding, recording a Python stack
            # each call (a third of this function's time on the embedded clips).
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            x = self.normalise(self.train_ops(frames))
            if self.erase is not None:
                x = self.erase(x.transpose(0, 1)).transpose(0, 1)  # per-frame regions, as VideoMAE does
        return [x]

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        return normalise(frames)


class ClipDataset(_FramesDataset):
    """Clips of `num_frames` frames at `stride` from frame folders. Training: one random clip; testing:
    `clips` x `crops` views stacked as (V, C, T, H, W) (official transforms: `clips` views, the crops coincide)."""

    def __init__(self, manifest: pd.DataFrame, root: str | Path, size: int, num_frames: int, stride: int,
                 augment: Augment | None = None, clips: int = 1, crops: int = 1, seed: int = 0,
                 allowed: Sequence[str | Path] = (), transforms: str = "ours"):
        super().__init__(manifest, root, size, augment, crops, seed, allowed, transforms)
        self.num_frames, self.stride, self.clips = num_frames, stride, clips

    def clip_plan(self, total: int, rng: np.random.Generator | None) -> list[np.ndarray]:
        """Frame indices of each temporal view of a `total`-frame video (one random clip when training)."""
        n, stride = self.num_frames, self.stride
        if self.official:
            return [official_train_clip(total, n, stride, rng)] if rng is not None else \
                official_test_clips(total, n, stride, self.clips)
        return [clip_indices(total, n, stride, start) for start in clip_starts(total, n, stride, self.clips, rng)]

    def __getitem__(self, index: int):
        row = self.rows.iloc[index]
        folder = self.root / row["path"]
        names = list_frames(folder)
        rng = self.rng(index) if self.augment is not None else None
        views, read = [], {}  # clips may share frames (official padding and overlaps): each is read once
        for idx in self.clip_plan(len(names), rng):
            for i in set(idx.tolist()) - set(read):
                read[i] = read_rgb(folder / names[i])
            frames = [read[i] for i in idx.tolist()]
            if len({f.shape for f in frames}) > 1:
                sizes = sorted({f"{f.shape[1]}x{f.shape[0]}" for f in frames})
                raise OSError(f"clip {folder}: frames differ in size ({', '.join(sizes)}); every frame of a clip "
                              f"must share one size (s4d validate checks this)")
            frames = np.stack(frames)
            views += self.finish(torch.from_numpy(frames).permute(0, 3, 1, 2), index)
        x = views[0] if self.augment is not None else torch.stack(views)
        return x, int(row["label"])


class ImageDataset(_FramesDataset):
    """Still images (or the middle frame of a 1-frame folder) as (C, H, W); testing stacks crops (V, C, H, W)."""
    still = True

    def __getitem__(self, index: int):
        row = self.rows.iloc[index]
        path = self.root / row["path"]
        if path.is_dir():
            names = list_frames(path)
            path = path / names[len(names) // 2]
        frame = torch.from_numpy(read_rgb(path)).permute(2, 0, 1)[None]
        views = [v[:, 0] for v in self.finish(frame, index)]
        x = views[0] if self.augment is not None else torch.stack(views)
        return x, int(row["label"])


def balanced_sampler(labels: np.ndarray, num_samples: int, seed: int) -> WeightedRandomSampler:
    """Draw each class equally often (weights 1/count), with replacement."""
    counts = np.bincount(labels)
    weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
    return WeightedRandomSampler(weights, num_samples, replacement=True,
                                 generator=torch.Generator().manual_seed(seed))
