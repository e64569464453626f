"""Champion registry in the BentoML model store.

    python -m s4d.registry list                 # candidates and the champion history (current marked)
    python -m s4d.registry show [TAG]           # the current champion (or any model) with its lineage
    python -m s4d.registry promote TAG [--build] [--reason TEXT]   # make a candidate the champion
    python -m s4d.registry rollback [--build]   # back to the champion before the current one

Candidates are saved as `s4d-dfer` (`save_to_store`), with metadata: metrics, params, data version, gate
decision. The champion is the model `s4d-champion`: each promotion (and each rollback) adds a
new version holding a copy of the candidate's files, labelled and annotated with the candidate's metrics,
params and data version, so `s4d-champion:latest` is always what should serve, and the store keeps the
full history. A champion version records the champions below it (`stack_below`): rollback restores the
top of that stack as a new version, so a second rollback goes one further back.

Each version holds our checkpoint file at `model.pt`; its BentoML `metadata` holds at least `metrics`,
`params`, `data_version` (one line), `labels: {"dynamic": [...], "static": [...]}`, `model_config` and
`checkpoint_sha256`; BentoML `labels` (strings only) repeat the short ones. The service serves
`model_tag()`.

`--build` also rebuilds the bento for the new champion (`s4d.bento.build_bento`). A file lock in the store
serialises promotions. `BENTOML_HOME` picks the store.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from s4d.bento import BentoBuildError, build_bento
from s4d.io import sha256_file, to_json, write_json
from s4d.locks import file_lock

CANDIDATE = "s4d-dfer"
CHAMPION = "s4d-champion"
MODEL_FILE = "model.pt"  # the checkpoint inside a saved version
DEFAULT_TAG = f"{CHAMPION}:latest"
CHECKPOINT_SUFFIXES = (".pt", ".pth")
BENTOML_FILES = ("model.yaml",)  # written by bentoml itself for each version: never copied
BENTO_RECORD = Path("artifacts/package/bento.json")  # what was built last (package stage, --build)


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown tag, nothing to roll back to)."""


@dataclass
class ModelRecord:
    """One version of a candidate or champion, as the registry reads it from the store."""
    tag: str
    name: str
    created: str
    path: str
    checkpoint: Optional[str]  # the checkpoint file inside the model folder
    labels: dict
    metadata: dict
    # champion-only (read from metadata)
    revision: int = 0
    action: str = ""  # promote | rollback
    source: str = ""  # the candidate tag this champion's files came from
    stack_below: list = field(default_factory=list)

    @property
    def metrics(self) -> dict:
        return self.metadata.get("metrics") or {}

    @property
    def checkpoint_sha256(self) -> Optional[str]:
        return self.metadata.get("checkpoint_sha256")

    @property
    def data_version(self) -> dict:
        """The structured data version (`data_lineage`); `metadata["data_version"]` is its one-line form."""
        lineage = self.metadata.get("data_lineage")
        if isinstance(lineage, dict):
            return lineage
        dv = self.metadata.get("data_version")
        return {"id": dv} if dv else {}

    def brief(self) -> dict:
        dyn = self.metrics.get("dynamic") or {}
        return {"tag": self.tag, "created": self.created, "revision": self.revision or None,
                "action": self.action or None, "source": self.source or None,
                "uar": dyn.get("uar"), "war": dyn.get("war"), "data": self.data_version.get("id")}


