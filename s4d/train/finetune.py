"""Joint fine-tuning: static (SFER, images) and dynamic (DFER, videos) steps through one shared backbone.

Each optimisation step is ONE task: a batch of videos for the dynamic head or a batch of images for the
static head. An epoch is one pass over the dynamic train set (ceil(n / batch_size) steps) plus
`round(steps * share / (1 - share))` static steps, shuffled into one order drawn from (seed, epoch).

Baselines come from params alone: `finetune.static_share=0` is video-only (no static head, no static data
read at all), `models.<profile>.moae.layers=0` is vanilla multi-task, the defaults are S4D.

The model is selected on the VALIDATION split of the dynamic manifest (carved from train with
`data.val_fraction` when the dataset has none). Test rows are dropped before anything else: no dataset is
ever built from them here.

Outputs (in `out_dir`): model.pt (best epoch), train_log.csv (per step), val_log.csv (per epoch),
expert_load.csv (per epoch, task, MoAE layer and expert), curves.png, init_report.txt, summary.json.
"""
from __future__ import annotations

import csv
import json
import math
import random
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
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from s4d.config import FinetuneConfig, Params, to_dict
from s4d.data.loaders import Augment, ClipDataset, ImageDataset, balanced_sampler, worker_init
from s4d.data.manifest import read_manifest
from s4d.models.checkpoint import CheckpointError, init_classifier, save_checkpoint
from s4d.models.classifier import S4DClassifier
from s4d.train.distributed import use_bf16
from s4d.train.metrics import (class_names, classification_metrics, save_figure, write_csv, write_json,
                               atomic_write_text)

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

    def rows(self, epoch: int) -> list[dict]:
        rows = []
        for task in TASKS:
            for i, load in enumerate(self.load.get(task, [])):
                if load is None:
                    continue
                total = float(load.sum())
                for expert, count in enumerate(load):
                    rows.append({"epoch": epoch, "task": task, "block": self.first_block + i, "expert": expert,
                                 "share": float(count) / total if total else 0.0,
                                 "dropped_share": self.dropped[task][i] / total if total else 0.0,
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


# ---------------------------------------------------------------------------------------------- main
def finetune(params: Params, out_dir: Path = Path("artifacts/finetune")) -> dict:
    """Fine-tune jointly (or video-only / vanilla, per params); returns the summary also written to
    `out_dir/summary.json`."""
    started = time.time()
    ft, cfg, data = params.finetune, params.model, params.data
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:  # a failed run must never leave a previous run's files beside its own
        (out_dir / name).unlink(missing_ok=True)

    random.seed(ft.seed)
    np.random.seed(ft.seed)  # timm Mixup draws lambda and boxes from numpy's global generator
    torch.manual_seed(ft.seed)
    device = pick_device()
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
    train_sets = {"dynamic": ClipDataset(train_rows["dynamic"], DATA_ROOT, size, frames, stride,
                                         augment=augment, seed=ft.seed)}
    val_sets = {"dynamic": ClipDataset(val_rows["dynamic"], DATA_ROOT, size, frames, stride)}
    if use_static:
        train_sets["static"] = ImageDataset(train_rows["static"], DATA_ROOT, size, augment=augment, seed=ft.seed)
        if not val_rows["static"].empty:
            val_sets["static"] = ImageDataset(val_rows["static"], DATA_ROOT, size, augment=None)
    draws = {task: EpochDraws(ds) for task, ds in train_sets.items()}
    batch = {"dynamic": ft.batch_size, "static": ft.image_batch_size}
    val_loaders = {task: loader(ds, ft.batch_size, data.workers, device) for task, ds in val_sets.items()}

    dynamic_steps = math.ceil(len(train_sets["dynamic"]) / ft.batch_size)
    static_steps = static_steps_for(dynamic_steps, ft.static_share)
    steps_per_epoch = dynamic_steps + static_steps

    # -------- model, optimiser, schedule
    model = S4DClassifier(cfg, len(names["dynamic"]), len(names["static"]) if use_static else 0)
    init_summary = initialise(model, ft.init)
    print(init_summary)
    atomic_write_text(out_dir / "init_report.txt", init_summary + "\n")
    model.to(device)
    lr = ft.base_lr * ft.batch_size / 256
    optimizer = build_optimizer(model, ft, lr)
    total_steps = ft.epochs * steps_per_epoch
    scheduler = CosineLRScheduler(optimizer, t_initial=total_steps + 1, lr_min=min(ft.min_lr, lr),
                                  warmup_t=round(ft.warmup_epochs * steps_per_epoch), warmup_lr_init=0.0,
                                  t_in_epochs=False)
    losses = {task: TaskLoss(ft, len(names[task])) for task in train_sets}
    expert_load = ExpertLoad(model)

    # -------- loop
    log_file = open(out_dir / "train_log.csv", "w", newline="")
    step_log = csv.DictWriter(log_file, fieldnames=TRAIN_LOG_COLUMNS)
    step_log.writeheader()
    step_rows: list[dict] = []
    epoch_rows: list[dict] = []
    load_rows: list[dict] = []
    best = {"metric": -math.inf, "epoch": 0, "val": None}
    stale, step, stopped_early = 0, 0, False
    try:
        for epoch in range(1, ft.epochs + 1):
            epoch_start = time.time()
            plan = step_plan(dynamic_steps, static_steps, ft.seed, epoch)
            iterators = {}
            for stream, task in enumerate(train_sets, start=1):
                draws[task].epoch = epoch
                count = plan.count(task) * batch[task]
                if task == "dynamic":
                    count = len(train_sets[task])  # one pass; the last batch may be short
                labels = train_sets[task].labels if data.balanced_sampling else None
                keys = epoch_draws(len(train_sets[task]), count, ft.seed, epoch, stream, labels)
                iterators[task] = iter(loader(draws[task], batch[task], data.workers, device, sampler=keys))

            model.train()
            expert_load.reset()
            epoch_losses: dict = defaultdict(list)
            tick = time.time()
            bar = progress(plan, desc=f"epoch {epoch}/{ft.epochs}")
            for task in bar:
                x, y = next(iterators[task])
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                x, target = losses[task].prepare(x, y)
                scheduler.step_update(step + 1)
                with autocast(device, bf16):
                    logits = model(x)
                task_loss = losses[task].criterion(logits.float(), target)
                balance = model.balance_loss().float().to(device)
                loss = task_loss + ft.balance_weight * balance
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"epoch {epoch} step {step + 1} ({task}): loss is {loss.item()}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = (float(torch.nn.utils.clip_grad_norm_(model.parameters(), ft.clip_grad))
                             if ft.clip_grad > 0 else math.nan)
                optimizer.step()
                step += 1
                expert_load.update(task)
                now = time.time()
                row = {"epoch": epoch, "step": step, "task": task, "loss": task_loss.item(),
                       "balance_loss": balance.item(), "total_loss": loss.item(),
                       "lr": max(g["lr"] for g in optimizer.param_groups), "grad_norm": grad_norm,
                       "batch": len(x), "clips_per_s": len(x) / max(now - tick, 1e-9)}
                tick = now
                step_log.writerow(row)
                log_file.flush()
                step_rows.append(row)
                epoch_losses[task].append(row["loss"])
                bar.set_postfix(task=task[:3], loss=f"{row['loss']:.3f}")

            # -------- validate, select, stop
            val = {}
            for task, val_loader in val_loaders.items():
                labels, probs = predict(model, val_loader, device, bf16)
                val[task] = task_metrics(labels, probs, names[task])
            metric = val["dynamic"][ft.select_metric]
            improved = metric > best["metric"]
            if improved:
                best = {"metric": metric, "epoch": epoch, "val": val}
                stale = 0
                save_checkpoint(out_dir / "model.pt", model, meta={
                    "epoch": epoch, "select_metric": ft.select_metric,
                    "val": {t: _brief(m) for t, m in val.items()},
                    "labels": names, "label_sets": {t: str(m["label_set"].iloc[0]) for t, m in manifests.items()},
                    "datasets": {t: getattr(data, t).reader for t in manifests},
                    "init": init_summary, "params": to_dict(params)})
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
            load_rows += expert_load.rows(epoch)
            verdict = "(best)" if improved else f"(no gain {stale}/{ft.patience})"
            print(f"epoch {epoch}: train loss {epoch_row['train_loss']:.4f}  val UAR {val['dynamic']['uar']:.4f} "
                  f"WAR {val['dynamic']['war']:.4f}  {verdict}", flush=True)

            write_csv(out_dir / "val_log.csv", pd.DataFrame(epoch_rows))
            write_csv(out_dir / "expert_load.csv", pd.DataFrame(
                load_rows, columns=["epoch", "task", "block", "expert", "share", "dropped_share", "assignments"]))
            plot_curves(pd.DataFrame(step_rows), pd.DataFrame(epoch_rows), out_dir / "curves.png")
            if stale >= ft.patience:
                stopped_early = epoch < ft.epochs
                break
    finally:
        log_file.close()

    summary = {
        "best_epoch": best["epoch"],
        "select_metric": ft.select_metric,
        "best": {t: _brief(m) for t, m in best["val"].items()},
        "epochs_run": len(epoch_rows),
        "stopped_early": stopped_early,
        "steps": step,
        "steps_per_epoch": {"dynamic": dynamic_steps, "static": static_steps},
        "wall_time_s": time.time() - started,
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
    write_json(out_dir / "summary.json", summary)
    return summary


def _brief(m: dict) -> dict:
    """The per-task numbers kept in checkpoints and summaries (no confusion matrix)."""
    return {k: m[k] for k in ("uar", "war", "loss", "n", "per_class_recall")}


def main(argv: list[str] | None = None) -> None:
    from s4d.stage import load_stage_params, stage_parser

    parser = stage_parser("Fine-tune the classifier jointly on static and dynamic data (S4D).")
    parser.add_argument("--out", default="artifacts/finetune", help="output folder (default: artifacts/finetune)")
    args = parser.parse_args(argv)
    params = load_stage_params(args)
    try:
        summary = finetune(params, Path(args.out))
    except (FinetuneError, CheckpointError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps({k: summary[k] for k in ("best_epoch", "best", "epochs_run", "wall_time_s")}, indent=2))


if __name__ == "__main__":
    main()
