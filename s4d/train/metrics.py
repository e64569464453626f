"""Pure metric functions of the evaluation (and the fine-tuning validation), plus their plots and tables.

UAR (unweighted average recall) is the mean of the per-class recalls over the classes that occur in the
true labels; WAR (weighted average recall) is plain accuracy. Confusion matrices have the true class in
rows and the predicted class in columns.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from s4d.data.labels import LABEL_SETS
from s4d.io import read_json, save_figure

ADHOC_PREFIX = "folder:"


# ------------------------------------------------------------------------------------------- labels
def names_of(label_set: str) -> list[str]:
    """Class names of a LABEL_SETS key, or of an ad-hoc `folder:a,b,c` key (the names after the colon)."""
    if label_set in LABEL_SETS:
        return list(LABEL_SETS[label_set])
    if label_set.startswith(ADHOC_PREFIX) and len(label_set) > len(ADHOC_PREFIX):
        return label_set[len(ADHOC_PREFIX):].split(",")
    raise KeyError(f"unknown label set {label_set!r}: not a key of LABEL_SETS ({', '.join(LABEL_SETS)}) "
                   f"nor an ad-hoc '{ADHOC_PREFIX}a,b,c' key")


def class_names(manifest: pd.DataFrame) -> list[str]:
    """The class names of a manifest's (single) label set, by label index; the class count is their number.

    Fails if the manifest mixes label sets or holds a label outside the set, so a head is never sized
    from a wrong set.
    """
    sets = sorted(set(manifest["label_set"]))
    if len(sets) != 1:
        raise ValueError(f"a manifest must use exactly one label set, found {sets or 'none'}")
    names = names_of(sets[0])
    labels = manifest["label"].to_numpy()
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(f"labels {sorted(set(labels[(labels < 0) | (labels >= len(names))].tolist()))} are "
                         f"outside label set {sets[0]!r} ({len(names)} classes)")
    return names


# ------------------------------------------------------------------------------------------ metrics
def confusion_matrix(actual: Sequence[int], predicted: Sequence[int], num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts; row = true class, column = predicted class."""
    actual, predicted = np.asarray(actual, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    if actual.shape != predicted.shape:
        raise ValueError(f"actual and predicted differ in length: {actual.shape} vs {predicted.shape}")
    for what, values in (("actual", actual), ("predicted", predicted)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{what} labels must be in [0, {num_classes}), got {values.min()}..{values.max()}")
    return np.bincount(actual * num_classes + predicted, minlength=num_classes ** 2).reshape(num_classes,
                                                                                         num_classes)


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """Recall per class from a confusion matrix; NaN for a class absent from the true labels."""
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def uar(cm: np.ndarray) -> float:
    """Mean recall over the classes present in the true labels."""
    recall = per_class_recall(cm)
    present = ~np.isnan(recall)
    return float(recall[present].mean()) if present.any() else float("nan")


def war(cm: np.ndarray) -> float:
    """Accuracy (recall weighted by class support)."""
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def classification_metrics(actual: Sequence[int], predicted: Sequence[int], names: Sequence[str]) -> dict:
    """{"uar", "war", "per_class_recall": {name: recall or None (class absent)}, "n", "confusion"}."""
    cm = confusion_matrix(actual, predicted, len(names))
    recall = per_class_recall(cm)
    return {
        "uar": uar(cm),
        "war": war(cm),
        "per_class_recall": {name: (None if math.isnan(r) else float(r)) for name, r in zip(names, recall)},
        "n": int(cm.sum()),
        "confusion": cm.tolist(),
    }


def mean_std(values: Iterable[float]) -> dict:
    """{"mean", "std", "n"}: std is the sample standard deviation (ddof=1), 0 for a single value."""
    v = np.asarray(list(values), dtype=np.float64)
    if not v.size:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


# -------------------------------------------------------------------------------------------- folds
def fold_file(folds_dir: Path, fold: int) -> Path:
    return Path(folds_dir) / f"fold_{fold}.json"


def summarise_folds(folds_dir: Path, dataset: str | None = None) -> dict:
    """Mean and std of UAR/WAR per task over every `fold_<k>.json` in `folds_dir` (of `dataset`, if given).

    Files of other datasets are listed under "skipped", never averaged in.
    """
    folds_dir = Path(folds_dir)
    files = sorted(folds_dir.glob("fold_*.json"), key=lambda p: (len(p.stem), p.stem))
    used, skipped = [], []
    for path in files:
        record = read_json(path)
        if dataset is not None and record.get("dataset") != dataset:
            skipped.append({"file": path.name, "dataset": record.get("dataset")})
            continue
        used.append(record)
    summary: dict[str, Any] = {"dataset": dataset, "folds": [r.get("fold") for r in used]}
    for task in ("dynamic", "static"):
        records = [r[task] for r in used if isinstance(r.get(task), dict)]
        if not records:
            continue
        summary[task] = {}
        for metric in ("uar", "war"):
            stats = mean_std(r[metric] for r in records)
            stats["values"] = [r[metric] for r in records]
            summary[task][metric] = stats
    if skipped:
        summary["skipped"] = skipped
    return summary


# ------------------------------------------------------------------------------------------- output
def predictions_table(actual: Sequence[int], predicted: Sequence[int], names: Sequence[str]) -> pd.DataFrame:
    """`actual,predicted` as label names (the input of the dvc plots confusion template)."""
    return pd.DataFrame({"actual": [names[i] for i in actual], "predicted": [names[i] for i in predicted]})


def plot_confusion(cm: np.ndarray, names: Sequence[str], path: Path, title: str = "") -> None:
    """Counts in the cells, colours normalised per row (recall), class names on both axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    support = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, support, out=np.zeros(cm.shape, dtype=np.float64), where=support > 0)
    size = max(4.0, 0.6 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
