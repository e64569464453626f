"""Test-set evaluation of a fine-tuned classifier: multi-view DFER (and SFER when the model has a static head).

Every test video gives `evaluate.clips` temporal clips x `evaluate.crops` spatial crops; the softmax
probabilities of the views are averaged. Images give `evaluate.crops` crops. With `data.transforms: official`
(the `paper` preset) frames are squashed to the model size, where every official crop is the whole frame: each
clip is computed once (the average over identical views is the same). Deterministic: model.eval() turns the
router noise and stochastic depth off.

Outputs (in `out_dir`): metrics.json, predictions.csv (`actual,predicted` label names, for the dvc plots
confusion template; predictions_static.csv for images), scores.csv (per sample probabilities),
confusion.png, routing.json (first-choice expert usage per task and MoAE layer, most frequent expert paths),
folds/fold_<k>.json (kept between runs) and folds_summary.json (mean and std over every fold file present).
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from s4d import precision
from s4d.config import Params
from s4d.data.loaders import ClipDataset, ImageDataset
from s4d.data.manifest import dataset_folders, read_manifest
from s4d.io import write_csv, write_json
from s4d.models.checkpoint import CheckpointError, build_model, read_checkpoint, trained_data
from s4d.models.classifier import S4DClassifier
from s4d.train.distributed import barrier, gather_objects, rank, use_bf16
from s4d.train.finetune import DATA_ROOT, pick_device, sharded_predict, task_metrics
from s4d.train.launch import relaunch, run_worker, under_launcher
from s4d.train.metrics import class_names, fold_file, plot_confusion, predictions_table, summarise_folds

TOP_PATHS = 20
# Files of one evaluation; removed first so a run never leaves a previous run's files beside its own.
# folds/ is deliberately not among them: it accumulates over runs (one per fold).
OUTPUTS = ("metrics.json", "predictions.csv", "predictions_static.csv", "scores.csv", "scores_static.csv",
           "confusion.png", "confusion_static.png", "routing.json", "folds_summary.json")
SUFFIX = {"dynamic": "", "static": "_static"}


class EvaluateError(ValueError):
    """A checkpoint / manifest mismatch or missing test data (reported without a traceback)."""


class RoutingRecorder:
    """Accumulates, over a test set, each MoAE layer's first-choice expert per token: usage shares overall
    and per true class, and the most frequent paths (the tuple of first choices across the MoAE layers
    of one token; tokens stay aligned across layers)."""

    def __init__(self, model: S4DClassifier, names: list[str]):
        self.layers = model.moae_layers()
        self.first_block = model.cfg.depth - len(self.layers)
        self.experts = model.cfg.moae.experts if self.layers else 0
        self.names = names
        self.counts = np.zeros((len(self.layers), self.experts), dtype=np.int64)
        self.per_class = np.zeros((len(self.layers), len(names), self.experts), dtype=np.int64)
        self.paths: Counter = Counter()
        self.tokens = 0

    def update(self, labels: torch.Tensor, views: int) -> None:
        if not self.layers:
            return
        batch = len(labels)
        top1 = torch.stack([layer.top1.cpu() for layer in self.layers], dim=1)  # (tokens, layers)
        self.tokens += top1.shape[0]
        per_sample = F.one_hot(top1.view(batch, -1, len(self.layers)), self.experts).sum(dim=1)  # (B, L, E)
        for i in range(len(self.layers)):
            self.counts[i] += np.bincount(top1[:, i].numpy(), minlength=self.experts)
        np.add.at(self.per_class, (slice(None), labels.numpy()), per_sample.numpy().transpose(1, 0, 2))
        paths, counts = torch.unique(top1, dim=0, return_counts=True)
        self.paths.update({tuple(p): int(c) for p, c in zip(paths.tolist(), counts.tolist())})

    def reduce(self) -> None:
        """Sum the counts of every rank's shard (a collective: every rank calls it)."""
        parts = gather_objects((self.counts, self.per_class, self.paths, self.tokens))
        self.counts = sum(p[0] for p in parts)
        self.per_class = sum(p[1] for p in parts)
        self.paths = sum((p[2] for p in parts), Counter())
        self.tokens = sum(p[3] for p in parts)

    def summary(self) -> dict:
        def shares(counts: np.ndarray) -> list[float]:
            total = counts.sum()
            return (counts / total).tolist() if total else [0.0] * len(counts)

        layers = [{"block": self.first_block + i, "top1_share": shares(self.counts[i]),
                   "per_class_top1_share": {name: shares(self.per_class[i, c]) for c, name in enumerate(self.names)
                                            if self.per_class[i, c].sum()}}
                  for i in range(len(self.layers))]
        paths = [{"path": list(path), "tokens": count, "share": count / self.tokens}
                 for path, count in self.paths.most_common(TOP_PATHS)]
        return {"tokens": self.tokens, "distinct_paths": len(self.paths), "layers": layers, "top_paths": paths}


