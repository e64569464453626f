"""Checkpoints: our self-describing format, strict loading with a report, and published files.

Our file: {"format": "s4d-ops", "format_version", "kind": "mae"|"classifier", "model_config",
"num_dynamic_classes", "num_static_classes", "state_dict", "meta"}.

Published VideoMAE / MAE-DFER / S4D files are read and converted by official.py (`s4d import SRC DST` writes
the converted model in our format). Loading compares the stored model config with the model it goes into:
fixed position tables are not in the state dict, so only the config shows which one the weights learned with.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from s4d.config import ModelConfig, model_from_dict, to_dict
from s4d.io import save_torch
from s4d.models.classifier import S4DClassifier
from s4d.models.mae import MaskedAutoencoder
from s4d.models.official import Converted, Published, PublishedFormatError, convert, load_file, read_published

FORMAT = "s4d-ops"
FORMAT_VERSION = 1

# Weights a classifier may start without when initialised from a pretraining (MAE) checkpoint.
FRESH_FROM_PRETRAINING = ("fc_norm.", "head_dynamic.", "head_static.", ".moe_layer.")
# Weights only the MAE needs; a classifier ignores them.
PRETRAINING_ONLY = ("decoder.", "encoder_to_decoder.", "norm.", "pos_embed")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model it is loaded into."""


@dataclass
class LoadReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)  # model weights the checkpoint did not provide (allowed)
    ignored: list[str] = field(default_factory=list)  # checkpoint entries the model does not use (allowed)

    def summary(self) -> str:
        lines = [f"{self.source}: loaded {len(self.loaded)} tensors"]
        if self.fresh:
            lines.append(f"  initialised fresh ({len(self.fresh)}): {_compact(self.fresh)}")
        if self.ignored:
            lines.append(f"  ignored from checkpoint ({len(self.ignored)}): {_compact(self.ignored)}")
        return "\n".join(lines)


def _compact(keys: list[str], limit: int = 8) -> str:
    groups = sorted({re.sub(r"\.\d+\.", ".N.", k) for k in keys})
    return ", ".join(groups[:limit]) + (f" ... (+{len(groups) - limit} more)" if len(groups) > limit else "")


# ---------------------------------------------------------------------------------------------- save
def save_checkpoint(path: str | Path, model: nn.Module, meta: dict | None = None) -> None:
    kind = "mae" if isinstance(model, MaskedAutoencoder) else "classifier"
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
               "model_config": to_dict(model.cfg), "state_dict": model.state_dict(), "meta": meta or {}}
    if kind == "classifier":
        payload.update(num_dynamic_classes=model.num_dynamic_classes, num_static_classes=model.num_static_classes)
    save_torch(payload, path)  # temp file + rename: a crash never leaves half a checkpoint


# ---------------------------------------------------------------------------------------------- read
def read_checkpoint(path: str | Path) -> dict:
    """Our format, checked; a published file comes back as {"kind": "published", "published": Published}."""
    path = Path(path)
    try:
        obj = load_file(path)
        if isinstance(obj, dict) and obj.get("format") == FORMAT:
            if obj.get("format_version") != FORMAT_VERSION:
                raise CheckpointError(f"{path}: format version {obj.get('format_version')} is not supported "
                                      f"(this s4d-ops reads version {FORMAT_VERSION})")
            return obj
        return {"kind": "published", "published": read_published(path, obj)}
    except PublishedFormatError as e:
        raise CheckpointError(str(e)) from None


def convert_published(published: Published) -> Converted:
    try:
        return convert(published)
    except PublishedFormatError as e:
        raise CheckpointError(str(e)) from None


def trained_data(ckpt: dict) -> dict:
    """The `data` params a fine-tuned checkpoint was trained with (frame stride, face size, ...), which travel
    in its meta; {} for files that do not record them (imported published checkpoints)."""
    return ((ckpt.get("meta") or {}).get("params") or {}).get("data") or {}


def build_model(ckpt: dict) -> nn.Module:
    """Rebuild the model an s4d-ops checkpoint describes and load it strictly."""
    if ckpt.get("kind") not in ("mae", "classifier"):
        raise CheckpointError("build_model needs an s4d-ops checkpoint (a published file has no config: "
                              "`s4d import SRC DST` converts it)")
    cfg = model_from_dict(ckpt["model_config"])
    if ckpt["kind"] == "mae":
        model = MaskedAutoencoder(cfg)
    else:
        model = S4DClassifier(cfg, ckpt["num_dynamic_classes"], ckpt["num_static_classes"])
    load_strict(model, ckpt["state_dict"], source="checkpoint")
    return model


def model_from_published(converted: Converted, source: str) -> tuple[nn.Module, LoadReport]:
    """The model a converted published file describes, every tensor loaded (nothing fresh, nothing extra)."""
    if converted.kind == "mae":
        model = MaskedAutoencoder(converted.cfg)
    else:
        model = S4DClassifier(converted.cfg, converted.num_dynamic_classes, converted.num_static_classes)
    report = load_strict(model, converted.state_dict, source)
    report.ignored = [f"{k} ({why})" for k, why in converted.ignored.items()]
    return model, report


def load_model(path: str | Path) -> nn.Module:
    """The public way to get a model in eval mode from any checkpoint our tools write (a classifier or an
    MAE), or from a published VideoMAE / S4D file (converted as `s4d import` does)."""
    ckpt = read_checkpoint(path)
    if ckpt["kind"] == "published":
        model, _ = model_from_published(convert_published(ckpt["published"]), f"published checkpoint {path}")
    else:
        model = build_model(ckpt)
    return model.eval()


