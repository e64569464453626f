"""The one rule for "same inputs, reuse the result": what a training result depends on.

`stage_inputs(params, stage)` lists, as flat `key: value` pairs named like params.yaml keys:
  - settings: the params sections the stage reads (SECTIONS), minus the performance knobs (KNOBS);
    `precision: auto` with the choice the machine makes (bf16 or fp32);
  - data: the prepared manifests (their bytes) and the name and size of every sample file they list (each
    frame of a frame folder; training stages: of the train and val rows only, test samples are never read;
    the unlabelled pool's manifests where pretraining reads them). Sizes, not modification times: the same
    data written again (`s4d generate` re-renders identical files) keeps its results; other pixels give
    other JPEG sizes;
  - code: the sha256 of the modules that compute the stage's result (CODE);
  - what the stage starts from: fine-tuning's `finetune.init` checkpoint by its sha256.

Performance knobs change speed or bookkeeping, never the numbers: loader workers, threads, the process
count of fine-tuning and evaluation (their batch sizes are global; `finetune.micro_batch=0` is resolved to
the chunk it gives, which does set the random draws), checkpoint cadence, kept checkpoints, launcher
timeouts. Pretraining's process count is a setting: its batch sizes are per process, so the world size sets
the global batch (and the ZeRO partitions a resume reads); it enters as `pretrain world size`.

Every cache of a training result uses this rule:
  - pretraining resume (s4d.train.pretrain.resume_settings): a checkpoint with other inputs is refused;
  - fine-tuning resume (s4d.train.finetune.run_inputs): the same;
  - the fold runner's finished folds (s4d.train.folds.fold_inputs);
  - the Prefect flow's pretraining reuse (flows/retrain.py pretrain_inputs);
  - the experiment grid's pretraining and run records (s4d.experiments.grid).
DVC decides when a pipeline stage re-runs from its own `deps` and `params` lists (dvc.yaml); those list the
same sections.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from s4d.config import Params

# Flat params keys that never change a result (see the module docstring).
KNOBS = frozenset({
    "data.workers", "data.prepared_dir",  # the manifests' contents count, not where they are
    "finetune.nproc_per_node", "finetune.checkpoint_every", "finetune.keep_last",
    "pretrain.nproc_per_node", "pretrain.checkpoint_every", "pretrain.keep_last",
    "launch.timeout_s", "launch.grace_s", "launch.socket_ifname",
})

# The params sections each stage's result depends on (the model is the profile's: params.model).
SECTIONS = {
    "pretrain": ("model", "data", "pretrain"),
    "finetune": ("model", "data", "finetune"),
    "evaluate": ("model", "data", "finetune", "evaluate"),
}

_PACKAGE = Path(__file__).resolve().parents[1]
# The modules whose code computes each stage's result (relative to the s4d package).
CODE = {
    "pretrain": ("models/*.py", "data/loaders.py", "train/pretrain.py", "train/distributed.py"),
    "finetune": ("models/*.py", "data/loaders.py", "train/finetune.py", "train/distributed.py"),
    "evaluate": ("models/*.py", "data/loaders.py", "train/finetune.py", "train/evaluate.py",
                 "train/distributed.py"),
}


class InputsError(ValueError):
    """An input the rule needs is missing (a manifest, a listed sample, the init checkpoint)."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def settings(params: Params, stage: str) -> dict[str, Any]:
    """The stage's params sections, flat, without the knobs. The model is named as params.yaml names it
    (`models.<profile>.*`), with the profile itself. `precision: auto` is keyed with the choice this machine makes
    ("auto (bf16)" / "auto (fp32)"): the same params give bf16 numbers on one CPU and fp32 on another."""
    out: dict[str, Any] = {"profile": params.profile}
    for section in SECTIONS[stage]:
        name = f"models.{params.profile}" if section == "model" else section
        # dataclasses.asdict: the plain values, ~100x faster than an OmegaConf round trip (grids call this often)
        out |= {f"{name}.{k}": v for k, v in flatten(dataclasses.asdict(getattr(params, section))).items()}
    out = {k: v for k, v in out.items() if k not in KNOBS}
    for key in ("pretrain.precision", "finetune.precision"):
        if out.get(key) == "auto":
            from s4d.train.distributed import use_bf16

            out[key] = f"auto ({'bf16' if use_bf16('auto') else 'fp32'})"
    return out


