"""Joint fine-tuning: static (SFER, images) and dynamic (DFER, videos) steps through one shared backbone.

Each optimisation step is ONE task: a batch of videos for the dynamic head or a batch of images for the
static head. An epoch is one pass over the dynamic train set (ceil(n / batch_size) steps) plus
`round(steps * share / (1 - share))` static steps, shuffled into one order drawn from (seed, epoch).

Baselines come from params alone: `finetune.static_share=0` is video-only (no static head, no static data
read at all), `models.<profile>.moae.layers=0` is vanilla multi-task, the defaults are S4D.

The model is selected on the VALIDATION split of the dynamic manifest (carved from train with
`data.val_fraction` when the dataset has none). Test rows are dropped before anything else: no dataset is
ever built from them here.

Data parallel is DDP-style, not DeepSpeed (the model and its AdamW state fit one device at every profile
here): each rank holds the whole model, gradients are all-reduced after the step's chunks (gradient
accumulation through `finetune.micro_batch`), so N ranks reproduce one process to float tolerance.

Outputs (in `out_dir`): model.pt (best epoch), train_log.csv (per step), val_log.csv (per epoch),
expert_load.csv (per epoch, task, MoAE layer and expert), curves.png, init_report.txt, summary.json.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from s4d import precision
from s4d.config import FinetuneConfig, InputError, Params, to_dict
from s4d.data.loaders import Augment, ClipDataset, ImageDataset, balanced_sampler, worker_init
from s4d.data.manifest import dataset_folders, read_manifest
from s4d.io import save_figure, save_torch, write_csv, write_json, write_text
from s4d.models.checkpoint import CheckpointError, init_classifier, save_checkpoint
from s4d.models.classifier import S4DClassifier
from s4d.train.checkpoints import OutOfSpace, commit_outputs, out_of_space, staging_dir
from s4d.train.distributed import (Stopped, all_reduce_sum, barrier, broadcast_object, gather_objects, rank,
                                   step_hook, stop_requested, use_bf16, world_size)
from s4d.train.inputs import InputsError, changed_inputs, stage_inputs
from s4d.train.launch import relaunch, run_worker, under_launcher
from s4d.train.metrics import class_names, classification_metrics

PRETRAIN_CHECKPOINT = Path("artifacts/pretrain/model.pt")
DATA_ROOT = Path(".")  # manifest paths are relative to the repository root (the working directory)
TASKS = ("dynamic", "static")
OUTPUTS = ("model.pt", "train_log.csv", "val_log.csv", "expert_load.csv", "curves.png", "init_report.txt",
           "summary.json")
TRAIN_LOG_COLUMNS = ["epoch", "step", "task", "loss", "balance_loss", "total_loss", "lr", "grad_norm",
                     "batch", "clips_per_s"]


class FinetuneError(ValueError):
    """A params or data problem that stops fine-tuning before it starts (reported without a traceback)."""


# ---------------------------------------------------------------------------------------------- model
def build_optimizer(model: S4DClassifier, ft: FinetuneConfig, lr: float) -> torch.optim.Optimizer:
    return create_optimizer_v2(model, "adamw", lr=lr, weight_decay=ft.weight_decay, layer_decay=ft.layer_decay)


# ------------------------------------------------------------------------------------------- runtime
def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def progress(iterable, **kwargs):
    return tqdm(iterable, disable=not sys.stderr.isatty(), leave=False, dynamic_ncols=True, **kwargs)


def derived_seed(*parts: int) -> int:
    """A 31-bit seed from a tuple of non-negative ints (seed, epoch, stream)."""
    return int(np.random.default_rng([abs(int(p)) for p in parts]).integers(2 ** 31))


# ---------------------------------------------------------------------------------------------- data
def train_val(manifest: pd.DataFrame, val_fraction: float, seed: int, carve: bool) -> tuple[pd.DataFrame,
                                                                                           pd.DataFrame, bool]:
    """(train rows, val rows, carved?) of a manifest. Test rows are dropped first and never looked at.

    Without val rows, `carve` moves `val_fraction` of train to val (s4d.data.readers.carve_val)."""
    rows = manifest[manifest["split"].isin(("train", "val"))]
    carved = False
    if carve and not (rows["split"] == "val").any() and val_fraction > 0:
        from s4d.data.readers import carve_val
        rows, carved = carve_val(rows, val_fraction, seed), True
    return rows[rows["split"] == "train"], rows[rows["split"] == "val"], carved


def static_steps_for(dynamic_steps: int, share: float) -> int:
    """Static steps matching `dynamic_steps` so that static steps are `share` of all steps (>= 1 if share > 0)."""
    if share <= 0:
        return 0
    if share >= 1:
        raise FinetuneError("finetune.static_share must be < 1: the dynamic task defines the epoch and the "
                            "model selection")
    return max(1, round(dynamic_steps * share / (1.0 - share)))


def step_plan(dynamic_steps: int, static_steps: int, seed: int, epoch: int) -> list[str]:
    """The epoch's task order: dynamic and static steps shuffled, deterministic from (seed, epoch)."""
    tasks = np.array(["dynamic"] * dynamic_steps + ["static"] * static_steps)
    return tasks[np.random.default_rng([abs(seed), epoch, 0]).permutation(len(tasks))].tolist()


