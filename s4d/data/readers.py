"""Dataset readers: a dataset root (in its published layout) -> a manifest (see s4d.data.manifest).

Every reader is `read_xxx(root, fold, **layout) -> DataFrame`; `READERS` maps the names used in
params.yaml to them (`affectnet` is the 7-class, `affectnet8` the 8-class AffectNet); `POOL_READERS` those of
the unlabelled pretraining pool (data.pool.reader). Keyword arguments name the layout (file patterns, frame
folders) so a dataset that was unpacked differently, or the synthetic set, can reuse a reader.

A reader checks everything it touches and reports all problems at once: it collects them and raises one
`DatasetError` listing the first `MAX_LISTED` with the total count. Problems are: a missing split file,
a bad header, a label outside the set, a missing/empty frame folder or image, an unreadable image or
video, a path escaping the root (absolute or with `..`). Duplicate ids and class balance are not reader
problems; s4d.data.validate checks them on the finished manifest.

Datasets without folds accept any `fold` and record 0.
"""
from __future__ import annotations

import csv
import functools
import io
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image

from s4d.config import InputError, read_text
from s4d.data.labels import LABEL_SETS, adhoc_key, classes_of
from s4d.data.manifest import SPLITS, make_manifest

log = logging.getLogger(__name__)

MAX_LISTED = 20
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".webm", ".mkv")


class DatasetError(ValueError):
    """Everything wrong with one dataset; `problems` holds all of them, the message the first few."""

    def __init__(self, dataset: str, root: Path, problems: list[str]):
        self.dataset, self.root, self.problems = dataset, root, problems
        lines = [f"{dataset} at {root}: {len(problems)} problem(s)"]
        lines += [f"  - {p}" for p in problems[:MAX_LISTED]]
        if len(problems) > MAX_LISTED:
            lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
        super().__init__("\n".join(lines))


class Problems:
    """Collects problems while a reader runs; `raise_if_any` turns them into one DatasetError."""

    def __init__(self, dataset: str, root: Path):
        self.dataset, self.root, self.items = dataset, root, []

    def add(self, message: str) -> None:
        self.items.append(message)

    def raise_if_any(self) -> None:
        if self.items:
            raise DatasetError(self.dataset, self.root, self.items)


# ------------------------------------------------------------------------------------- building blocks
def _relative(value: str, what: str, problems: Problems) -> str | None:
    """A path from an annotation file, as a clean relative posix path; None (and a problem) if it escapes."""
    p = PurePosixPath(value.strip().replace("\\", "/"))
    parts = p.parts
    if not parts:
        problems.add(f"{what}: empty path / name")
        return None
    if p.is_absolute() or ".." in parts or parts[0].endswith(":"):  # "C:" is a Windows drive
        problems.add(f"{what}: path {value!r} escapes the dataset root (absolute or '..')")
        return None
    return p.as_posix()


def _read_table(path: Path, columns: tuple[str, ...], problems: Problems) -> list[tuple[int, dict]]:
    """Rows of a CSV with a header, as (line number, row); checks the file and the needed columns."""
    if not path.is_file():
        problems.add(f"missing split file: expected {path}")
        return []
    text = _text(path, problems)
    if text is None:
        return []
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in columns if c not in header]
    if missing:
        problems.add(f"{path}: header {header} lacks column(s) {missing}")
        return []
    reader.fieldnames = header
    # short rows give None for the missing fields: make them "" so the checks below report them
    return [(reader.line_num, {k: v or "" for k, v in row.items() if k is not None}) for row in reader]


