"""`prepare` stage: dataset roots -> the prepared manifests every later stage reads.

For each task (dynamic = videos, static = images) the configured reader turns the dataset root into a
manifest; raw video files (a `folder` dataset of .mp4/.mov/...) go through face detection, alignment and
cropping into frame folders; a val split is carved from train when the dataset has none (identity-
disjoint when identities are known). Paths are rewritten relative to the project folder.

Writes <prepared_dir>/dynamic.csv, static.csv, summary.json (counts) and, for raw media, faces/<task>/
(crops) with faces/faces_<task>.json (what was skipped and why). Everything is written into
<prepared_dir>/.staging/ first and swapped in by renames only when both tasks succeeded: a failure at any
point leaves the previous crops, manifests and summary as they were. The previous crops are hard-linked
into the staging folder first, so clips already done (same file, same settings) are not cropped again.
The unlabelled pretraining pool (`data.pool`) goes to pool_dynamic.csv and pool_static.csv (rows without
labels; only pretraining reads them).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pandas as pd

from s4d.config import DatasetConfig, Params
from s4d.data.manifest import conform, write_manifest
from s4d.data.readers import VIDEO_SUFFIXES, carve_val, read_dataset, read_pool
from s4d.io import write_json
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
        reasons = sorted({skip["reason"] for skip in report.skipped})
        raise ValueError(f"no face found in any of the {len(manifest)} videos under {dataset_root} "
                         f"(skipped: {', '.join(reasons)})")
    rows["path"] = [str(out_root / p) for p in rows["path"]]
    return conform(rows), report.summary()


def prepare_task(task: str, dataset: DatasetConfig, params: Params, staging: Path | None = None
                 ) -> tuple[pd.DataFrame, dict]:
    """One task's manifest. Face crops of raw videos are written under `staging`/faces/<task> (default: the
    prepared folder itself), and the manifest points at where they will be after the swap."""
    root = Path(dataset.root)
    pool = task == "pool"  # unlabelled (data.pool): its own readers, no folds, no val carve
    manifest = read_pool(dataset.reader, root) if pool else read_dataset(dataset.reader, root, dataset.fold)
    if manifest.empty:
        raise ValueError(f"data.{task}: reader {dataset.reader} found no samples under {root}")
    info: dict = {"reader": dataset.reader, "root": str(root), "fold": 0 if pool else dataset.fold}
    raw = manifest["path"].map(is_raw_video)
    if raw.any():
        faces_dir = Path(params.data.prepared_dir) / "faces" / task
        work_dir = Path(staging or params.data.prepared_dir) / "faces" / task
        reuse_crops(faces_dir, work_dir)
        cropped, report = crop_faces(manifest[raw], root, work_dir, params)
        cropped["path"] = [str(faces_dir / Path(p).relative_to(work_dir)) for p in cropped["path"]]
        info["faces"] = {"written": report["written"], "skipped": len(report["skipped"]),
                         "report": str(faces_dir.parent / f"faces_{task}.json")}
        write_json(work_dir.parent / f"faces_{task}.json", report)  # swapped in with the crops
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
    """Both manifests, the face crops with their reports, and summary.json, swapped in only when both tasks
    succeeded: a failure leaves every file of the previous prepare as it was."""
    out = Path(params.data.prepared_dir)
    existed = out.is_dir()
    tasks = {task: getattr(params.data, task) for task in TASKS}
    if params.data.pool.reader != "none":
        tasks["pool"] = params.data.pool
    staging = out / ".staging"
    if staging.is_dir() and not staging.is_symlink():
        shutil.rmtree(staging)  # a killed prepare's leftovers (the name is ours)
    try:
        results = split_pool({task: prepare_task(task, dataset, params, staging) for task, dataset in tasks.items()})
        summary = {}
        written = []
        for task, (manifest, info) in results.items():
            written.append(write_manifest(manifest, staging / f"{task}.csv"))
            summary[task] = info
        written.append(write_json(staging / "summary.json", summary))
        # Renames inside one folder, nothing left to fail between them: the old crops go aside into the
        # staging folder (removed below), the new ones (or none) take their place, then the files.
        if (out / "faces").exists():
            os.replace(out / "faces", staging / "faces.previous")
        if (staging / "faces").exists():
            os.replace(staging / "faces", out / "faces")
        for path in written:
            os.replace(path, out / path.name)
        for name in POOL_MANIFESTS.values():  # a pool manifest this run did not write is stale
            if name not in {path.name for path in written}:
                (out / name).unlink(missing_ok=True)
    finally:
        if staging.is_dir() and not staging.is_symlink():
            shutil.rmtree(staging)
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a prepare that failed before writing anything leaves no empty folder
    for task, (manifest, info) in results.items():
        sizes = ", ".join(f"{split} {sum(c.values())}" for split, c in info["counts"].items())
        print(f"{task}: {len(manifest)} {manifest['modality'].iloc[0]}s from {info['reader']} ({sizes})")
    return summary


def reuse_crops(previous: Path, work_dir: Path) -> None:
    """Hard-link the previous crops into the staging folder, so finished clips are reused (preprocess redoes
    a clip in a fresh folder, never writing through a link). Falls back to copies where links fail."""
    if not previous.is_dir() or work_dir.exists():
        return

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    shutil.copytree(previous, work_dir, copy_function=link, symlinks=True)



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