def data_digest(params: Params, splits: tuple[str, ...] = ("train", "val", "test"), pool: bool | None = None) -> str:
    """The prepared manifests' bytes and the name and size of every sample file of the rows in `splits`
    (training never reads test samples, so it never looks at them). A missing manifest counts as absent:
    the stage that needs it says so itself."""
    from s4d.data.manifest import read_manifest
    from s4d.data.prepare import pool_manifests

    h = hashlib.sha256()
    prepared = Path(params.data.prepared_dir)
    # The unlabelled pool's manifests count whole where pretraining reads them (pretrain.data pool or both;
    # `pool` None: decide by that); fine-tuning and evaluation never open them.
    if pool is None:
        pool = params.pretrain.data != "labelled"
    for manifest in [prepared / "dynamic.csv", prepared / "static.csv", *(pool_manifests(prepared) if pool else [])]:
        if not manifest.is_file():
            h.update(f"{manifest.stem}: absent\n".encode())
            continue
        h.update(manifest.read_bytes())
        rows = read_manifest(manifest)
        if manifest.stem in ("dynamic", "static"):
            rows = rows.loc[rows["split"].isin(splits)]
        for path in map(Path, rows["path"]):
            try:
                for file in sorted(path.iterdir()) if path.is_dir() else [path]:
                    h.update(f"{file.name}:{file.stat().st_size}\n".encode())
            except FileNotFoundError:
                raise InputsError(f"{path}, listed in {manifest}, does not exist: prepare again") from None
    return h.hexdigest()[:16]


def code_digest(stage: str) -> str:
    h = hashlib.sha256()
    for pattern in CODE[stage]:
        for path in sorted(_PACKAGE.glob(pattern)):
            h.update(path.relative_to(_PACKAGE).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def init_digest(init: str, pretrain_model: Path = Path("artifacts/pretrain/model.pt")) -> str:
    """finetune.init: 'scratch' as it is; a checkpoint ('pretrain': the pretraining's model.pt) by its sha256."""
    from s4d.io import sha256_file

    if init == "scratch":
        return init
    path = pretrain_model if init == "pretrain" else Path(init)
    if not path.is_file():
        raise InputsError(f"finetune.init {init!r}: no such checkpoint file {path}")
    return f"sha256:{sha256_file(path)[:16]}"


def stage_inputs(params: Params, stage: str, *, world_size: int = 1, data: str | None = None,
                 init: str | None = None, **extra: Any) -> dict[str, Any]:
    """What `stage`'s result depends on (the module docstring's rule). `data`: an already computed
    data_digest (it reads every sample's size once); `init`: an already known identity of the start
    checkpoint (else init_digest); `extra`: stage facts that must match too (a model's state-dict layout)."""
    inputs = settings(params, stage)
    training = ("train", "val")  # evaluation reads the test rows too
    inputs["data (manifests and sample sizes)"] = data or data_digest(
        params, training if stage in ("pretrain", "finetune") else (*training, "test"),
        pool=None if stage == "pretrain" else False)
    inputs[f"code ({stage})"] = code_digest(stage)
    if stage == "pretrain":
        inputs["pretrain world size"] = world_size
    else:
        inputs["finetune.micro_batch"] = params.finetune.micro_batch or f"0 (batch / {world_size} ranks)"
        inputs["finetune.init"] = init or init_digest(params.finetune.init)
    return inputs | extra


def inputs_key(inputs: dict[str, Any]) -> str:
    """A short digest of stage_inputs (for cache keys and stamps)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def changed_inputs(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`key: saved -> now` for every input that differs (a key on one side only counts)."""
    missing = object()
    lines = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key, missing), now.get(key, missing)
        if a != b:
            shown = ["(absent)" if v is missing else repr(v) for v in (a, b)]
            lines.append(f"{key}: {shown[0]} -> {shown[1]}")
    return lines