def epoch_draws(num_rows: int, num_samples: int, seed: int, epoch: int, stream: int,
                labels: np.ndarray | None = None) -> list[tuple[int, int]]:
    """The epoch's samples as (row index, repeat number). Without `labels`: shuffled passes over the rows;
    with them: class-balanced draws (`balanced_sampler`). The repeat number gives a row drawn twice in one
    epoch its own augmentation."""
    if labels is not None:
        order = list(balanced_sampler(labels, num_samples, derived_seed(seed, epoch, stream)))
    else:
        rng = np.random.default_rng([abs(seed), epoch, stream])
        passes = math.ceil(num_samples / num_rows)
        order = np.concatenate([rng.permutation(num_rows) for _ in range(passes)])[:num_samples].tolist()
    seen: Counter = Counter()
    draws = []
    for i in order:
        draws.append((int(i), seen[i]))
        seen[i] += 1
    return draws


class EpochDraws(Dataset):
    """Reads draw (index, repeat) of an epoch from a loaders dataset, whose augmentation is seeded from
    (seed, epoch, index): the repeat number is folded into the epoch it sees."""

    REPEATS = 1000

    def __init__(self, base: Dataset):
        self.base, self.epoch = base, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        index, repeat = key
        self.base.set_epoch(self.epoch * self.REPEATS + repeat)
        return self.base[index]


def loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device, sampler=None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=False,
                      num_workers=workers, pin_memory=device.type == "cuda", worker_init_fn=worker_init)


