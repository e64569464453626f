"""A tiny learnable expression-like dataset for the fine-tuning and evaluation tests.

Videos (8 frames, 32 px, JPEG frame folders), 4 classes: `red` and `green` differ by background colour
(easy), `down` and `up` share a blue background and differ ONLY by the direction horizontal stripes move
(vertically, so a horizontal flip keeps the label): they need the temporal signal. Images, 3 classes: red,
green, blue backgrounds. Every sample carries stripes at a random offset (moving in a random direction
for the colour classes) and pixel noise.

Manifests hold paths relative to the dataset folder, which the tests use as the working directory (the
repository root in the real pipeline), as the `prepare` stage writes them.
"""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from s4d.config import load_params
from s4d.data.manifest import make_manifest, write_manifest

REPO = Path(__file__).resolve().parents[1]
SIZE, FRAMES = 32, 8
VIDEO_CLASSES = ["red", "green", "down", "up"]
IMAGE_CLASSES = ["red", "green", "blue"]
COLOURS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 200)}  # RGB
VIDEO_SPLITS = {"train": 12, "val": 3, "test": 3}  # per class
IMAGE_SPLITS = {"train": 12, "val": 3, "test": 3}

# A model small enough that a CPU epoch takes well under a second.
SMALL_MODEL = [
    "models.tiny.img_size=32", "models.tiny.patch_size=8", "models.tiny.num_frames=8", "models.tiny.tubelet_size=2",
    "models.tiny.embed_dim=64", "models.tiny.depth=2", "models.tiny.num_heads=2", "models.tiny.drop_path=0.0",
    "models.tiny.moae.layers=1", "models.tiny.moae.experts=4", "models.tiny.moae.top_k=2",
    "models.tiny.moae.bottleneck=16",
]
SMALL_RUN = [
    "data.workers=0", "data.frame_stride=1", "finetune.init=scratch", "finetune.batch_size=8",
    "finetune.image_batch_size=8", "finetune.base_lr=0.2", "finetune.min_lr=0.00001", "finetune.warmup_epochs=1",
    "finetune.epochs=8", "finetune.patience=8", "finetune.label_smoothing=0.0", "evaluate.clips=2",
    "evaluate.crops=1", "evaluate.batch_size=8",
]


def _background(rng: np.random.Generator, colour: str) -> np.ndarray:
    base = np.array(COLOURS[colour], dtype=np.float32) + rng.normal(0, 12, 3)
    return np.broadcast_to(base, (SIZE, SIZE, 3)).copy()


def _frame(background: np.ndarray, phase: float, rng: np.random.Generator) -> np.ndarray:
    """Horizontal light stripes (period 8 px) at vertical offset `phase` over the background, plus noise."""
    stripes = (np.sin(2 * np.pi * (np.arange(SIZE) - phase) / 8) > 0.3)[:, None, None]
    frame = np.where(stripes, 235.0, background) + rng.normal(0, 8, background.shape)
    return np.clip(frame, 0, 255).astype(np.uint8)


def write_video(folder: Path, label: str, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    colour = label if label in COLOURS else "blue"
    direction = {"down": 1, "up": -1}.get(label, rng.choice([-1, 1]))
    background, start = _background(rng, colour), rng.uniform(0, SIZE)
    for t in range(FRAMES):
        frame = _frame(background, start + direction * 3 * t, rng)
        cv2.imwrite(str(folder / f"{t:03d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])


def write_image(path: Path, label: str, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = _frame(_background(rng, label), rng.uniform(0, SIZE), rng)
    cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])


def row(id: str, path: str, label: int, names: list[str], modality: str, split: str, frames: int) -> dict:
    return {"id": id, "path": path, "label": label, "label_name": names[label],
            "label_set": "folder:" + ",".join(names), "modality": modality, "split": split, "fold": 0,
            "num_frames": frames, "height": SIZE, "width": SIZE, "source": "toy", "group": ""}


def build(root: Path, seed: int = 0) -> Path:
    """Write the media under root/media and manifests under root/prepared; returns root."""
    rng = np.random.default_rng(seed)
    videos, images = [], []
    for split, per_class in VIDEO_SPLITS.items():
        for label, name in enumerate(VIDEO_CLASSES):
            for i in range(per_class):
                rel = f"media/videos/{split}/{name}_{i:02d}"
                write_video(root / rel, name, rng)
                videos.append(row(f"{split}-{name}-{i}", rel, label, VIDEO_CLASSES, "video", split, FRAMES))
    for split, per_class in IMAGE_SPLITS.items():
        for label, name in enumerate(IMAGE_CLASSES):
            for i in range(per_class):
                rel = f"media/images/{split}/{name}_{i:02d}.jpg"
                write_image(root / rel, name, rng)
                images.append(row(f"{split}-{name}-{i}", rel, label, IMAGE_CLASSES, "image", split, 1))
    write_manifest(make_manifest(videos), root / "prepared" / "dynamic.csv")
    write_manifest(make_manifest(images), root / "prepared" / "static.csv")
    return root


def copy_prepared(root: Path, name: str, edit=None, static: bool = True) -> Path:
    """A second prepared folder beside `root/prepared`, optionally with the dynamic manifest edited."""
    from s4d.data.manifest import read_manifest
    target = root / name
    target.mkdir(parents=True, exist_ok=True)
    dynamic = read_manifest(root / "prepared" / "dynamic.csv")
    write_manifest(edit(dynamic) if edit else dynamic, target / "dynamic.csv")
    if static:
        shutil.copy(root / "prepared" / "static.csv", target / "static.csv")
    return target


def params(prepared: Path, *overrides: str):
    """The repository's params.yaml with the small model and run settings, reading `prepared`."""
    return load_params(REPO / "params.yaml",
                       [*SMALL_MODEL, *SMALL_RUN, f"data.prepared_dir={prepared}", *overrides])


def no_val(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["split"] != "val"]


@contextlib.contextmanager
def single_thread():
    """One intra-op thread: on a small shared CPU, 2 threads make these tiny matmuls ~50x slower, and
    results are reproducible."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# Shared between test modules (a fixture imported into two modules is set up once per module).
_ROOT: list[Path] = []
_RUNS: dict = {}


def toy_root(factory) -> Path:
    """The toy dataset, built once per test session under a pytest temp folder."""
    if not _ROOT:
        _ROOT.append(build(factory.mktemp("toy")))
    return _ROOT[0]


def run_finetune(root: Path, name: str, *overrides: str, prepared: Path | None = None):
    """Fine-tune once per (name, overrides) with the toy folder as working directory -> (out_dir, summary)."""
    from s4d.train.finetune import finetune
    key = (str(root), name, overrides, str(prepared))
    if key not in _RUNS:
        out = root / "runs" / name
        with contextlib.chdir(root), single_thread():
            _RUNS[key] = out, finetune(params(prepared or root / "prepared", *overrides), out)
    return _RUNS[key]