# Training args worth keeping with an imported model (what it was trained on and as what).
KEPT_ARGS = ("model", "nb_classes", "input_size", "num_frames", "sampling_rate", "tubelet_size", "use_mean_pooling",
             "moe_type", "moe_layers", "num_experts", "top_k", "capacity_factor", "mode", "data_set",
             "sfer_data_set")


def import_published(src: str | Path, dst: str | Path, labels: dict | None = None) -> tuple[Converted, LoadReport]:
    """Convert a published file and write it in our format at `dst` (atomically). `labels`: class names per
    task ({"dynamic": [...], "static": [...]}) kept in meta for evaluation and serving."""
    ckpt = read_checkpoint(src)
    if ckpt["kind"] != "published":
        raise CheckpointError(f"{src} is already an s4d-ops checkpoint; nothing to import")
    published = ckpt["published"]
    converted = convert_published(published)
    model, report = model_from_published(converted, str(src))
    meta = {"imported_from": str(src), "architecture": converted.architecture, "config_sources": converted.sources,
            "args": {k: published.args[k] for k in KEPT_ARGS if k in published.args}}
    if labels:
        meta["labels"] = labels
    save_checkpoint(dst, model, meta=meta)
    return converted, report


# --------------------------------------------------------------------------------------------- load
def load_strict(model: nn.Module, sd: dict[str, torch.Tensor], source: str,
                may_be_fresh: tuple[str, ...] = (), may_ignore: tuple[str, ...] = ()) -> LoadReport:
    """Load every tensor or fail naming the keys. `may_be_fresh` / `may_ignore` are key prefixes (or
    infixes starting with '.') of model weights the checkpoint may lack, and of checkpoint entries the model
    may not use; both are listed in the report, never silent."""

    def matches(key: str, patterns: tuple[str, ...]) -> bool:
        return any(key.startswith(p) or (p.startswith(".") and p in key) for p in patterns)

    own = model.state_dict()
    report = LoadReport(source)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    bad_missing = [k for k in missing if not matches(k, may_be_fresh)]
    bad_unexpected = [k for k in unexpected if not matches(k, may_ignore)]
    if bad_missing or bad_unexpected:
        raise CheckpointError(f"{source} does not fit the model:\n"
                              f"  missing ({len(bad_missing)}): {_compact(bad_missing)}\n"
                              f"  unexpected ({len(bad_unexpected)}): {_compact(bad_unexpected)}")
    for key in own:
        if key in sd and sd[key].shape != own[key].shape:
            raise CheckpointError(f"{source}: {key} has shape {tuple(sd[key].shape)} in the checkpoint but "
                                  f"{tuple(own[key].shape)} in the model")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    report.loaded = [k for k in own if k in sd]
    report.fresh, report.ignored = missing, unexpected
    return report


# The config fields that decide what a weight means without showing in its shape (the fixed position table
# is a non-persistent buffer, the head count splits qkv, frames and image size pick the table's rows).
COMPARED = ("pos_embed", "img_size", "patch_size", "num_frames", "tubelet_size", "stem", "embed_dim", "depth",
            "num_heads")


def check_config(stored: ModelConfig, model: ModelConfig, source: str, pooled: bool) -> None:
    """Refuse weights trained under another config, naming the first key that differs."""
    for key in COMPARED + (("pool",) if pooled else ()):
        ours, theirs = getattr(model, key), getattr(stored, key)
        if ours != theirs:
            raise CheckpointError(f"{source} was trained with {key}={theirs} but the model has {key}={ours}: "
                                  f"set models.<profile>.{key}: {theirs}")


def init_classifier(model: S4DClassifier, path: str | Path) -> LoadReport:
    """Initialise a classifier from a pretraining or classifier checkpoint, ours or published (converted as
    `s4d import` does); the stored config must match the model's (check_config).

    From pretraining, heads, fc_norm and MoAE start fresh (MoAE outputs zero, so the network computes
    what the pretrained encoder computes). From a classifier, every weight must load, except the MoAE of
    a checkpoint that has none (vanilla -> S4D), and heads whose class count differs (reported).
    """
    ckpt = read_checkpoint(path)
    if ckpt["kind"] == "published":
        converted = convert_published(ckpt["published"])
        kind, stored, sd = converted.kind, converted.cfg, converted.state_dict
        what = f"published {converted.architecture} checkpoint {path}"
    else:
        kind, stored, sd = ckpt["kind"], model_from_dict(ckpt["model_config"]), ckpt["state_dict"]
        what = f"{'pretraining' if kind == 'mae' else 'classifier'} checkpoint {path}"
    check_config(stored, model.cfg, what, pooled=kind == "classifier")
    if kind == "mae":
        sd = {k[len("encoder."):] if k.startswith("encoder.") else k: v for k, v in sd.items()}
        return load_strict(model, sd, what, FRESH_FROM_PRETRAINING, PRETRAINING_ONLY)
    fresh: tuple[str, ...] = ()
    if not any(".moe_layer." in k for k in sd):
        fresh += (".moe_layer.",)
    own = model.state_dict()
    for head in ("head_dynamic.", "head_static."):
        keys = [k for k in sd if k.startswith(head)]
        if any(k not in own or own[k].shape != sd[k].shape for k in keys):
            sd = {k: v for k, v in sd.items() if not k.startswith(head)}
            fresh += (head,)
    if not any(k.startswith("head_static.") for k in sd):
        fresh += ("head_static.",)
    return load_strict(model, sd, what, fresh)