# ---------------------------------------------------------------------------------------------- loss
class TaskLoss:
    """Label-smoothed CE, or soft-target CE after timm Mixup/CutMix when either alpha is > 0."""

    def __init__(self, ft: FinetuneConfig, num_classes: int):
        self.mixup = None
        if ft.mixup > 0 or ft.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=ft.mixup, cutmix_alpha=ft.cutmix, label_smoothing=ft.label_smoothing,
                               num_classes=num_classes)
            self.criterion: Callable = SoftTargetCrossEntropy()
        else:
            self.criterion = LabelSmoothingCrossEntropy(ft.label_smoothing)

    def prepare(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return mix_batch(self.mixup, x, y) if self.mixup is not None else (x, y)


def mix_batch(mixup: Mixup, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup/CutMix on images (B, C, H, W) or videos (B, C, T, H, W) -> (x, soft targets).

    Videos are mixed as (B, C*T, H, W), so a CutMix box is the same in every frame. Mixup pairs samples:
    an odd batch drops its last sample; a batch of one is not mixed (label-smoothed one-hot targets)."""
    if len(x) == 1:
        return x, mixup_target(y, mixup.num_classes, 1.0, mixup.label_smoothing)
    if len(x) % 2:
        x, y = x[:-1], y[:-1]
    shape = x.shape
    flat, target = mixup(x.reshape(shape[0], -1, *shape[-2:]).contiguous(), y)
    return flat.reshape(shape), target


# ------------------------------------------------------------------------------------------ predict
@torch.no_grad()
def predict(model: S4DClassifier, data: DataLoader, device: torch.device, bf16: bool = False,
            on_batch: Callable[[torch.Tensor, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,), probabilities (N, K)) over a loader of view-stacked samples (B, V, ...): the softmax
    probabilities of the V views are averaged. `on_batch(labels, views)` runs after each forward (routing)."""
    model.eval()
    labels, probs = [], []
    for x, y in progress(data, desc="predict"):
        batch, views = x.shape[:2]
        with autocast(device, bf16):
            logits = model(x.flatten(0, 1).to(device, non_blocking=True))
        p = logits.float().softmax(dim=-1).view(batch, views, -1).mean(dim=1)
        if on_batch is not None:
            on_batch(y, views)
        labels.append(y.numpy())
        probs.append(p.cpu().numpy())
    return np.concatenate(labels), np.concatenate(probs)


def task_metrics(labels: np.ndarray, probs: np.ndarray, names: list[str]) -> dict:
    """classification_metrics of argmax predictions, plus the mean NLL of the true class."""
    out = classification_metrics(labels, probs.argmax(axis=1), names)
    out["loss"] = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
    return out


# --------------------------------------------------------------------------------------------- init
def initialise(model: S4DClassifier, init: str) -> str:
    """Apply `finetune.init` ("pretrain" | "scratch" | checkpoint path); returns the load report summary."""
    if init == "scratch":
        return "scratch: random initialisation (no checkpoint)"
    path = PRETRAIN_CHECKPOINT if init == "pretrain" else Path(init)
    if not path.is_file():
        hint = " (run the pretrain stage first, or set finetune.init=scratch)" if init == "pretrain" else ""
        raise FinetuneError(f"finetune.init={init!r}: checkpoint {path} does not exist{hint}")
    return init_classifier(model, path).summary()


# ---------------------------------------------------------------------------------------------- logs
class ExpertLoad:
    """Per task and MoAE layer: assignments per expert and dropped assignments, summed over an epoch."""

    def __init__(self, model: S4DClassifier):
        self.layers = model.moae_layers()
        self.first_block = model.cfg.depth - len(self.layers)
        self.reset()

    def reset(self) -> None:
        self.load: dict = defaultdict(lambda: [None] * len(self.layers))
        self.dropped: dict = defaultdict(lambda: [0] * len(self.layers))

    def update(self, task: str) -> None:
        for i, layer in enumerate(self.layers):
            load = layer.load.detach().float().cpu().numpy()
            prev = self.load[task][i]
            self.load[task][i] = load if prev is None else prev + load
            self.dropped[task][i] += int(layer.dropped)

    def reduced_state(self) -> dict:
        """The counts so far summed over ranks (a collective: every rank calls it), as plain dicts."""
        parts = gather_objects(({t: list(v) for t, v in self.load.items()}, dict(self.dropped)))
        load: dict = {}
        dropped: dict = {}
        for part_load, part_dropped in parts:
            for task, layers in part_load.items():
                mine = load.setdefault(task, [None] * len(layers))
                for i, counts in enumerate(layers):
                    if counts is not None:
                        mine[i] = counts if mine[i] is None else mine[i] + counts
            for task, layers in part_dropped.items():
                dropped[task] = [a + b for a, b in zip(dropped.get(task, [0] * len(layers)), layers)]
        return {"load": load, "dropped": dropped}

    def load_state(self, state: dict) -> None:
        """Counts of a partly trained epoch, from a resume checkpoint."""
        self.reset()
        self.load.update(state["load"])
        self.dropped.update(state["dropped"])

    @staticmethod
    def rows_of(state: dict, epoch: int, first_block: int) -> list[dict]:
        rows = []
        for task in TASKS:
            for i, load in enumerate(state["load"].get(task, [])):
                if load is None:
                    continue
                total = float(load.sum())
                for expert, count in enumerate(load):
                    rows.append({"epoch": epoch, "task": task, "block": first_block + i, "expert": expert,
                                 "share": float(count) / total if total else 0.0,
                                 "dropped_share": state["dropped"][task][i] / total if total else 0.0,
                                 "assignments": int(count)})
        return rows


def plot_curves(steps: pd.DataFrame, epochs: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for task, rows in steps.groupby("task"):
        left.plot(rows["step"], rows["loss"], ".", alpha=0.35, ms=3, label=f"{task} step loss")
    left.plot(epochs["last_step"], epochs["train_loss"], "k-o", ms=4, label="epoch mean")
    left.set_xlabel("step")
    left.set_ylabel("training loss")
    left.legend(fontsize=8)
    for column, label in (("val_uar", "dynamic UAR"), ("val_war", "dynamic WAR"),
                          ("val_static_uar", "static UAR"), ("val_static_war", "static WAR")):
        if column in epochs:
            right.plot(epochs["epoch"], epochs[column], "-o", ms=4, label=label)
    right.set_xlabel("epoch")
    right.set_ylabel("validation")
    right.set_ylim(-0.02, 1.02)
    right.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


# ------------------------------------------------------------------------------------- data parallel
def step_chunks(batch_len: int, micro_batch: int, world: int) -> list[tuple[int, int]]:
    """(start, stop) of the micro-batches a global batch is cut into; one forward each.

    The cut depends on the global batch and `micro_batch` only, so with micro_batch set a run gives the
    same result (to float tolerance) on any number of ranks: 1 rank accumulates all chunks, N ranks take
    consecutive chunks each and sum their gradients. micro_batch=0 cuts the batch into one chunk per rank."""
    size = micro_batch or max(1, math.ceil(batch_len / world))
    return [(start, min(start + size, batch_len)) for start in range(0, batch_len, size)]


def rank_chunks(chunks: list[tuple[int, int]], rank: int, world: int) -> list[tuple[int, int]]:
    """This rank's consecutive share of a step's chunks (possibly none)."""
    share = np.array_split(np.arange(len(chunks)), world)[rank]
    return [chunks[i] for i in share]


def rank_batches(keys: list, global_batch: int, micro_batch: int, rank: int, world: int) -> list[dict]:
    """Per step of one task in an epoch: this rank's samples and chunks (chunk bounds are global offsets)."""
    steps = []
    for first in range(0, len(keys), global_batch):
        batch = keys[first:first + global_batch]
        mine = rank_chunks(step_chunks(len(batch), micro_batch, world), rank, world)
        start = mine[0][0] if mine else 0
        stop = mine[-1][1] if mine else 0
        steps.append({"keys": batch[start:stop], "chunks": mine, "offset": start, "size": len(batch)})
    return steps


def reduce_gradients(model: torch.nn.Module) -> None:
    """Sum the gradients over ranks (each rank's are already weighted by its share of the global batch).
    A parameter keeps grad None only when no rank gave it one, as one process accumulating every chunk
    would (AdamW then skips it, weight decay included)."""
    if world_size() == 1:
        return
    params = list(model.parameters())
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                      for p in params])
    all_reduce_sum(has)
    all_reduce_sum(flat)
    offset = 0
    for p, present in zip(params, has.tolist()):
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype) if present else None
        offset += n


