"""The manifest: one row per sample of a dataset, the contract between readers and everything after.

Columns (see `COLUMNS`):
    id          unique within the manifest (dataset-native: clip id, clip path, image name)
    path        relative to the dataset root: a frame folder, an image file or a video file
    label       index into the label set; label_name is the set's name for that index (the unlabelled
                pretraining pool: -1, label_set and label_name "unlabelled")
    label_set   a key of s4d.data.labels.LABEL_SETS, or an ad-hoc `folder:a,b,c` key
    modality    "video" | "image"
    split       "train" | "val" | "test"
    fold        the dataset's fold, 0 if it has none
    num_frames  frames in the folder or video; 1 for images
    height, width  of the first frame / the image
    source      the reader that produced the row
    group       identity (for identity-disjoint splits), "" when unknown
"""
from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import Sequence

import pandas as pd

from s4d.config import InputError
from s4d.io import write_csv

COLUMNS = ["id", "path", "label", "label_name", "label_set", "modality", "split", "fold", "num_frames",
           "height", "width", "source", "group"]
INT_COLUMNS = ["label", "fold", "num_frames", "height", "width"]
STR_COLUMNS = [c for c in COLUMNS if c not in INT_COLUMNS]
SPLITS = ("train", "val", "test")
MODALITIES = ("video", "image")


def make_manifest(rows: list[dict]) -> pd.DataFrame:
    """Rows (dicts with every column) -> a manifest with the column order and dtypes fixed."""
    return conform(pd.DataFrame(rows, columns=COLUMNS))


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """Check the columns are all there, put them in order and cast them (extra columns are dropped)."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"manifest lacks column(s) {missing}; expected {COLUMNS}")
    out = df[COLUMNS].copy()
    for c in INT_COLUMNS:
        out[c] = out[c].astype("int64")
    for c in STR_COLUMNS:
        out[c] = out[c].fillna("").astype(str)
    return out.reset_index(drop=True)


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest CSV atomically, so readers never see half."""
    return write_csv(path, conform(df))


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest CSV back with its dtypes: ids like "00001" stay strings, an empty group stays ""."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    dtypes = {c: str for c in STR_COLUMNS} | {c: "int64" for c in INT_COLUMNS}
    try:
        df = pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_filter=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise InputError(f"manifest {path} is an empty file (0 bytes); run the prepare stage again") from None
    except (UnicodeDecodeError, pd.errors.ParserError) as e:
        raise InputError(f"manifest {path} is not a readable CSV ({str(e).splitlines()[0]})") from None
    except ValueError as e:  # a non-integer label, frame count or size
        raise InputError(f"manifest {path}: {e}") from None
    try:
        df = conform(df)
    except ValueError as e:
        raise InputError(f"{path}: {e}") from None
    if df.empty:
        raise InputError(f"manifest {path} holds no rows (only a header); run the prepare stage again")
    return df


def outside_root(path: str, root: str | Path = ".", allowed: Sequence[str | Path] = ()) -> str | None:
    """Why a manifest path may not be opened, or None. A path is read relative to `root` (the project
    folder) and must stay, lexically, inside it or inside one of the configured dataset folders `allowed`
    (data.<task>.root, data.prepared_dir): anything else (`../../etc/passwd`, a stray absolute path) could
    reach any file of the machine. Symlinks inside those folders are the user's and are followed."""
    parts = PurePath(path).parts
    if not parts or parts[0].endswith(":"):
        return f"path {path!r} escapes the dataset root"
    full = PurePath(os.path.normpath(os.path.join(os.path.abspath(root), path)))
    inside = [PurePath(os.path.normpath(os.path.abspath(folder))) for folder in (root, *allowed)]
    if not any(full.is_relative_to(folder) for folder in inside):
        return f"path {path!r} escapes the dataset root (and every configured dataset folder)"
    return None


def dataset_folders(data) -> tuple[str, ...]:
    """The folders manifest paths may point into besides the project folder (a `DataConfig`)."""
    return (data.dynamic.root, data.static.root, data.prepared_dir)