def check_media(rows: pd.DataFrame, what: str) -> None:
    """Fail before any forward pass, naming the test samples whose files are missing."""
    missing = [p for p in rows["path"] if not (DATA_ROOT / p).exists()]
    if missing:
        raise FileNotFoundError(f"{what}: {len(missing)} of {len(rows)} test sample(s) missing under "
                                f"{DATA_ROOT.resolve()}, e.g. {', '.join(missing[:5])}")


def fold_of(rows: pd.DataFrame, default: int) -> int:
    folds = sorted(set(rows["fold"].tolist()))
    return int(folds[0]) if len(folds) == 1 else int(default)


def evaluate(params: Params, checkpoint: Path = Path("artifacts/finetune/model.pt"),
             out_dir: Path = Path("artifacts/eval")) -> dict:
    """Evaluate `checkpoint` on the test splits; returns the dict written to `out_dir/metrics.json`.

    Under a launcher with several ranks, the samples are split over the ranks and gathered: the same
    metrics as one process; rank 0 writes the files."""
    cfg, data = params.evaluate, params.data
    out_dir, checkpoint = Path(out_dir), Path(checkpoint)
    main_rank = rank() == 0
    if main_rank:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:
            (out_dir / name).unlink(missing_ok=True)
    barrier()

    ckpt = read_checkpoint(checkpoint)
    if ckpt["kind"] != "classifier":
        raise EvaluateError(f"{checkpoint} is a {ckpt['kind']} checkpoint; evaluation needs a fine-tuned "
                            f"classifier (the finetune stage's model.pt, or a published file after `s4d import`)")
    model = build_model(ckpt)
    trained_labels = ckpt.get("meta", {}).get("labels", {})
    device = pick_device()
    bf16 = use_bf16(params.finetune.precision)
    model.to(device).eval()
    precision.configure(model, model.cfg, bf16, train=False, device=device)  # fused or manual attention, measured
    # Clips as the model was trained (frame count and stride from the checkpoint): frames spaced otherwise are
    # another task. Files that do not record a stride (published checkpoints) take params'.
    size, frames = model.cfg.img_size, model.cfg.num_frames
    stride = int(trained_data(ckpt).get("frame_stride") or data.frame_stride)
    if stride != data.frame_stride and main_rank:
        print(f"note: frames {stride} apart, as {checkpoint} was trained (params say data.frame_stride="
              f"{data.frame_stride})")

    prepared = Path(data.prepared_dir)
    heads = {"dynamic": model.num_dynamic_classes, "static": model.num_static_classes}
    results: dict = {}
    routing: dict = {"experts": model.cfg.moae.experts if model.moae_layers() else 0,
                     "top_k": model.cfg.moae.top_k, "tasks": {}}
    fold = data.dynamic.fold
    for task in ("dynamic", "static"):
        if not heads[task]:
            continue
        manifest = read_manifest(prepared / f"{task}.csv")
        names = class_names(manifest)
        if len(names) != heads[task]:
            raise EvaluateError(f"{task}: the checkpoint's head has {heads[task]} classes but "
                                f"{prepared / (task + '.csv')} uses {len(names)} ({', '.join(names)})")
        if trained_labels.get(task) and list(trained_labels[task]) != names:
            raise EvaluateError(f"{task}: the checkpoint was trained on classes {trained_labels[task]} but the "
                                f"manifest's are {names}")
        test = manifest[manifest["split"] == "test"]
        if test.empty:
            if task == "dynamic":
                raise EvaluateError(f"{prepared / 'dynamic.csv'} has no test rows")
            print(f"note: {prepared / 'static.csv'} has no test rows; static head not evaluated")
            continue
        if task == "dynamic":
            fold = fold_of(test, data.dynamic.fold)
        check_media(test, f"{task} ({prepared / (task + '.csv')})")
        if task == "dynamic":
            dataset = ClipDataset(test, DATA_ROOT, size, frames, stride, augment=None, clips=cfg.clips,
                                  crops=cfg.crops, allowed=dataset_folders(data), transforms=data.transforms)
        else:
            dataset = ImageDataset(test, DATA_ROOT, size, augment=None, crops=cfg.crops, allowed=dataset_folders(data),
                                   transforms=data.transforms)
        recorder = RoutingRecorder(model, names)
        labels, probs = sharded_predict(model, dataset, cfg.batch_size, data.workers, device, bf16, recorder.update)
        recorder.reduce()
        predicted = probs.argmax(axis=1)
        metrics = task_metrics(labels, probs, names)
        results[task] = {k: metrics[k] for k in ("uar", "war", "per_class_recall", "n", "loss")}
        routing["tasks"][task] = recorder.summary()
        if not main_rank:
            continue

        suffix = SUFFIX[task]
        write_csv(out_dir / f"predictions{suffix}.csv", predictions_table(labels, predicted, names))
        scores = pd.DataFrame({"id": test["id"].to_numpy(), "actual": [names[i] for i in labels],
                               "predicted": [names[i] for i in predicted]})
        for c, name in enumerate(names):
            scores[f"p_{name}"] = probs[:, c]
        write_csv(out_dir / f"scores{suffix}.csv", scores)
        plot_confusion(np.asarray(metrics["confusion"]), names, out_dir / f"confusion{suffix}.png",
                       title=f"{task} test: UAR {metrics['uar']:.3f}  WAR {metrics['war']:.3f}  (n={metrics['n']})")
        squashed = " squashed, crops coincide" if data.transforms == "official" else ""
        print(f"{task}: UAR {metrics['uar']:.4f}  WAR {metrics['war']:.4f}  (n={metrics['n']}, "
              f"{cfg.clips if task == 'dynamic' else 1}x{cfg.crops} views{squashed})")

    report = {**results, "fold": fold, "dataset": data.dynamic.reader, "checkpoint": str(checkpoint),
              "views": {"clips": cfg.clips, "crops": cfg.crops},
              "inputs": {"transforms": data.transforms, "frame_stride": stride}}
    if "static" in results:
        report["static_dataset"] = data.static.reader
    if main_rank:
        write_json(out_dir / "metrics.json", report)
        write_json(out_dir / "routing.json", routing)
        write_json(fold_file(out_dir / "folds", fold), report)
        write_json(out_dir / "folds_summary.json", summarise_folds(out_dir / "folds", data.dynamic.reader))
    barrier()
    return report


def main(argv: list[str] | None = None) -> None:
    from s4d.stage import load_stage_params, stage_parser

    parser = stage_parser("Evaluate a fine-tuned classifier on the test splits (multi-view).")
    parser.add_argument("--checkpoint", default="artifacts/finetune/model.pt",
                        help="classifier checkpoint (default: artifacts/finetune/model.pt)")
    parser.add_argument("--out", default="artifacts/eval", help="output folder (default: artifacts/eval)")
    raw = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw)
    params = load_stage_params(args)
    if params.finetune.nproc_per_node > 1 and not under_launcher():  # the test views split over N processes
        sys.exit(relaunch("s4d.train.evaluate", raw, params.finetune.nproc_per_node, params.launch))
    code = run_worker(lambda: evaluate(params, Path(args.checkpoint), Path(args.out)),
                        report=lambda report: print(json.dumps(
                            {t: {k: report[t][k] for k in ("uar", "war", "n")} for t in ("dynamic", "static")
                             if t in report}, indent=2)),
                        user_errors=(EvaluateError, CheckpointError, FileNotFoundError))
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