# ------------------------------------------------------------------------------------------ the store
def _store_folder() -> Path:
    """The model store's folder: the one place s4d reaches into BentoML internals. BentoML 1.4 has no public
    API for it (bentoml.models.list raises on a version another process is still copying in, and offers
    no folder for a lock file), and the folder follows BENTOML_HOME or BentoML's config, so it is read
    from BentoML rather than computed here."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    return Path(BentoMLContainer.model_store.get()._path)


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """One promotion / rollback at a time (flock on a file beside the model store)."""
    with file_lock(_store_folder() / f".{CHAMPION}.lock"):
        yield


def _checkpoint_in(path: Path, metadata: dict) -> Optional[Path]:
    named = metadata.get("checkpoint_file")
    if named and (path / named).is_file():
        return path / named
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    return found[0] if found else None


def _record(model) -> ModelRecord:
    meta = dict(model.info.metadata or {})
    path = Path(model.path)
    ckpt = _checkpoint_in(path, meta)
    created = model.info.creation_time
    return ModelRecord(tag=str(model.tag), name=model.tag.name, created=created.isoformat(), path=str(path),
                       checkpoint=str(ckpt) if ckpt else None, labels=dict(model.info.labels or {}), metadata=meta,
                       revision=int(meta.get("revision", 0) or 0), action=str(meta.get("action", "")),
                       source=str(meta.get("source", "")), stack_below=list(meta.get("stack_below") or []))


def _list(name: str) -> list[ModelRecord]:
    """Every complete version of `name` (a version still being copied in by another process is skipped)."""
    import bentoml
    from bentoml.exceptions import BentoMLException

    folder = _store_folder() / name
    if not folder.is_dir():
        return []
    records = []
    for version in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        try:
            records.append(_record(bentoml.models.get(f"{name}:{version}")))
        except (BentoMLException, OSError):
            continue
    return records


def get(tag: str) -> ModelRecord:
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        return _record(bentoml.models.get(tag))
    except BentoMLException as e:
        raise RegistryError(f"{tag}: {e}") from None


def candidates() -> list[ModelRecord]:
    """Candidate versions, oldest first."""
    return sorted(_list(CANDIDATE), key=lambda r: r.created)


def history() -> list[ModelRecord]:
    """Champion versions, oldest first (by revision)."""
    return sorted(_list(CHAMPION), key=lambda r: (r.revision, r.created))


def current_champion() -> Optional[ModelRecord]:
    champions = history()
    return champions[-1] if champions else None


# ------------------------------------------------------------------------------------------ metadata
def clean_metadata(obj: Any) -> Any:
    """A copy BentoML accepts as metadata (basic types only): tuples -> lists, numpy/torch scalars ->
    Python numbers, paths and other objects -> strings. BentoML refuses None: it is dropped from mappings
    and written as "null" inside lists (so positions keep their meaning)."""
    if isinstance(obj, dict):
        return {str(k): clean_metadata(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return ["null" if v is None else clean_metadata(v) for v in obj]
    if isinstance(obj, (str, bool, int, float)):
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalars
        try:
            return obj.item()
        except (TypeError, ValueError):
            pass
    return str(obj)


def _git(*args: str, cwd: Path) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _dvc_md5(dvc_file: Path) -> Optional[dict]:
    """md5 (and size / nfiles) of the first output of a .dvc file."""
    if not dvc_file.is_file():
        return None
    try:
        from omegaconf import OmegaConf
        outs = OmegaConf.to_container(OmegaConf.load(dvc_file)).get("outs") or []
    except Exception:  # noqa: BLE001 - a broken .dvc file is reported, not fatal here
        return {"error": f"{dvc_file} is not readable"}
    if not outs:
        return None
    return {k: outs[0][k] for k in ("path", "md5", "size", "nfiles") if k in outs[0]}


def _lock_md5(lock_file: Path, stage: str, out_path: str) -> Optional[str]:
    if not lock_file.is_file():
        return None
    try:
        from omegaconf import OmegaConf
        stages = OmegaConf.to_container(OmegaConf.load(lock_file)).get("stages") or {}
    except Exception:  # noqa: BLE001
        return None
    for out in (stages.get(stage) or {}).get("outs") or []:
        if out.get("path") == out_path:
            return out.get("md5")
    return None


def data_version(params=None, root: str | Path = ".") -> dict:
    """What data a model was trained on: the git revision of the project, the DVC hash of `data.dvc` and
    of the prepared manifests in dvc.lock (when present), and sha256 of the prepared manifests themselves
    (always; `id` is derived from them), plus the dataset readers/roots from params."""
    root = Path(root)
    prepared = root / (params.data.prepared_dir if params is not None else "artifacts/prepared")
    manifests = {}
    for task in ("dynamic", "static"):
        p = prepared / f"{task}.csv"
        manifests[task] = sha256_file(p) if p.is_file() else None
    rev = _git("rev-parse", "HEAD", cwd=root)
    dirty = _git("status", "--porcelain", "--untracked-files=no", cwd=root) if rev else None
    combined = hashlib.sha256(json.dumps(manifests, sort_keys=True).encode()).hexdigest()[:12]
    out = {"id": combined, "git_rev": rev, "git_dirty": bool(dirty) if rev else None,
           "data_dvc": _dvc_md5(root / "data.dvc"),
           # the embedded dataset is the `generate` stage's output (users' own datasets are hashed, not cached)
           "dvc_lock_generated_md5": _lock_md5(root / "dvc.lock", "generate",
                                               params.synthetic.root if params is not None else "data/synthetic"),
           "dvc_lock_prepared_md5": _lock_md5(root / "dvc.lock", "prepare", str(Path(prepared).relative_to(root))
                                              if prepared.is_relative_to(root) else str(prepared)),
           "manifests_sha256": manifests}
    if params is not None:
        out["datasets"] = {t: {"reader": getattr(params.data, t).reader, "root": getattr(params.data, t).root,
                               "fold": getattr(params.data, t).fold} for t in ("dynamic", "static")}
    return out


# ------------------------------------------------------------------------------------------ writing
def data_version_line(dv: dict) -> str:
    """One line for BentoML labels / serving: `manifests:<id> git:<rev>[+dirty] data.dvc:<md5>`."""
    rev = (str(dv.get("git_rev"))[:12] + ("+dirty" if dv.get("git_dirty") else "")) if dv.get("git_rev") else "-"
    md5 = (dv.get("data_dvc") or {}).get("md5") or "-"
    return f"manifests:{dv.get('id', '-')} git:{rev} data.dvc:{md5}"


def label_names(meta: Mapping[str, Any], num_dynamic: int, num_static: int) -> dict[str, list[str]]:
    """Class names from checkpoint or model metadata (`labels: {dynamic: [...], static: [...]}`), or
    class_0.. when absent or of the wrong length."""
    labels = meta.get("labels") if isinstance(meta.get("labels"), Mapping) else {}
    out = {}
    for task, count in (("dynamic", num_dynamic), ("static", num_static)):
        names = labels.get(task)
        out[task] = [str(n) for n in names] if isinstance(names, (list, tuple)) and len(names) == count \
            else [f"class_{i}" for i in range(count)]
    return out


def checkpoint_metadata(checkpoint: str | Path) -> dict[str, Any]:
    """What a fine-tuned checkpoint says about itself: labels, validation metrics, params, model config.

    Raises ValueError for a file that is not an s4d-ops classifier checkpoint, so nothing unusable ever
    reaches the store."""
    from s4d.models.checkpoint import build_model, read_checkpoint

    ckpt = read_checkpoint(checkpoint)
    if ckpt.get("kind") != "classifier":
        raise ValueError(f"{checkpoint}: a {ckpt.get('kind')!r} checkpoint, not a fine-tuned classifier")
    model = build_model(ckpt)  # loads strictly: a broken state dict fails here, not in the service
    meta = ckpt.get("meta") or {}
    return {"labels": label_names(meta, model.num_dynamic_classes, model.num_static_classes),
            "metrics": {"val": meta.get("val") or {}, "epoch": meta.get("epoch"),
                        "select_metric": meta.get("select_metric")},
            "params": meta.get("params") or {},
            "data_version": str(meta.get("data_version", "unknown")),
            "model_config": ckpt["model_config"],
            "num_classes": {"dynamic": model.num_dynamic_classes, "static": model.num_static_classes},
            "checkpoint_sha256": sha256_file(checkpoint)}


def save_to_store(checkpoint: str | Path, name: str = CANDIDATE, metadata: Optional[dict] = None) -> str:
    """Copy a fine-tuned checkpoint into the store as a new version of `name` (a candidate unless told);
    returns its tag. RegistryError for a file that is not a loadable classifier checkpoint.

    `metadata` (test metrics, params, data version, gate decision) is merged over what the checkpoint says
    (`checkpoint_metadata`); its `labels`, if given, must be {"dynamic": [...], "static": [...]}. A
    structured `data_version` dict is kept as `data_lineage`; `data_version` becomes its one-line form
    (the service's contract: a string)."""
    import bentoml

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise RegistryError(f"checkpoint {checkpoint} does not exist")
    try:
        merged = checkpoint_metadata(checkpoint)
    except ValueError as e:
        raise RegistryError(f"{checkpoint} cannot be saved to the model store: {e}") from None
    extra = dict(metadata or {})
    if isinstance(extra.get("data_version"), dict):
        extra["data_lineage"] = extra["data_version"]
        extra["data_version"] = data_version_line(extra["data_version"])
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "labels":
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    merged = clean_metadata({**merged, "data_version": str(merged.get("data_version") or "unknown")})
    labels = {"project": "s4d-ops", "data_version": merged["data_version"],
              "stage": "champion" if name == CHAMPION else "candidate"}
    with bentoml.models.create(name, metadata=merged, labels=labels) as ref:
        shutil.copyfile(checkpoint, ref.path_of(MODEL_FILE))
    return str(ref.tag)


def model_tag(bento_yaml: str | Path | None = None) -> str:
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


def _labels(role: str, revision: int, action: str, source: str, meta: dict) -> dict:
    dyn = (meta.get("metrics") or {}).get("dynamic") or {}
    dv = meta.get("data_lineage") or {}
    labels = {"project": "s4d-ops", "stage": role, "revision": str(revision), "action": action,
              "source": source, "data_version": str(meta.get("data_version", "unknown"))}
    for k in ("uar", "war"):
        if isinstance(dyn.get(k), (int, float)):
            labels[k] = f"{dyn[k]:.4f}"
    if dv.get("id"):
        labels["data"] = str(dv["id"])
    if dv.get("git_rev"):
        labels["git"] = str(dv["git_rev"])[:12]
    return labels


def _new_champion(source: ModelRecord, *, action: str, source_tag: str, stack_below: list[str], revision: int,
                  extra: dict) -> ModelRecord:
    """Copy a model's files into a new champion version (all or nothing: bentoml removes a failed one)."""
    import bentoml

    model = bentoml.models.get(source.tag)
    carried = {k: v for k, v in source.metadata.items()
               if k not in ("revision", "action", "source", "stack_below", "previous", "restores", "promoted_at",
                            "reason")}
    meta = clean_metadata({**carried, "revision": revision, "action": action, "source": source_tag,
                           "stack_below": stack_below, "promoted_at": datetime.now(timezone.utc).isoformat(), **extra})
    if source.checkpoint and "checkpoint_sha256" not in meta:
        meta["checkpoint_sha256"] = sha256_file(source.checkpoint)
    if source.checkpoint and "checkpoint_file" not in meta:
        meta["checkpoint_file"] = str(Path(source.checkpoint).relative_to(source.path))
    # A framework model (bentoml.pytorch...) keeps its module so its loader still accepts the copy.
    framework = ({"module": model.info.module, "signatures": model.info.signatures, "options": model.info.options,
                  "context": model.info.context} if model.info.module else {})
    with bentoml.models.create(CHAMPION, labels=_labels("champion", revision, action, source_tag, meta),
                               metadata=meta, **framework) as ref:
        src = Path(source.path)
        for item in src.iterdir():
            if item.name in BENTOML_FILES:
                continue
            dest = Path(ref.path) / item.name
            if item.is_dir():
                shutil.copytree(item, dest)
            else:
                shutil.copy2(item, dest)
    return get(str(ref.tag))


def promote(tag: str, reason: str = "") -> ModelRecord:
    """Make candidate `tag` (any model tag in the store) the champion: a new `s4d-champion` version."""
    with _lock():
        source = get(tag)
        if source.name == CHAMPION:
            raise RegistryError(f"{tag} is a champion version; promote a candidate ({CANDIDATE}:...) or use rollback")
        current = current_champion()
        stack = (current.stack_below + [current.tag]) if current else []
        extra = {"previous": current.tag if current else "", "reason": reason}
        return _new_champion(source, action="promote", source_tag=source.tag, stack_below=stack,
                             revision=(current.revision if current else 0) + 1, extra=extra)


def rollback(reason: str = "") -> ModelRecord:
    """Back to the champion before the current one, as a new champion version (history is kept)."""
    with _lock():
        current = current_champion()
        if current is None:
            raise RegistryError("no champion to roll back")
        if not current.stack_below:
            raise RegistryError(f"{current.tag} is the first champion: there is no previous one to roll back to")
        target_tag = current.stack_below[-1]
        target = get(target_tag)
        extra = {"previous": current.tag, "restores": target_tag, "reason": reason or f"rollback of {current.tag}"}
        return _new_champion(target, action="rollback", source_tag=target.source or target_tag,
                             stack_below=current.stack_below[:-1], revision=current.revision + 1, extra=extra)


def undo_promotion(champion_tag: str) -> None:
    """Remove a champion version nothing served yet (package: the bento build after promotion failed)."""
    import bentoml

    with _lock():
        current = current_champion()
        if current is None or current.tag != champion_tag:
            raise RegistryError(f"{champion_tag} is not the current champion; not removed")
        bentoml.models.delete(champion_tag)


# ---------------------------------------------------------------------------------------------- CLI
def _print_record(r: ModelRecord, as_json: bool) -> None:
    if as_json:
        print(to_json(asdict(r) | {"brief": r.brief()}), end="")
        return
    b = r.brief()
    print(f"{r.tag}")
    for key in ("created", "revision", "action", "source", "uar", "war"):
        if b.get(key) is not None:
            print(f"  {key:<10} {b[key]}")
    dv = r.data_version
    if dv:
        print(f"  data       id {dv.get('id')}  git {str(dv.get('git_rev'))[:12]}{' (dirty)' if dv.get('git_dirty') else ''}"
              f"  data.dvc {(dv.get('data_dvc') or {}).get('md5', '-')}")
    if r.stack_below:
        print(f"  rollback   -> {r.stack_below[-1]}")
    if r.checkpoint:
        print(f"  checkpoint {r.checkpoint}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m s4d.registry", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="candidates and champion history")
    show = sub.add_parser("show", help="the current champion, or TAG")
    show.add_argument("tag", nargs="?")
    pro = sub.add_parser("promote", help="make candidate TAG (or a classifier checkpoint FILE) the champion")
    pro.add_argument("tag", help="a candidate tag, or a checkpoint file (e.g. from `s4d import`): saved as a "
                                 "candidate first")
    pro.add_argument("--reason", default="manual promotion")
    back = sub.add_parser("rollback", help="restore the previous champion")
    back.add_argument("--reason", default="")
    for p in (pro, back):
        p.add_argument("--build", action="store_true", help="also rebuild the bento for the new champion")
        p.add_argument("--bentofile", default="serving/bentofile.yaml")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            champ = current_champion()
            rows = {"champion": champ.tag if champ else None,
                    "champions": [r.brief() for r in history()], "candidates": [r.brief() for r in candidates()]}
            if args.json:
                print(to_json(rows), end="")
                return 0
            print(f"champion: {rows['champion'] or '(none)'}")
            print("champion history (oldest first):")
            for b in rows["champions"]:
                mark = "*" if b["tag"] == rows["champion"] else " "
                print(f" {mark} {b['tag']:<40} r{b['revision']} {b['action']:<8} from {b['source']}  "
                      f"UAR {b['uar']}  WAR {b['war']}")
            print("candidates:")
            for b in rows["candidates"]:
                print(f"   {b['tag']:<40} UAR {b['uar']}  WAR {b['war']}  data {b['data']}")
            return 0
        if args.command == "show":
            record = get(args.tag) if args.tag else current_champion()
            if record is None:
                print("no champion yet", file=sys.stderr)
                return 1
            _print_record(record, args.json)
            return 0
        if args.command == "promote" and Path(args.tag).is_file():  # a checkpoint file: a candidate first
            args.tag = save_to_store(args.tag, CANDIDATE, {"source_file": str(Path(args.tag).resolve())})
            print(f"saved {args.tag}", file=sys.stderr)
        record = promote(args.tag, args.reason) if args.command == "promote" else rollback(args.reason)
        _print_record(record, args.json)
        if args.build:
            built = build_bento(record.tag, Path(args.bentofile), Path("."))
            write_json(BENTO_RECORD, {"skipped": False, **built, "champion": record.tag,
                                      "via": f"registry {args.command}"})
            print(f"bento {built['bento_tag']}")
        return 0
    except (RegistryError, BentoBuildError) as e:
        print(f"registry: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