def average_buffers(model: torch.nn.Module) -> None:
    """Average the floating buffers (BatchNorm running statistics of the hmlp stem) over ranks after a
    step, so every rank holds the same model. One process updates them once per chunk in turn, so with a
    BatchNorm stem N ranks match it in the parameters but only approximately in these statistics."""
    if world_size() == 1:
        return
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if buffers:
        flat = all_reduce_sum(torch.cat([b.reshape(-1).float() for b in buffers])) / world_size()
        offset = 0
        for b in buffers:
            b.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()


def sharded_predict(model: S4DClassifier, dataset: Dataset, batch_size: int, workers: int, device: torch.device,
                    bf16: bool = False, on_batch: Callable[[torch.Tensor, int], None] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """predict() over a dataset whose samples are split into consecutive shards, one per rank, then
    gathered in order on every rank: the same labels and probabilities as one process (up to the float
    effects of other batch compositions)."""
    world, me = world_size(), rank()
    if world == 1:
        return predict(model, loader(dataset, batch_size, workers, device), device, bf16, on_batch)
    shard = np.array_split(np.arange(len(dataset)), world)[me].tolist()
    part = (np.zeros(0, dtype=np.int64), None)
    if shard:
        part = predict(model, loader(Subset(dataset, shard), batch_size, workers, device), device, bf16, on_batch)
    parts = [p for p in gather_objects(part) if p[1] is not None]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# ------------------------------------------------------------------------------------------ resume
def run_inputs(params: Params, model: S4DClassifier, world: int) -> dict:
    """What a resumable checkpoint must match: the one rule of s4d.train.inputs (settings without the
    performance knobs, the data, the code, the init checkpoint, the micro-batch cut) plus the model's
    state-dict layout. Fine-tuning's resume is the cache this serves; DVC decides when the stage re-runs."""
    layout = json.dumps([[n, list(t.shape)] for n, t in model.state_dict().items()])
    try:
        return stage_inputs(params, "finetune", world_size=world,
                            **{"model layout": hashlib.sha256(layout.encode()).hexdigest()[:16]})
    except InputsError as e:
        raise FinetuneError(str(e)) from None


def save_resume_state(ckpt_dir: Path, state: dict, keep_last: int) -> None:
    """Rank 0: the state as step_<n>.pt (written beside, then renamed), then `latest` switched by a rename;
    a kill at any point leaves `latest` naming a complete checkpoint. The last `keep_last` are kept."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"step_{state['step']:08d}.pt"
    with checkpoint_write(ckpt_dir, name):
        save_torch(state, ckpt_dir / name)  # a full disk surfaces as OSError(ENOSPC): see s4d.io.save_torch
        write_text(ckpt_dir / "latest", name + "\n")
    for old in sorted(ckpt_dir.glob("step_*.pt"))[:-keep_last]:
        old.unlink(missing_ok=True)


@contextlib.contextmanager
def checkpoint_write(ckpt_dir: Path, name: str):
    """Writes of checkpoint `name` into ckpt_dir; a full disk becomes OutOfSpace naming the folder and the
    checkpoint `latest` still names, after removing this write's temp files (a partial file holds space)."""
    latest = ckpt_dir / "latest"
    kept = latest.read_text().strip() if latest.is_file() else None
    try:
        yield
    except (OSError, RuntimeError) as e:
        failure = out_of_space(e, ckpt_dir, name, kept)
        if failure is None:
            raise
        for partial in ckpt_dir.glob(f".{name}.*tmp*"):  # the target itself is still the previous file
            partial.unlink(missing_ok=True)
        raise failure from None


def on_rank0(write: Callable[[], None]) -> None:
    """Rank 0 runs `write`; a full disk there stops every rank with the same message (the others would
    otherwise wait at the next collective for a rank that has gone)."""
    failure = None
    if rank() == 0:
        try:
            write()
        except OutOfSpace as e:
            failure = str(e)
    failure = broadcast_object(failure)
    if failure:
        raise OutOfSpace(failure)


def remove_resume_state(ckpt_dir: Path) -> None:
    """Delete the resume files this stage wrote, entry by entry: the folder itself may be a user's mount
    point or symlink, which is kept."""
    for f in [*ckpt_dir.glob("step_*.pt"), ckpt_dir / "latest", ckpt_dir / "best.pt"]:
        f.unlink(missing_ok=True)
    if not ckpt_dir.is_symlink() and not os.path.ismount(ckpt_dir):
        try:
            ckpt_dir.rmdir()
        except OSError:
            pass  # other files in it are not ours to delete


def load_resume_state(ckpt_dir: Path, inputs: dict) -> dict | None:
    """Rank 0 reads the latest checkpoint and every rank receives it (nodes need no shared filesystem).
    A checkpoint made with other inputs is refused, naming what changed."""
    state, error = None, None
    if rank() == 0 and (ckpt_dir / "latest").is_file():
        path = ckpt_dir / (ckpt_dir / "latest").read_text().strip()
        state = torch.load(path, map_location="cpu", weights_only=False)
        changed = changed_inputs(state["inputs"], inputs)
        if changed:
            state, error = None, (f"{ckpt_dir}: the unfinished run there was made with other inputs: "
                                  f"{'; '.join(changed)}. Run with the same params to resume it, or delete "
                                  f"{ckpt_dir} to start over")
    state, error = broadcast_object((state, error))
    if error:
        raise FinetuneError(error)
    return state


# ---------------------------------------------------------------------------------------------- main
def finetune(params: Params, out_dir: Path = Path("artifacts/finetune")) -> dict:
    """Fine-tune jointly (or video-only / vanilla, per params); returns the summary also written to
    `out_dir/summary.json`.

    Data parallel when a launcher started this process as one of several ranks (init_process_group):
    every rank follows the same step plan and takes its share of each global batch. Resumable: a run
    killed or stopped restarts from `out_dir/checkpoints/latest` and ends with the same weights; the
    checkpoints are removed when the run finishes."""
    started = time.time()
    ft, cfg, data = params.finetune, params.model, params.data
    final_dir = Path(out_dir)
    main_rank = rank() == 0
    world = world_size()
    # Rank 0 writes this run's outputs into a staging folder: the previous run's outputs stay whole until this
    # run has finished, then are replaced together (commit_outputs).
    out_dir = staging_dir(final_dir) if main_rank else final_dir
    barrier()

    random.seed(ft.seed)
    np.random.seed(ft.seed)
    torch.manual_seed(ft.seed)
    device = pick_device()
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    bf16 = use_bf16(ft.precision)

    # -------- data (train and val rows only)
    prepared = Path(data.prepared_dir)
    use_static = ft.static_share > 0
    manifests = {"dynamic": read_manifest(prepared / "dynamic.csv")}
    if use_static:
        manifests["static"] = read_manifest(prepared / "static.csv")
    names, train_rows, val_rows, carved = {}, {}, {}, {}
    for task, manifest in manifests.items():
        names[task] = class_names(manifest)
        train_rows[task], val_rows[task], carved[task] = train_val(manifest, data.val_fraction, ft.seed,
                                                                   carve=task == "dynamic")
        if train_rows[task].empty:
            raise FinetuneError(f"{prepared / (task + '.csv')}: no train rows")
    if val_rows["dynamic"].empty:
        raise FinetuneError(f"{prepared / 'dynamic.csv'}: no val rows to select the model on, and "
                            f"data.val_fraction=0 carves none from train")

    size, frames, stride = cfg.img_size, cfg.num_frames, data.frame_stride
    augment = Augment(scale=(ft.crop_scale, 1.0), flip=True, rand_augment=ft.rand_augment, erase_prob=ft.erase_prob)
    folders = dataset_folders(data)
    tf = data.transforms
    train_sets = {"dynamic": ClipDataset(train_rows["dynamic"], DATA_ROOT, size, frames, stride,
                                         augment=augment, seed=ft.seed, allowed=folders, transforms=tf)}
    val_sets = {"dynamic": ClipDataset(val_rows["dynamic"], DATA_ROOT, size, frames, stride, allowed=folders,
                                       transforms=tf)}
    if use_static:
        train_sets["static"] = ImageDataset(train_rows["static"], DATA_ROOT, size, augment=augment, seed=ft.seed,
                                            allowed=folders, transforms=tf)
        if not val_rows["static"].empty:
            val_sets["static"] = ImageDataset(val_rows["static"], DATA_ROOT, size, augment=None, allowed=folders,
                                              transforms=tf)
    draws = {task: EpochDraws(ds) for task, ds in train_sets.items()}
    batch = {"dynamic": ft.batch_size, "static": ft.image_batch_size}

    dynamic_steps = math.ceil(len(train_sets["dynamic"]) / ft.batch_size)
    static_steps = static_steps_for(dynamic_steps, ft.static_share)
    steps_per_epoch = dynamic_steps + static_steps

    # -------- model, optimiser, schedule
    model = S4DClassifier(cfg, len(names["dynamic"]), len(names["static"]) if use_static else 0)
    init_summary = initialise(model, ft.init)
    if main_rank:
        print(init_summary)
        write_text(out_dir / "init_report.txt", init_summary + "\n")
    model.to(device)
    precision.configure(model, cfg, bf16, train=True, device=device)  # fused or manual attention, measured
    lr = ft.base_lr * ft.batch_size / 256
    optimizer = build_optimizer(model, ft, lr)
    total_steps = ft.epochs * steps_per_epoch
    scheduler = CosineLRScheduler(optimizer, t_initial=total_steps + 1, lr_min=min(ft.min_lr, lr),
                                  warmup_t=round(ft.warmup_epochs * steps_per_epoch), warmup_lr_init=0.0,
                                  t_in_epochs=False)
    losses = {task: TaskLoss(ft, len(names[task])) for task in train_sets}
    expert_load = ExpertLoad(model)

    # -------- resume
    ckpt_dir = final_dir / "checkpoints"  # stable across restarts, unlike the staging folder
    inputs = run_inputs(params, model, world)
    state = load_resume_state(ckpt_dir, inputs)
    step, epochs_done, stale = 0, 0, 0
    best = {"metric": -math.inf, "epoch": 0, "val": None}
    step_rows: list[dict] = []
    epoch_rows: list[dict] = []
    load_rows: list[dict] = []
    epoch_losses: dict = defaultdict(list)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epochs_done, stale, best = state["step"], state["epochs_done"], state["stale"], state["best"]
        step_rows, epoch_rows, load_rows = state["step_rows"], state["epoch_rows"], state["load_rows"]
        epoch_losses.update(state["epoch_losses"])
        if main_rank:
            expert_load.load_state(state["expert_load"])
            print(f"resuming from step {step} of {total_steps} ({ckpt_dir})", flush=True)
    if main_rank:
        write_csv(out_dir / "train_log.csv", pd.DataFrame(step_rows, columns=TRAIN_LOG_COLUMNS))
        if epoch_rows:
            write_epoch_logs(out_dir, step_rows, epoch_rows, load_rows)

    saves: list[float] = []

    def checkpoint() -> None:
        """Every rank calls it (the expert counts are gathered); rank 0 writes."""
        tick = time.time()
        partial_load = expert_load.reduced_state()
        on_rank0(lambda: save_resume_state(ckpt_dir, {
            "step": step, "epochs_done": epochs_done, "stale": stale, "best": best, "inputs": inputs,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "step_rows": step_rows, "epoch_rows": epoch_rows,
            "load_rows": load_rows, "epoch_losses": dict(epoch_losses), "expert_load": partial_load},
            ft.keep_last))
        barrier()
        saves.append(time.time() - tick)

    # -------- loop
    log_file = open(out_dir / "train_log.csv", "a", newline="") if main_rank else None
    step_log = csv.DictWriter(log_file, fieldnames=TRAIN_LOG_COLUMNS) if main_rank else None
    stopped_early = bool(epoch_rows) and stale >= ft.patience and epochs_done < ft.epochs
    try:
        for epoch in range(epochs_done + 1, ft.epochs + 1):
            if stopped_early:
                break
            epoch_start = time.time()
            plan = step_plan(dynamic_steps, static_steps, ft.seed, epoch)
            position = step - (epoch - 1) * steps_per_epoch  # > 0 when resuming inside this epoch
            if position == 0:
                expert_load.reset()
                epoch_losses = defaultdict(list)
            per_step, iterators = {}, {}
            for stream, task in enumerate(train_sets, start=1):
                draws[task].epoch = epoch
                count = plan.count(task) * batch[task]
                if task == "dynamic":
                    count = len(train_sets[task])  # one pass; the last batch may be short
                labels = train_sets[task].labels if data.balanced_sampling else None
                keys = epoch_draws(len(train_sets[task]), count, ft.seed, epoch, stream, labels)
                shares = rank_batches(keys, batch[task], ft.micro_batch, rank(), world)[plan[:position].count(task):]
                per_step[task] = iter(shares)
                mine = [s["keys"] for s in shares if s["keys"]]
                iterators[task] = iter(DataLoader(draws[task], batch_sampler=mine, num_workers=data.workers, worker_init_fn=worker_init,
                                                  pin_memory=device.type == "cuda")) if mine else iter(())

            model.train()
            tick = time.time()
            bar = progress(plan[position:], desc=f"epoch {epoch}/{ft.epochs}")
            for task in bar:
                share = next(per_step[task])
                optimizer.zero_grad(set_to_none=True)
                scheduler.step_update(step + 1)
                sums = torch.zeros(3, dtype=torch.float64)  # task loss, balance loss, total (batch-weighted)
                if share["keys"]:
                    x_all, y_all = next(iterators[task])
                    for start, stop in share["chunks"]:
                        lo, hi = start - share["offset"], stop - share["offset"]
                        # Random draws (mixup, drop path, router noise) from the chunk's place in the global
                        # batch: the same on any number of ranks, and replayed exactly on resume.
                        chunk_seed = derived_seed(ft.seed, step + 1, start)
                        torch.manual_seed(chunk_seed)
                        np.random.seed(chunk_seed)
                        x = x_all[lo:hi].to(device, non_blocking=True)
                        y = y_all[lo:hi].to(device, non_blocking=True)
                        x, target = losses[task].prepare(x, y)
                        with autocast(device, bf16):
                            logits = model(x)
                        task_loss = losses[task].criterion(logits.float(), target)
                        balance = model.balance_loss().float().to(device)
                        loss = task_loss + ft.balance_weight * balance
                        if not torch.isfinite(loss):
                            raise FloatingPointError(f"epoch {epoch} step {step + 1} ({task}): loss is {loss.item()}")
                        weight = (stop - start) / share["size"]
                        (loss * weight).backward()
                        sums += torch.tensor([task_loss.item(), balance.item(), loss.item()],
                                             dtype=torch.float64) * weight
                        expert_load.update(task)
                reduce_gradients(model)
                average_buffers(model)
                all_reduce_sum(sums)
                grad_norm = (float(torch.nn.utils.clip_grad_norm_(model.parameters(), ft.clip_grad))
                             if ft.clip_grad > 0 else math.nan)
                optimizer.step()
                step += 1
                now = time.time()
                row = {"epoch": epoch, "step": step, "task": task, "loss": sums[0].item(),
                       "balance_loss": sums[1].item(), "total_loss": sums[2].item(),
                       "lr": max(g["lr"] for g in optimizer.param_groups), "grad_norm": grad_norm,
                       "batch": share["size"], "clips_per_s": share["size"] / max(now - tick, 1e-9)}
                tick = now
                step_rows.append(row)
                epoch_losses[task].append(row["loss"])
                if main_rank:
                    step_log.writerow(row)
                    log_file.flush()
                bar.set_postfix(task=task[:3], loss=f"{row['loss']:.3f}")
                if step % ft.checkpoint_every == 0:
                    checkpoint()
                step_hook(step)
                signum = stop_requested()
                if signum:
                    if step % ft.checkpoint_every:
                        checkpoint()
                    raise Stopped(f"stopped by {signal.Signals(signum).name} at step {step} of {total_steps}; "
                                  f"checkpoint written to {ckpt_dir}: run the same command to resume")

            # -------- validate, select, stop (every rank has the gathered metrics; rank 0 decides)
            val = {}
            for task, val_set in val_sets.items():
                labels, probs = sharded_predict(model, val_set, ft.batch_size, data.workers, device, bf16)
                val[task] = task_metrics(labels, probs, names[task])
            metric = val["dynamic"][ft.select_metric]
            improved = broadcast_object(metric > best["metric"])
            if improved:
                best = {"metric": metric, "epoch": epoch, "val": {t: _brief(m) for t, m in val.items()}}
                stale = 0

                def save_best() -> None:
                    with checkpoint_write(ckpt_dir, "best.pt"):
                        save_checkpoint(ckpt_dir / "best.pt", model, meta={
                            "epoch": epoch, "select_metric": ft.select_metric,
                            "val": {t: _brief(m) for t, m in val.items()},
                            "labels": names,
                            "label_sets": {t: str(m["label_set"].iloc[0]) for t, m in manifests.items()},
                            "datasets": {t: getattr(data, t).reader for t in manifests},
                            "init": init_summary, "params": to_dict(params)})
                on_rank0(save_best)
            else:
                stale += 1

            all_losses = [v for values in epoch_losses.values() for v in values]
            epoch_row = {"epoch": epoch, "last_step": step, "train_loss": float(np.mean(all_losses))}
            for task in train_sets:
                epoch_row[f"train_loss_{task}"] = float(np.mean(epoch_losses[task])) if epoch_losses[task] else math.nan
            epoch_row.update(val_uar=val["dynamic"]["uar"], val_war=val["dynamic"]["war"],
                             val_loss=val["dynamic"]["loss"])
            if "static" in val:
                epoch_row.update(val_static_uar=val["static"]["uar"], val_static_war=val["static"]["war"],
                                 val_static_loss=val["static"]["loss"])
            epoch_row.update(lr=max(g["lr"] for g in optimizer.param_groups), best=bool(improved),
                             epoch_time_s=time.time() - epoch_start)
            epoch_rows.append(epoch_row)
            epoch_load = expert_load.reduced_state()
            load_rows += ExpertLoad.rows_of(epoch_load, epoch, expert_load.first_block)
            epochs_done = epoch
            stopped_early = stale >= ft.patience and epoch < ft.epochs
            if main_rank:
                verdict = "(best)" if improved else f"(no gain {stale}/{ft.patience})"
                print(f"epoch {epoch}: train loss {epoch_row['train_loss']:.4f}  val UAR {val['dynamic']['uar']:.4f} "
                      f"WAR {val['dynamic']['war']:.4f}  {verdict}", flush=True)
                write_epoch_logs(out_dir, step_rows, epoch_rows, load_rows)
            expert_load.reset()
            epoch_losses = defaultdict(list)
            checkpoint()  # after validation: a resume never validates an epoch twice
    finally:
        if log_file is not None:
            log_file.close()

    summary = {
        "best_epoch": best["epoch"],
        "select_metric": ft.select_metric,
        "best": best["val"],
        "epochs_run": len(epoch_rows),
        "stopped_early": stopped_early,
        "steps": step,
        "steps_per_epoch": {"dynamic": dynamic_steps, "static": static_steps},
        "wall_time_s": time.time() - started,
        "resumed_from_step": state["step"] if state is not None else 0,
        "checkpoints": {"saved": len(saves), "mean_s": float(np.mean(saves)) if saves else 0.0},
        "world_size": world,
        "device": str(device),
        "bf16": bf16,
        "lr": lr,
        "model": {"static_head": use_static, "moae_layers": len(model.moae_layers()),
                  "parameters": sum(p.numel() for p in model.parameters())},
        "data": {f"{t}_{split}": len(rows[t]) for t in manifests
                 for split, rows in (("train", train_rows), ("val", val_rows))}
        | {"val_carved": carved["dynamic"]},
        "labels": names,
        "init": init_summary,
    }
    if main_rank:
        # The selected model replaces the previous one only now that the run has finished.
        shutil.move(ckpt_dir / "best.pt", out_dir / "model.pt")  # a copy when checkpoints/ is another disk
        write_json(out_dir / "summary.json", summary)
        commit_outputs(out_dir, final_dir, tuple(sorted(OUTPUTS, key=lambda n: n in ("model.pt", "summary.json"))))
        remove_resume_state(ckpt_dir)  # it only serves to resume an unfinished run
    barrier()
    return summary


def write_epoch_logs(out_dir: Path, step_rows: list[dict], epoch_rows: list[dict], load_rows: list[dict]) -> None:
    write_csv(out_dir / "val_log.csv", pd.DataFrame(epoch_rows))
    write_csv(out_dir / "expert_load.csv", pd.DataFrame(
        load_rows, columns=["epoch", "task", "block", "expert", "share", "dropped_share", "assignments"]))
    plot_curves(pd.DataFrame(step_rows), pd.DataFrame(epoch_rows), out_dir / "curves.png")


def _brief(m: dict) -> dict:
    """The per-task numbers kept in checkpoints and summaries (no confusion matrix)."""
    return {k: m[k] for k in ("uar", "war", "loss", "n", "per_class_recall")}


def main(argv: list[str] | None = None) -> None:
    from s4d.stage import load_stage_params, stage_parser

    parser = stage_parser("Fine-tune the classifier jointly on static and dynamic data (S4D).\n\n"
                          "finetune.nproc_per_node=N runs N data-parallel processes (s4d.train.launch); a killed\n"
                          "or stopped run resumes from OUT/checkpoints when the same command runs again.")
    parser.add_argument("--out", default="artifacts/finetune", help="output folder (default: artifacts/finetune)")
    raw = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw)
    params = load_stage_params(args)
    if params.finetune.nproc_per_node > 1 and not under_launcher():
        sys.exit(relaunch("s4d.train.finetune", raw, params.finetune.nproc_per_node, params.launch))
    code = run_worker(lambda: finetune(params, Path(args.out)), report=lambda summary: print(json.dumps(
        {k: summary[k] for k in ("best_epoch", "best", "epochs_run", "wall_time_s")}, indent=2)),
        user_errors=(FinetuneError, CheckpointError, FileNotFoundError, InputError, OutOfSpace))
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
