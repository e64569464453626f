"""Checkpoints: our self-describing format, strict loading with a report, and published-format conversion.

Our file: {"format": "s4d-ops", "format_version", "kind": "mae"|"classifier", "model_config",
"num_dynamic_classes", "num_static_classes", "state_dict", "meta"}.

Published VideoMAE / MAE-DFER / S4D files differ from our names in three ways, converted here:
the attention bias is split into `attn.q_bias` + `attn.v_bias` (no k bias: a k bias adds the same value to
every logit of a query, so softmax ignores it and zero is exact), experts are one module each
(`moe_layer.experts.E.fc1.weight`) where we stack them, and the DFER head is called `head`. Pretraining
files prefix the encoder with `encoder.` and carry `decoder.*`, `encoder_to_decoder.*` and a top-level
`mask_token` (ours sits in the decoder, which uses it).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from s4d.config import ModelConfig, model_from_dict, to_dict
from s4d.models.classifier import S4DClassifier
from s4d.models.mae import MaskedAutoencoder

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
def atomic_torch_save(obj, path: str | Path) -> None:
    """Write to a temp file in the same folder, then rename: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict | None = None) -> None:
    kind = "mae" if isinstance(model, MaskedAutoencoder) else "classifier"
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
               "model_config": to_dict(model.cfg), "state_dict": model.state_dict(), "meta": meta or {}}
    if kind == "classifier":
        payload.update(num_dynamic_classes=model.num_dynamic_classes, num_static_classes=model.num_static_classes)
    atomic_torch_save(payload, path)


# ---------------------------------------------------------------------------------------------- read
def read_checkpoint(path: str | Path) -> dict:
    """Our format, checked; a published file comes back as {"kind": "published", "state_dict": ...}."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"{path} is not a readable torch checkpoint: {e}") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{path}: format version {obj.get('format_version')} is not supported "
                                  f"(this s4d-ops reads version {FORMAT_VERSION})")
        return obj
    return {"kind": "published", "state_dict": unwrap(obj, path)}


def unwrap(obj, path: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside a published file: top level, or under `model` / `module` / `state_dict`."""
    for key in ("model", "module", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: no state dict found (looked at the top level and under "
                              f"'model', 'module', 'state_dict')")
    return obj


def build_model(ckpt: dict) -> nn.Module:
    """Rebuild the model an s4d-ops checkpoint describes and load it strictly."""
    if ckpt.get("kind") not in ("mae", "classifier"):
        raise CheckpointError("build_model needs an s4d-ops checkpoint (a published file has no config)")
    cfg = model_from_dict(ckpt["model_config"])
    if ckpt["kind"] == "mae":
        model = MaskedAutoencoder(cfg)
    else:
        model = S4DClassifier(cfg, ckpt["num_dynamic_classes"], ckpt["num_static_classes"])
    load_strict(model, ckpt["state_dict"], source="checkpoint")
    return model


# --------------------------------------------------------------------------------------- conversion
def from_published(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Published VideoMAE / MAE-DFER / S4D names -> ours (prefixes such as `encoder.` are kept)."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in sd.items():
        if key.endswith("attn.q_bias"):
            prefix = key[: -len("q_bias")]
            v_bias = sd[prefix + "v_bias"]
            out[prefix + "qkv.bias"] = torch.cat([value, torch.zeros_like(value), v_bias])
        elif key.endswith("attn.v_bias"):
            continue
        elif m := re.match(r"(.*\.moe_layer\.experts)\.(\d+)\.(fc[12]\.(?:weight|bias))$", key):
            experts.setdefault(f"{m[1]}.{m[3]}", {})[int(m[2])] = value
        elif key.startswith("head."):
            out["head_dynamic." + key[len("head."):]] = value
        elif key == "mask_token":
            out["decoder.mask_token"] = value
        else:
            out[key] = value
    for key, per_expert in experts.items():
        out[key] = torch.stack([per_expert[e] for e in sorted(per_expert)])
    return out


def to_published(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names -> published ones (the inverse of from_published; the zero k bias is dropped)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith("attn.qkv.bias"):
            prefix, dim = key[: -len("qkv.bias")], value.shape[0] // 3
            out[prefix + "q_bias"], out[prefix + "v_bias"] = value[:dim].clone(), value[2 * dim:].clone()
        elif m := re.match(r"(.*\.moe_layer\.experts)\.(fc[12]\.(?:weight|bias))$", key):
            for e, tensor in enumerate(value):
                out[f"{m[1]}.{e}.{m[2]}"] = tensor.clone()
        elif key.startswith("head_dynamic."):
            out["head." + key[len("head_dynamic."):]] = value
        elif key == "decoder.mask_token":
            out["mask_token"] = value
        else:
            out[key] = value
    return out


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


def init_classifier(model: S4DClassifier, path: str | Path) -> LoadReport:
    """Initialise a classifier from a pretraining or classifier checkpoint, ours or published.

    From pretraining, heads, fc_norm and MoAE start fresh (MoAE outputs zero, so the network computes
    what the pretrained encoder computes). From a classifier, every weight must load, except the MoAE of
    a checkpoint that has none (vanilla -> S4D), and heads whose class count differs (reported).
    """
    ckpt = read_checkpoint(path)
    sd = ckpt["state_dict"] if ckpt["kind"] != "published" else from_published(ckpt["state_dict"])
    if ckpt["kind"] == "mae" or any(k.startswith("encoder.") for k in sd):
        sd = {k[len("encoder."):] if k.startswith("encoder.") else k: v for k, v in sd.items()}
        return load_strict(model, sd, f"pretraining checkpoint {path}", FRESH_FROM_PRETRAINING, PRETRAINING_ONLY)
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
    return load_strict(model, sd, f"classifier checkpoint {path}", fresh, ("pos_embed",))
