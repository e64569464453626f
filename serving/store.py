"""The BentoML model store side of serving: save a fine-tuned checkpoint as a BentoML model.

Contract (shared with the orchestration registry, `s4d/registry.py`):
- candidates are saved as `s4d-dfer`, the promoted model as `s4d-champion`;
- each holds our checkpoint file at `ref.path_of("model.pt")`;
- its BentoML `metadata` holds at least `metrics`, `params`, `data_version` and
  `labels: {"dynamic": [...], "static": [...]}`; BentoML `labels` (strings only) repeat the short ones.

The service loads `bentoml.models.BentoModel(os.environ.get("S4D_MODEL_TAG", "s4d-champion:latest"))`.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

CANDIDATE = "s4d-dfer"
CHAMPION = "s4d-champion"
MODEL_FILE = "model.pt"
DEFAULT_TAG = f"{CHAMPION}:latest"


def model_tag(bento_yaml: str | os.PathLike | None = None) -> str:
    """The model the service serves: $S4D_MODEL_TAG if set; inside a built bento (its `bento.yaml` given),
    the champion version the bento was built with (not a newer `latest` that the store may hold by now);
    else the champion's latest version."""
    explicit = os.environ.get("S4D_MODEL_TAG")
    if explicit:
        return explicit
    if bento_yaml is not None and Path(bento_yaml).is_file():
        import yaml

        info = yaml.safe_load(Path(bento_yaml).read_text()) or {}
        tags = [str(m.get("tag", "")) for m in info.get("models") or [] if isinstance(m, dict)]
        pinned = [t for t in tags if t.startswith(CHAMPION + ":")] or tags
        if pinned:
            return pinned[0]
    return DEFAULT_TAG


def checkpoint_metadata(checkpoint_path: str | os.PathLike) -> dict[str, Any]:
    """Metadata derived from a fine-tuned checkpoint: labels, validation metrics, params, model config.

    Raises ValueError for a file that is not an s4d-ops classifier checkpoint (so nothing unusable ever
    reaches the store)."""
    from s4d.models.checkpoint import build_model, read_checkpoint
    from serving.inference import label_names

    ckpt = read_checkpoint(checkpoint_path)
    if ckpt.get("kind") != "classifier":
        raise ValueError(f"{checkpoint_path}: a {ckpt.get('kind')!r} checkpoint, not a fine-tuned classifier")
    model = build_model(ckpt)  # loads strictly: a broken state dict fails here, not in the service
    meta = ckpt.get("meta") or {}
    params = meta.get("params") or {}
    return {
        "labels": label_names(meta, model.num_dynamic_classes, model.num_static_classes),
        "metrics": {"val": meta.get("val") or {}, "epoch": meta.get("epoch"),
                    "select_metric": meta.get("select_metric")},
        "params": params,
        "data_version": str(meta.get("data_version", "unknown")),
        "model_config": ckpt["model_config"],
        "num_classes": {"dynamic": model.num_dynamic_classes, "static": model.num_static_classes},
        "checkpoint_sha256": _sha256(checkpoint_path),
    }


def save_to_store(checkpoint_path: str | os.PathLike, name: str = CANDIDATE,
                  metadata: dict[str, Any] | None = None):
    """Copy a fine-tuned checkpoint into the BentoML model store as a new version of `name`.

    `metadata` (e.g. test metrics, params, data_version from the registry) is merged over what the
    checkpoint itself says (labels, validation metrics, params, model config); its `labels`, if given,
    must be {"dynamic": [...], "static": [...]}. Returns the new model's bentoml Tag.
    """
    import bentoml

    checkpoint_path = Path(checkpoint_path)
    merged = checkpoint_metadata(checkpoint_path)
    for key, value in (metadata or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "labels":
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    merged["data_version"] = str(merged.get("data_version", "unknown"))
    merged = _plain(merged)
    short = {"project": "s4d-ops", "data_version": merged["data_version"],
             "stage": "champion" if name == CHAMPION else "candidate"}
    with bentoml.models.create(name, metadata=merged, labels=short) as ref:
        shutil.copyfile(checkpoint_path, ref.path_of(MODEL_FILE))
    return ref.tag


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """A copy BentoML accepts as metadata: tuples -> lists, numpy/torch scalars -> Python numbers; BentoML
    refuses None, so None values are dropped from mappings and written as "null" inside lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return ["null" if v is None else _plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    if isinstance(value, Path):
        return str(value)
    return value


def build_bento(version: str | None = None, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """`bentoml build -f serving/bentofile.yaml <repo root>`: the bento packs the service, the s4d package
    and the served model (the champion unless $S4D_MODEL_TAG names another). Runs as a subprocess (the
    build imports the service module, which reads its settings and model tag from the environment).
    Returns the bento tag, e.g. "s4d_dfer:abc123". No container is built."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    exe = Path(sys.executable).with_name("bentoml")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "bentoml"]
    cmd += ["build", "-f", str(root / "serving" / "bentofile.yaml"), "-o", "tag", str(root)]
    if version:
        cmd += ["--version", version]
    full_env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "1", **(env or {})}
    out = subprocess.run(cmd, cwd=root, env=full_env, capture_output=True, text=True, timeout=timeout)
    tags = [line.split("__tag__:", 1)[1].strip() for line in out.stdout.splitlines() if "__tag__:" in line]
    if out.returncode or not tags:
        raise RuntimeError(f"bentoml build failed ({out.returncode}):\n{(out.stdout + out.stderr)[-3000:]}")
    return tags[-1]
