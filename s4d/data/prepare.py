"""`prepare` stage: dataset roots -> the prepared manifests every later stage reads.

For each task (dynamic = videos, static = images) the configured reader turns the dataset root into a
manifest; raw video files (a `folder` dataset of .mp4/.mov/...) go through face detection, alignment and
cropping into frame folders; a val split is carved from train when the dataset has none (identity-
disjoint when identities are known). Paths are rewritten relative to the project folder.

Writes <prepared_dir>/dynamic.csv, static.csv, summary.json (counts) and, for raw media, faces/<task>/
(crops) with faces_<task>.json (what was skipped and why). The unlabelled pretraining pool (`data.pool`)
goes to pool_dynamic.csv and pool_static.csv (rows without labels; only pretraining reads them).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd

from s4d.config import DatasetConfig, Params
from s4d.data.manifest import conform, write_manifest
from s4d.data.readers import VIDEO_SUFFIXES, carve_val, read_dataset, read_pool
from s4d.stage import load_stage_params, stage_parser

TASKS = ("dynamic", "static")
POOL_MANIFESTS = {"video": "pool_dynamic.csv", "image": "pool_static.csv"}  # by modality


def is_raw_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_SUFFIXES)


def crop_faces(manifest: pd.DataFrame, dataset_root: Path, out_root: Path, params: Params) -> tuple[pd.DataFrame, dict]:
    """Rows pointing at raw video files -> rows pointing at aligned face-crop frame folders."""
    from s4d.data.preprocess import preprocess_media

    report = preprocess_media(manifest, out_root, size=params.data.face_size, workers=params.data.workers or 1,
                              media_root=dataset_root)
    rows = report.manifest()
    if rows.empty:
        raise ValueError(f"no face found in any of the {len(manifest)} videos under {dataset_root}; "
                         f"see {out_root}")
    rows["path"] = [str(out_root / p) for p in rows["path"]]
    return conform(rows), report.to_dict()


def prepare_task(task: str, dataset: DatasetConfig, params: Params) -> tuple[pd.DataFrame, dict]:
    root = Path(dataset.root)
    pool = task == "pool"  # unlabelled (data.pool): its own readers, no folds, no val carve
    manifest = read_pool(dataset.reader, root) if pool else read_dataset(dataset.reader, root, dataset.fold)
    if manifest.empty:
        raise ValueError(f"data.{task}: reader {dataset.reader} found no samples under {root}")
    info: dict = {"reader": dataset.reader, "root": str(root), "fold": 0 if pool else dataset.fold}
    raw = manifest["path"].map(is_raw_video)
    if raw.any():
        faces_dir = Path(params.data.prepared_dir) / "faces" / task
        cropped, report = crop_faces(manifest[raw], root, faces_dir, params)
        info["faces"] = {"written": report["written"], "skipped": report["skipped_count"],
                         "report": str(faces_dir.parent / f"faces_{task}.json")}
        info["faces_report"] = report  # written with the manifests, all or nothing
        done = manifest[~raw].assign(path=[str(root / p) for p in manifest.loc[~raw, "path"]])
        manifest = pd.concat([done, cropped], ignore_index=True)
    else:
        manifest = manifest.assign(path=[str(root / p) for p in manifest["path"]])
    if not pool:  # pretraining reads all of the pool
        manifest = carve_val(manifest, params.data.val_fraction, params.data.seed)
    info["counts"] = {split: {str(k): int(v) for k, v in rows["label_name"].value_counts().sort_index().items()}
                      for split, rows in manifest.groupby("split")}
    return conform(manifest), info


def pool_manifests(prepared_dir: str | Path) -> list[Path]:
    """The pool manifests the last prepare wrote (none when data.pool.reader is none)."""
    return [Path(prepared_dir) / name for name in POOL_MANIFESTS.values() if (Path(prepared_dir) / name).is_file()]


def split_pool(results: dict) -> dict:
    """The "pool" task's manifest -> "pool_dynamic" (videos) and "pool_static" (stills), each with its own
    counts; a modality the pool lacks is left out (the faces report goes with the videos)."""
    if "pool" not in results:
        return results
    out = {task: result for task, result in results.items() if task != "pool"}
    manifest, info = results["pool"]
    for modality, name in POOL_MANIFESTS.items():
        rows = manifest[manifest["modality"] == modality]
        if len(rows):
            keep = {k: v for k, v in info.items() if modality == "video" or k not in ("faces", "faces_report")}
            out[Path(name).stem] = conform(rows), {**keep, "counts": {"train": {"unlabelled": len(rows)}}}
    return out


def prepare(params: Params) -> dict:
    """Both manifests, the faces reports and summary.json, swapped in only when both tasks succeeded: a
    failure leaves every file of the previous prepare as it was."""
    out = Path(params.data.prepared_dir)
    tasks = {task: getattr(params.data, task) for task in TASKS}
    if params.data.pool.reader != "none":
        tasks["pool"] = params.data.pool
    results = split_pool({task: prepare_task(task, dataset, params) for task, dataset in tasks.items()})
    staging = out / ".staging"
    if staging.is_dir() and not staging.is_symlink():
        shutil.rmtree(staging)  # a killed prepare's leftovers (the name is ours)
    written = []
    try:
        summary = {}
        for task, (manifest, info) in results.items():
            written.append(write_manifest(manifest, staging / f"{task}.csv"))
            if "faces_report" in info:
                name = Path(info["faces"]["report"]).name
                written.append(write_json(staging / name, info.pop("faces_report")))
            summary[task] = info
        written.append(write_json(staging / "summary.json", summary))
        for path in written:  # renames in one folder: nothing left to fail between them
            os.replace(path, out / path.name)
        for name in POOL_MANIFESTS.values():  # a pool manifest this run did not write is stale
            if name not in {path.name for path in written}:
                (out / name).unlink(missing_ok=True)
    finally:
        for path in written:
            path.unlink(missing_ok=True)
        if staging.exists():
            staging.rmdir()
    for task, (manifest, info) in results.items():
        sizes = ", ".join(f"{split} {sum(c.values())}" for split, c in info["counts"].items())
        print(f"{task}: {len(manifest)} {manifest['modality'].iloc[0]}s from {info['reader']} ({sizes})")
    return summary


def write_json(path: Path, obj: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    from s4d.data.readers import DatasetError

    args = stage_parser(__doc__).parse_args(argv)
    params = load_stage_params(args)
    try:
        prepare(params)
    except (DatasetError, KeyError, ValueError) as e:
        print(f"prepare failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