def _read_lines(path: Path, problems: Problems) -> list[tuple[int, list[str]]]:
    """Non-empty lines of a space separated list file as (line number, [path, label])."""
    if not path.is_file():
        problems.add(f"missing split file: expected {path}")
        return []
    text = _text(path, problems)
    out = []
    for number, line in enumerate((text or "").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.rsplit(maxsplit=1)  # image paths may hold spaces, labels do not
        if len(fields) != 2:
            problems.add(f"{path}:{number}: expected '<image path> <label>', got {line.strip()!r}")
            continue
        out.append((number, fields))
    return out


def _text(path: Path, problems: Problems) -> str | None:
    """A split / label file as text; an undecodable or empty file is a problem naming file and line."""
    try:
        text = read_text(path)
    except InputError as e:
        problems.add(str(e))
        return None
    if not text.strip():
        problems.add(f"{path} is empty")
        return None
    return text


def _label(value: str, label_set: str, base: int, where: str, problems: Problems) -> int | None:
    """A label as written in a file -> 0-based index, or None (and a problem) if it is not in the set."""
    n = len(classes_of(label_set))
    try:
        raw = int(str(value).strip())
    except ValueError:
        problems.add(f"{where}: label {value!r} is not an integer (allowed {base}..{base + n - 1}, {label_set})")
        return None
    if not base <= raw < base + n:
        problems.add(f"{where}: label {raw} is outside the allowed range {base}..{base + n - 1} ({label_set})")
        return None
    return raw - base


def _image_size(path: Path, what: str, problems: Problems) -> tuple[int, int] | None:
    """(height, width) from the image header only (PIL decodes nothing until asked)."""
    try:
        with Image.open(path) as im:
            width, height = im.size
        return height, width
    except FileNotFoundError:
        problems.add(f"{what}: missing image, expected {path}")
    except (OSError, ValueError) as e:
        problems.add(f"{what}: unreadable image {path} ({e})")
    return None


def _frame_folder(root: Path, rel: str, what: str, problems: Problems) -> tuple[int, int, int] | None:
    """(num_frames, height, width) of a frame folder; the first frame in name order gives the size."""
    folder = root / rel
    try:
        frames = sorted(e.name for e in os.scandir(folder)
                        if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file())
    except (FileNotFoundError, NotADirectoryError):
        problems.add(f"{what}: missing frame folder, expected {folder}")
        return None
    if not frames:
        problems.add(f"{what}: frame folder {folder} holds no frames ({'/'.join(IMAGE_SUFFIXES)})")
        return None
    size = _image_size(folder / frames[0], what, problems)
    return None if size is None else (len(frames), *size)


def _video_file(path: Path, what: str, problems: Problems) -> tuple[int, int, int] | None:
    """(num_frames, height, width) of a video file; counts by decoding when the container does not say."""
    import cv2  # only the folder reader needs it

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            problems.add(f"{what}: cannot open video {path}")
            return None
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        height, width = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        if frames <= 0:  # some containers (webm) carry no frame count
            frames = 0
            while cap.grab():
                frames += 1
        if frames <= 0 or height <= 0 or width <= 0:
            problems.add(f"{what}: video {path} has no decodable frames")
            return None
        return frames, height, width
    finally:
        cap.release()


def _row(*, id: str, path: str, label: int, label_set: str, modality: str, split: str, fold: int,
         size: tuple[int, int, int], source: str, group: str = "") -> dict:
    num_frames, height, width = size
    return dict(id=id, path=path, label=label, label_name=classes_of(label_set)[label], label_set=label_set,
                modality=modality, split=split, fold=fold, num_frames=num_frames, height=height,
                width=width, source=source, group=group)


def _clip_rows(root: Path, frames_dir: str, video_name: str, label: int | None, label_set: str, split: str,
               fold: int, source: str, where: str, problems: Problems) -> list[dict]:
    """The manifest row of one clip-id line of a DFEW/MAFW split file ([] when it has a problem)."""
    clip = _relative(_clip_id(video_name), f"{where}: video_name", problems)
    if clip is None:
        return []
    rel = f"{frames_dir}/{clip}" if frames_dir else clip
    size = _frame_folder(root, rel, f"clip {clip} ({where})", problems)
    if label is None or not size:
        return []
    return [_row(id=clip, path=rel, label=label, label_set=label_set, modality="video", split=split, fold=fold,
                 size=size, source=source)]


def _clip_id(name: str) -> str:
    """DFEW/MAFW clip ids are 5-digit folder names; restore zeros a spreadsheet may have dropped."""
    name = name.strip()
    return name.zfill(5) if name.isdigit() else name


def _check_fold(dataset: str, fold: int, allowed: range) -> None:
    if fold not in allowed:
        raise ValueError(f"{dataset}: fold {fold} does not exist (allowed {allowed.start}..{allowed.stop - 1})")


# ------------------------------------------------------------------------------------------ video sets
DFEW_SPLIT_FILES = {
    "train": "EmoLabel_DataSplit/train(single-labeled)/train_set_{fold}.csv",
    "test": "EmoLabel_DataSplit/test(single-labeled)/test_set_{fold}.csv",
}


def _guess_label_base(raw: list[str], n: int, path: Path) -> int:
    """DFEW files come 0-based (S4D/S2D form) or 1-based (official). A 0 means 0-based, an n 1-based;
    a file with neither is ambiguous and read as 0-based with a warning (pass label_base to be sure)."""
    values = {int(v) for v in raw if v.strip().lstrip("-").isdigit()}
    if 0 in values:
        base = 0
    elif n in values:
        base = 1
    else:
        log.warning("%s: labels hold neither 0 nor %d, assuming 0-based; pass label_base to be sure", path, n)
        return 0
    log.info("%s: labels read as %d-based", path, base)
    return base


def _dfew_rows(root: Path, fold: int, frames_dir: str, split_files: dict[str, str], label_base: int | None,
               source: str, problems: Problems) -> list[dict]:
    rows = []
    for split, pattern in split_files.items():
        path = root / pattern.format(fold=fold)
        records = _read_table(path, ("video_name", "label"), problems)
        base = label_base
        if base is None and records:
            base = _guess_label_base([r["label"] for _, r in records], len(LABEL_SETS["dfew7"]), path)
        for line, rec in records:
            where = f"{path}:{line}"
            label = _label(rec["label"], "dfew7", base, where, problems)
            rows += _clip_rows(root, frames_dir, rec["video_name"], label, "dfew7", split, fold, source, where,
                               problems)
    return rows


def read_dfew(root: str | Path, fold: int = 1, *, frames_dir: str = "clip_224x224",
              split_files: dict[str, str] = DFEW_SPLIT_FILES, label_base: int | None = None,
              source: str = "dfew") -> pd.DataFrame:
    """DFEW 5-fold single-label splits; frames in `<frames_dir>/<5-digit id>/`.

    label_base: 0 or 1 for the label numbering in the split files; None detects it per file (0 present ->
    0-based, 7 present -> 1-based, neither -> 0-based with a warning) and logs which it chose.
    """
    root = Path(root)
    _check_fold(source, fold, range(1, 6))
    problems = Problems(source, root)
    rows = _dfew_rows(root, fold, frames_dir, split_files, label_base, source, problems)
    problems.raise_if_any()
    return make_manifest(rows)


def read_ferv39k(root: str | Path, fold: int = 0, *, frames_dir: str = "2_ClipsforFaceCrop",
                 annotation_dir: str = "Annotation") -> pd.DataFrame:
    """FERV39K: `Annotation/{train,test}.csv` with header `path,id` where `path` is Scene/Emotion/clip (the
    frame folder under `frames_dir`, also the row id) and `id` the 0-based label. The Emotion level of the
    path must agree with the label. No folds."""
    root = Path(root)
    problems = Problems("ferv39k", root)
    classes = LABEL_SETS["ferv39k7"]
    rows = []
    for split in ("train", "test"):
        path = root / annotation_dir / f"{split}.csv"
        for line, rec in _read_table(path, ("path", "id"), problems):
            where = f"{path}:{line}"
            label = _label(rec["id"], "ferv39k7", 0, where, problems)
            clip = _relative(rec["path"], where, problems)
            if clip is None:
                continue
            parts = PurePosixPath(clip).parts
            if label is not None and len(parts) == 3 and parts[1].lower() != classes[label]:
                problems.add(f"{where}: path {clip} says {parts[1]!r} but label {label} is {classes[label]!r}")
                continue
            rel = f"{frames_dir}/{clip}" if frames_dir else clip
            size = _frame_folder(root, rel, f"clip {clip} ({where})", problems)
            if label is not None and size:
                rows.append(_row(id=clip, path=rel, label=label, label_set="ferv39k7", modality="video",
                                 split=split, fold=0, size=size, source="ferv39k"))
    problems.raise_if_any()
    return make_manifest(rows)


def read_mafw(root: str | Path, fold: int = 1, *, frames_dir: str = "frames",
              anno_dir: str = "anno/single/no_caption") -> pd.DataFrame:
    """MAFW single-label, 11 classes: `<anno_dir>/set_<fold>/{train,test}.csv`, header `video_name,labels`
    (0-based); frames in `<frames_dir>/<5-digit id>/`. fold 0 reads the whole-set `train.csv`/`test.csv`."""
    root = Path(root)
    _check_fold("mafw", fold, range(0, 6))
    problems = Problems("mafw", root)
    split_dir = root / anno_dir / (f"set_{fold}" if fold else "")
    rows = []
    for split in ("train", "test"):
        path = split_dir / f"{split}.csv"
        for line, rec in _read_table(path, ("video_name", "labels"), problems):
            where = f"{path}:{line}"
            label = _label(rec["labels"], "mafw11", 0, where, problems)
            rows += _clip_rows(root, frames_dir, rec["video_name"], label, "mafw11", split, fold, "mafw", where,
                               problems)
    problems.raise_if_any()
    return make_manifest(rows)


# ------------------------------------------------------------------------------------------ image sets
def _rafdb_rows(root: Path, list_file: str, image_dir: str, source: str, problems: Problems) -> list[dict]:
    path = root / list_file
    rows = []
    for line, (name, value) in _read_lines(path, problems):
        where = f"{path}:{line}"
        label = _label(value, "rafdb7", 1, where, problems)
        name = _relative(name, where, problems)
        if name is None:
            continue
        stem, suffix = os.path.splitext(name)
        split = stem.split("_", 1)[0]
        if split not in ("train", "test"):
            problems.add(f"{where}: image name {name!r} does not start with train_ or test_")
            continue
        rel = f"{image_dir}/{stem}_aligned{suffix}" if image_dir else f"{stem}_aligned{suffix}"
        size = _image_size(root / rel, f"image {stem} ({where})", problems)
        if label is not None and size:
            rows.append(_row(id=stem, path=rel, label=label, label_set="rafdb7", modality="image", split=split,
                             fold=0, size=(1, *size), source=source))
    return rows


def read_rafdb(root: str | Path, fold: int = 0, *, list_file: str = "EmoLabel/list_patition_label.txt",
               image_dir: str = "Image/aligned", source: str = "rafdb") -> pd.DataFrame:
    """RAF-DB basic: lines `train_00001.jpg 5` (labels 1..7 in RAF-DB order, stored 0-based), images at
    `<image_dir>/train_00001_aligned.jpg`; the split is the name's prefix. No folds."""
    root = Path(root)
    problems = Problems(source, root)
    rows = _rafdb_rows(root, list_file, image_dir, source, problems)
    problems.raise_if_any()
    return make_manifest(rows)


def read_affectnet(root: str | Path, fold: int = 0, *, num_classes: int = 7,
                   list_files: dict[str, str] | None = None, image_dir: str = "") -> pd.DataFrame:
    """AffectNet with 7 or 8 classes from list files of lines `<relative image path> <label>` (0-based).

    list_files maps split -> list file (relative to root); every one given must exist. Left out, the
    reader takes whichever of `AffectNet_{train,val,test}_affectnet{num_classes}.txt` exist (at least one
    must). Image paths are relative to `<root>/<image_dir>`. No folds.
    """
    root = Path(root)
    if num_classes not in (7, 8):
        raise ValueError(f"affectnet: num_classes must be 7 or 8, not {num_classes}")
    label_set = f"affectnet{num_classes}"
    problems = Problems("affectnet", root)
    if list_files is None:
        candidates = {s: f"AffectNet_{s}_{label_set}.txt" for s in SPLITS}
        list_files = {s: f for s, f in candidates.items() if (root / f).is_file()}
        if not list_files:
            expected = ", ".join(str(root / f) for f in candidates.values())
            problems.add(f"missing split file: expected at least one of {expected}")
    rows = []
    for split, list_file in list_files.items():
        path = root / list_file
        for line, (name, value) in _read_lines(path, problems):
            where = f"{path}:{line}"
            label = _label(value, label_set, 0, where, problems)
            name = _relative(name, where, problems)
            if name is None:
                continue
            rel = f"{image_dir}/{name}" if image_dir else name
            size = _image_size(root / rel, f"image {name} ({where})", problems)
            if label is not None and size:
                rows.append(_row(id=name, path=rel, label=label, label_set=label_set, modality="image",
                                 split=split, fold=0, size=(1, *size), source="affectnet"))
    problems.raise_if_any()
    return make_manifest(rows)


FERPLUS_USAGE = {"Training": ("train", "FER2013Train"), "PublicTest": ("val", "FER2013Valid"),
                 "PrivateTest": ("test", "FER2013Test")}
FERPLUS_VOTES = LABEL_SETS["ferplus8"] + ["unknown", "NF"]


def ferplus_majority(votes: list[int]) -> int | None:
    """Majority rule for FERPlus: the column holding MORE than half of all votes (the 8 emotions plus
    unknown and NF) wins. No such column, or unknown/NF winning, means the image has no usable label."""
    total = sum(votes)
    best = int(np.argmax(votes))
    if total == 0 or 2 * votes[best] <= total or best >= len(LABEL_SETS["ferplus8"]):
        return None
    return best


def read_ferplus(root: str | Path, fold: int = 0, *, label_file: str = "fer2013new.csv",
                 image_dirs: dict[str, str] | None = None) -> pd.DataFrame:
    """FERPlus from `fer2013new.csv` (`Usage,Image name,<8 emotions>,unknown,NF` vote counts) with the
    images in FER2013Train/Valid/Test by Usage (Training/PublicTest/PrivateTest -> train/val/test).

    Labels follow `ferplus_majority`; rows without a majority and rows with an empty `Image name` (faces
    FERPlus removed) are dropped and counted in the log. No folds.
    """
    root = Path(root)
    problems = Problems("ferplus", root)
    usage = {u: (split, (image_dirs or {}).get(split, d)) for u, (split, d) in FERPLUS_USAGE.items()}
    path = root / label_file
    rows, dropped, unnamed = [], 0, 0
    for line, rec in _read_table(path, ("Usage", "Image name", *FERPLUS_VOTES), problems):
        where = f"{path}:{line}"
        name = rec["Image name"].strip()
        if not name:
            unnamed += 1
            continue
        if rec["Usage"] not in usage:
            problems.add(f"{where}: Usage {rec['Usage']!r} is not one of {', '.join(usage)}")
            continue
        try:
            votes = [int(rec[c]) for c in FERPLUS_VOTES]
        except ValueError:
            problems.add(f"{where}: vote counts {[rec[c] for c in FERPLUS_VOTES]} are not all integers")
            continue
        label = ferplus_majority(votes)
        if label is None:
            dropped += 1
            continue
        split, image_dir = usage[rec["Usage"]]
        rel = _relative(f"{image_dir}/{name}", where, problems)
        size = rel and _image_size(root / rel, f"image {name} ({where})", problems)
        if size:
            rows.append(_row(id=os.path.splitext(name)[0], path=rel, label=label, label_set="ferplus8",
                             modality="image", split=split, fold=0, size=(1, *size), source="ferplus"))
    log.info("ferplus: kept %d images, dropped %d without a majority, skipped %d without a name",
             len(rows), dropped, unnamed)
    problems.raise_if_any()
    return make_manifest(rows)


# ------------------------------------------------------------------------------------- users' folders
def read_folder(root: str | Path, fold: int = 0) -> pd.DataFrame:
    """A user's own data: `[train|val|test/]<class>/<item>` where an item is a video file, an image or a
    folder of frames. Classes (all class folder names, sorted) form an ad-hoc label set whose key
    `folder:<a>,<b>,...` goes into the manifest. Without a split level everything is `train`. Hidden
    files are ignored; other files are problems. No folds.
    """
    root = Path(root)
    problems = Problems("folder", root)
    if not root.is_dir():
        problems.add(f"dataset folder {root} does not exist")
        problems.raise_if_any()
    top = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    if any(p.name in SPLITS for p in top):
        split_dirs = {p.name: p for p in top if p.name in SPLITS}
        for p in top:
            if p.name not in SPLITS:
                problems.add(f"{p}: unexpected beside the split folders {'/'.join(SPLITS)}")
    else:
        split_dirs = {"train": root}
    class_dirs = {}  # (split, class) -> folder
    for split, sdir in split_dirs.items():
        for p in sorted(sdir.iterdir()):
            if p.name.startswith("."):
                continue
            if p.is_dir():
                class_dirs[split, p.name] = p
            else:
                problems.add(f"{p}: a file outside any class folder (expected {sdir}/<class>/...)")
    classes = sorted({c for _, c in class_dirs})
    if not classes:
        problems.add(f"no class folders under {root} (expected [train|val|test/]<class>/<videos or images>)")
    bad = [c for c in classes if "," in c]
    if bad:
        problems.add(f"class folder names may not contain ',': {bad}")
    if not classes or bad:  # no label set to build; otherwise go on and report item problems too
        problems.raise_if_any()
    label_set = adhoc_key(classes)
    rows = []
    for (split, cls), cdir in class_dirs.items():
        for item in sorted(cdir.iterdir()):
            if item.name.startswith("."):
                continue
            rel = item.relative_to(root).as_posix()
            what = f"{cls} item {rel}"
            suffix = item.suffix.lower()
            if item.is_dir():
                modality, size = "video", _frame_folder(root, rel, what, problems)
            elif suffix in VIDEO_SUFFIXES:
                modality, size = "video", _video_file(item, what, problems)
            elif suffix in IMAGE_SUFFIXES:
                hw = _image_size(item, what, problems)
                modality, size = "image", hw and (1, *hw)
            else:
                problems.add(f"{what}: unsupported file type {suffix or '(none)'} (videos: "
                             f"{'/'.join(VIDEO_SUFFIXES)}, images: {'/'.join(IMAGE_SUFFIXES)}, or frame folders)")
                continue
            if size:
                rows.append(_row(id=rel, path=rel, label=classes.index(cls), label_set=label_set,
                                 modality=modality, split=split, fold=0, size=size, source="folder"))
    problems.raise_if_any()
    return make_manifest(rows)


# --------------------------------------------------------------------------------- the synthetic set
def _join_identities(rows: list[dict], path: Path, name_column: str, key: Callable[[str], str],
                     problems: Problems) -> None:
    """Fill `group` (identity) and `split` from identities.csv. The train split file may hold train and
    val samples; a test sample must stay test and a train sample may not become test."""
    table = {}
    for line, rec in _read_table(path, (name_column, "identity", "split"), problems):
        if rec["split"] not in SPLITS:
            problems.add(f"{path}:{line}: split {rec['split']!r} is not one of {', '.join(SPLITS)}")
            continue
        table[key(rec[name_column])] = rec["identity"].strip(), rec["split"]
    if not table:
        return
    for row in rows:
        if row["id"] not in table:
            problems.add(f"{row['id']}: no row in {path}")
            continue
        identity, split = table[row["id"]]
        if (row["split"] == "test") != (split == "test"):
            problems.add(f"{row['id']}: split file says {row['split']} but {path.name} says {split}")
            continue
        row["group"], row["split"] = identity, split


def read_synthetic_video(root: str | Path, fold: int = 1) -> pd.DataFrame:
    """The generated video set (`data/synthetic/videos`): DFEW layout with `frames/<id>/` and split files
    `set_<fold>.csv` (0-based labels), plus `identities.csv` (`video_name,identity,split`) for group/val."""
    root = Path(root)
    problems = Problems("synthetic_video", root)
    split_files = {"train": "EmoLabel_DataSplit/train(single-labeled)/set_{fold}.csv",
                   "test": "EmoLabel_DataSplit/test(single-labeled)/set_{fold}.csv"}
    rows = _dfew_rows(root, fold, "frames", split_files, 0, "synthetic_video", problems)
    _join_identities(rows, root / "identities.csv", "video_name", _clip_id, problems)
    problems.raise_if_any()
    return make_manifest(rows)


def read_synthetic_image(root: str | Path, fold: int = 0) -> pd.DataFrame:
    """The generated image set (`data/synthetic/images`): RAF-DB layout plus `identities.csv`
    (`image_name,identity,split`, names with or without extension) for group/val. No folds."""
    root = Path(root)
    problems = Problems("synthetic_image", root)
    rows = _rafdb_rows(root, "EmoLabel/list_patition_label.txt", "Image/aligned", "synthetic_image", problems)
    _join_identities(rows, root / "identities.csv", "image_name", lambda n: os.path.splitext(n.strip())[0],
                     problems)
    problems.raise_if_any()
    return make_manifest(rows)


# ------------------------------------------------------------------------------ the unlabelled pool
# Pool rows carry no label: `label` -1, `label_set` and `label_name` "unlabelled" (no class list: classes_of()
# refuses it, so no head can be built on them), `split` "train". They go to pool_dynamic.csv / pool_static.csv,
# which only pretraining reads; the pool readers are not in READERS, so no labelled task (data.dynamic/static)
# can use them.
UNLABELLED = -1
UNLABELLED_SET = "unlabelled"
POOL_VIDEOS, POOL_IMAGES = "videos", "images"


def _pool_row(rel: str, modality: str, size: tuple[int, int, int], source: str) -> dict:
    num_frames, height, width = size
    return dict(id=rel, path=rel, label=UNLABELLED, label_name=UNLABELLED_SET, label_set=UNLABELLED_SET,
                modality=modality, split="train", fold=0, num_frames=num_frames, height=height, width=width,
                source=source, group="")


def _walk(folder: Path):
    """(folder, sorted visible files) for `folder` and every visible folder below it, in name order. Symlinked
    folders are followed (a pool assembled from links), each real folder once (a link loop ends)."""
    seen = set()
    for here, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield Path(here), sorted(f for f in files if not f.startswith("."))


def read_pool_folder(root: str | Path, fold: int = 0, source: str = "folder") -> pd.DataFrame:
    """Unlabelled media for pretraining: `root/videos/` holds video files and frame folders (a folder with
    image files is one clip), `root/images/` holds stills, at any depth. Either may be absent, not both."""
    root = Path(root)
    problems = Problems("pool folder", root)
    parts = [root / POOL_VIDEOS, root / POOL_IMAGES]
    if not any(p.is_dir() for p in parts):
        problems.add(f"neither {parts[0]} nor {parts[1]} is a folder (expected unlabelled videos / frame folders "
                     f"in {POOL_VIDEOS}/, stills in {POOL_IMAGES}/)")
        problems.raise_if_any()
    rows = []
    for folder, files in _walk(parts[0]) if parts[0].is_dir() else ():
        rel = folder.relative_to(root).as_posix()
        if any(f.lower().endswith(IMAGE_SUFFIXES) for f in files):
            size = _frame_folder(root, rel, f"clip {rel}", problems)
            if size:
                rows.append(_pool_row(rel, "video", size, source))
        for name in files:
            what = f"{rel}/{name}"
            if name.lower().endswith(VIDEO_SUFFIXES):
                size = _video_file(folder / name, what, problems)
                if size:
                    rows.append(_pool_row(what, "video", size, source))
            elif not name.lower().endswith(IMAGE_SUFFIXES):
                problems.add(f"{what}: unsupported file type (videos: {'/'.join(VIDEO_SUFFIXES)}, or frame folders)")
    for folder, files in _walk(parts[1]) if parts[1].is_dir() else ():
        for name in files:
            what = f"{folder.relative_to(root).as_posix()}/{name}"
            if not name.lower().endswith(IMAGE_SUFFIXES):
                problems.add(f"{what}: unsupported file type (stills: {'/'.join(IMAGE_SUFFIXES)})")
                continue
            hw = _image_size(folder / name, what, problems)
            if hw:
                rows.append(_pool_row(what, "image", (1, *hw), source))
    if not rows:
        problems.add(f"no clips or stills under {parts[0]} or {parts[1]} (data.pool.reader: none for no pool)")
    problems.raise_if_any()
    return make_manifest(rows)


def read_synthetic_pool(root: str | Path, fold: int = 0) -> pd.DataFrame:
    """The generator's pool (`data/synthetic/pool`): the folder layout plus `identities.csv` (`name,identity`)
    for `group`. Every sample it lists must be there."""
    root = Path(root)
    rows = read_pool_folder(root, source="synthetic_pool")
    problems = Problems("synthetic_pool", root)
    table = {rec["name"]: rec["identity"].strip()
             for _, rec in _read_table(root / "identities.csv", ("name", "identity"), problems)}
    missing = sorted(set(table) - set(rows["id"]))
    problems.items += [f"{name}: listed in {root / 'identities.csv'} but not on disk" for name in missing]
    problems.items += [f"{name}: no row in {root / 'identities.csv'}" for name in rows["id"] if name not in table]
    problems.raise_if_any()
    return rows.assign(group=rows["id"].map(table))


POOL_READERS: dict[str, Callable[..., pd.DataFrame]] = {
    "folder": read_pool_folder,
    "synthetic_pool": read_synthetic_pool,
}


def read_pool(reader: str, root: str | Path) -> pd.DataFrame:
    """The unlabelled pool (`data.pool.reader`: a key of POOL_READERS) as a manifest of unlabelled rows."""
    if reader not in POOL_READERS:
        raise KeyError(f"unknown pool reader {reader!r}; known: {', '.join(POOL_READERS)} (or none)")
    return POOL_READERS[reader](Path(root))


# ---------------------------------------------------------------------------------------- registry
READERS: dict[str, Callable[..., pd.DataFrame]] = {
    "dfew": read_dfew,
    "ferv39k": read_ferv39k,
    "mafw": read_mafw,
    "rafdb": read_rafdb,
    "affectnet": read_affectnet,
    "affectnet8": functools.partial(read_affectnet, num_classes=8),
    "ferplus": read_ferplus,
    "folder": read_folder,
    "synthetic_video": read_synthetic_video,
    "synthetic_image": read_synthetic_image,
}


def read_dataset(reader: str, root: str | Path, fold: int = 1) -> pd.DataFrame:
    """Look a reader up by its params.yaml name and run it."""
    if reader not in READERS:
        raise KeyError(f"unknown dataset reader {reader!r}; known: {', '.join(READERS)}")
    return READERS[reader](Path(root), fold)


# ------------------------------------------------------------------------------------- val carving
def carve_val(manifest: pd.DataFrame, fraction: float, seed: int = 0) -> pd.DataFrame:
    """Move about `fraction` of the train rows to val when the manifest has no val rows (else a copy).

    Rows without a group: per class, a seeded shuffle picks round(fraction * count). Rows with a group
    move whole groups (identity-disjoint): groups in seeded order join val when that brings the per-class
    val counts closer (L1) to fraction * the class's train count. Deterministic for a given seed.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val fraction must be in [0, 1), not {fraction}")
    out = manifest.copy()
    if fraction == 0.0 or (out["split"] == "val").any():
        return out
    rng = np.random.default_rng(seed)
    # Sorted by id, so the result does not depend on the order the manifest was built in.
    train = out[out["split"] == "train"].sort_values("id", kind="stable")
    to_val = []

    loose = train[train["group"] == ""]
    for _, rows in loose.groupby("label", sort=True):
        take = int(round(fraction * len(rows)))
        to_val.extend(rows.index[rng.permutation(len(rows))[:take]])

    grouped = train[train["group"] != ""]
    if len(grouped):
        counts = pd.crosstab(grouped["group"], grouped["label"]).sort_index()
        target = fraction * counts.sum(axis=0).to_numpy()
        current = np.zeros_like(target)
        chosen = []
        for i in rng.permutation(len(counts)):
            candidate = current + counts.iloc[i].to_numpy()
            if np.abs(candidate - target).sum() < np.abs(current - target).sum():
                current = candidate
                chosen.append(counts.index[i])
        to_val.extend(grouped.index[grouped["group"].isin(chosen)])

    out.loc[to_val, "split"] = "val"
    return out
