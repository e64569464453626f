"""Write the synthetic dataset to disk: videos in the DFEW layout, still images in the RAF-DB layout.

    <root>/videos/frames/00001/00001.jpg ...                      clip ids from 00001, frames from 00001.jpg
    <root>/videos/EmoLabel_DataSplit/train(single-labeled)/set_1.csv   video_name,label  (train + val clips)
    <root>/videos/EmoLabel_DataSplit/test(single-labeled)/set_1.csv    video_name,label  (0-based DFEW order)
    <root>/videos/identities.csv                                  video_name,identity,split
    <root>/images/Image/aligned/train_00001_aligned.jpg ...       (val images are named train_* too)
    <root>/images/EmoLabel/list_patition_label.txt                "train_00001.jpg 5" (RAF-DB labels 1..7)
    <root>/images/identities.csv                                  image_name,identity,split
    <root>/pool/videos/00001/00001.jpg ...                        unlabelled pool clips (pretraining only)
    <root>/pool/images/00001.jpg ...                              unlabelled pool stills
    <root>/pool/identities.csv                                    name,identity (name: path under pool/)
    <root>/meta.json                                              config, version, counts (written last)

Everything is built in `<root>.tmp-<pid>` and renamed into place at the end, so a half-written dataset never
looks complete. Each sample is seeded from (seed, kind, index): the same config gives byte-identical files
whatever the number of workers. The pool's expressions are never written: its names are shuffled, its only
list holds identities, and meta.json counts it without classes.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
from collections import Counter
from pathlib import Path

import cv2
from tqdm import tqdm

from s4d.config import SyntheticConfig
from s4d.data.synthetic.face import EMOTIONS, RAFDB_LABEL
from s4d.data.synthetic.plan import SPLITS, image_plan, pool_identity_ids, pool_plans, video_plan
from s4d.data.synthetic.sample import clip_jpegs, image_jpeg
from s4d.io import write_bytes, write_json

GENERATOR = "s4d.data.synthetic"
VERSION = "1.3"  # bump whenever the same config would render different bytes
TRAIN_LIST = Path("videos/EmoLabel_DataSplit/train(single-labeled)/set_1.csv")
TEST_LIST = Path("videos/EmoLabel_DataSplit/test(single-labeled)/set_1.csv")
IMAGE_LABELS = Path("images/EmoLabel/list_patition_label.txt")


def as_config(cfg) -> SyntheticConfig:
    """Accept the dataclass, a plain dict or an OmegaConf node of the same fields."""
    return cfg if isinstance(cfg, SyntheticConfig) else SyntheticConfig(**dict(cfg))


def clip_dir(root: Path, name: str) -> Path:
    return root / "videos" / "frames" / name


def image_path(root: Path, name: str) -> Path:
    return root / "images" / "Image" / "aligned" / f"{name}_aligned.jpg"


POOL_CLIPS, POOL_IMAGES = "videos", "images"  # under <root>/pool, the layout of the `folder` pool reader


def pool_names(cfg: SyntheticConfig) -> tuple:
    """Paths under <root>/pool of (pool clips, pool stills), in plan order."""
    clips, images = pool_plans(cfg)
    return [f"{POOL_CLIPS}/{s.name}" for s in clips], [f"{POOL_IMAGES}/{s.name}.jpg" for s in images]


# ------------------------------------------------------------------------------------------------ meta
def counts(samples) -> dict:
    per_split = {split: Counter() for split in SPLITS}
    people = {split: set() for split in SPLITS}
    for s in samples:
        per_split[s.split][s.emotion] += 1
        people[s.split].add(s.identity)
    return {
        "total": len(samples),
        "per_split": {split: sum(per_split[split].values()) for split in SPLITS},
        "per_class": {split: {e: per_split[split][e] for e in EMOTIONS} for split in SPLITS},
        "identities": {split: len(people[split]) for split in SPLITS},
    }


def build_meta(cfg: SyntheticConfig) -> dict:
    """Everything a reader may want to check; a pure function of the config (no timestamps: reproducible)."""
    return {
        "generator": GENERATOR,
        "version": VERSION,
        "config": dataclasses.asdict(cfg),
        "labels": {
            "dfew": {e: i for i, e in enumerate(EMOTIONS)},
            "rafdb": dict(sorted(RAFDB_LABEL.items(), key=lambda kv: kv[1])),
        },
        "videos": {"frames_per_clip": cfg.num_frames, "frame_size": cfg.frame_size, **counts(video_plan(cfg))},
        "images": {"image_size": cfg.image_size, **counts(image_plan(cfg))},
        # counts only: a pool sample's expression appears nowhere on disk
        "pool": {"identities": len(pool_identity_ids(cfg)), "first_identity": pool_identity_ids(cfg).start,
                 "clips": len(pool_plans(cfg)[0]), "images": len(pool_plans(cfg)[1])},
    }


def same_dataset(a: dict, b: dict) -> bool:
    """Equal up to where it lives (the root path is not part of the content)."""
    def strip(meta: dict) -> dict:
        meta = json.loads(json.dumps(meta))
        meta.get("config", {}).pop("root", None)
        return meta
    return strip(a) == strip(b)


def read_meta(root: Path) -> dict | None:
    try:
        return json.loads((root / "meta.json").read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------- list files
def write_lists(out: Path, cfg: SyntheticConfig) -> None:
    clips = video_plan(cfg)
    train = ["video_name,label"] + [f"{c.name},{EMOTIONS.index(c.emotion)}" for c in clips if c.split != "test"]
    test = ["video_name,label"] + [f"{c.name},{EMOTIONS.index(c.emotion)}" for c in clips if c.split == "test"]
    who = ["video_name,identity,split"] + [f"{c.name},{c.identity},{c.split}" for c in clips]
    images = image_plan(cfg)
    labels = [f"{s.name}.jpg {RAFDB_LABEL[s.emotion]}" for s in images]
    image_who = ["image_name,identity,split"] + [f"{s.name}.jpg,{s.identity},{s.split}" for s in images]
    pool = ["name,identity"] + [f"{name},{s.identity}" for names, plan in zip(pool_names(cfg), pool_plans(cfg))
                                for name, s in zip(names, plan)]
    for rel, lines in ((TRAIN_LIST, train), (TEST_LIST, test), (Path("videos/identities.csv"), who),
                       (IMAGE_LABELS, labels), (Path("images/identities.csv"), image_who),
                       (Path("pool/identities.csv"), pool)):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        write_bytes(out / rel, ("\n".join(lines) + "\n").encode())


# -------------------------------------------------------------------------------------------- workers
_worker_state: dict = {}


def _init_worker(cfg: SyntheticConfig, out: str | None) -> None:
    cv2.setNumThreads(1)  # parallelism comes from the processes
    _worker_state.update(cfg=cfg, out=Path(out) if out else None)


def _write_sample(task: tuple) -> int:
    kind, index = task
    cfg, out = _worker_state["cfg"], _worker_state["out"]
    if kind in ("clip", "pool_clip"):
        folder = clip_dir(out, video_plan(cfg)[index].name) if kind == "clip" else \
            out / "pool" / POOL_CLIPS / pool_plans(cfg)[0][index].name
        folder.mkdir(parents=True, exist_ok=True)
        for k, data in enumerate(clip_jpegs(cfg, index, kind)):
            write_bytes(folder / f"{k + 1:05d}.jpg", data)
        return cfg.num_frames
    path = image_path(out, image_plan(cfg)[index].name) if kind == "image" else \
        out / "pool" / POOL_IMAGES / f"{pool_plans(cfg)[1][index].name}.jpg"
    write_bytes(path, image_jpeg(cfg, index, kind))
    return 1


def map_samples(fn, tasks: list, cfg: SyntheticConfig, workers: int | None, out: Path | None = None,
                desc: str = "synthetic", progress: bool = True) -> list:
    """fn(task) over tasks in worker processes (results in task order), with a progress bar.

    Workers are spawned, not forked, so a parent that already runs torch threads is safe.
    """
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(tasks), desc=desc, unit="sample", disable=not progress, mininterval=1.0)
    results = []
    if workers <= 1:
        threads = cv2.getNumThreads()
        _init_worker(cfg, str(out) if out else None)
        try:
            for task in tasks:
                results.append(fn(task))
                bar.update()
        finally:
            cv2.setNumThreads(threads)
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg, str(out) if out else None)) as pool:
            for result in pool.imap(fn, tasks, chunksize=2):
                results.append(result)
                bar.update()
    bar.close()
    return results


# ------------------------------------------------------------------------------------------- generate
def _remove_stale_builds(root: Path) -> None:
    """Delete `<root>.tmp-<pid>` folders left by runs that died (their process no longer exists)."""
    for stale in root.parent.glob(f"{root.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                shutil.rmtree(stale, ignore_errors=True)
            except PermissionError:
                pass


def generate(cfg: SyntheticConfig, root: Path | None = None, workers: int | None = None,
             progress: bool = True) -> dict:
    """Render the whole dataset under `root` (default cfg.root) and return its meta.

    Idempotent: if `root` already holds a complete dataset with the same config and version, nothing is
    rendered. An existing dataset with a different config is replaced; any other existing folder is refused.
    """
    cfg = as_config(cfg)
    root = Path(root if root is not None else cfg.root)
    cfg = dataclasses.replace(cfg, root=str(root))
    meta = build_meta(cfg)
    existing = read_meta(root)
    if existing is not None and same_dataset(existing, meta):
        print(f"synthetic dataset already complete at {root} (same config, version {VERSION}): skipping")
        return existing
    if root.exists() and existing is None and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not a synthetic dataset; refusing to overwrite it")

    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(root)
    build = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    write_lists(build, cfg)
    for folder in ("images/Image/aligned", f"pool/{POOL_CLIPS}", f"pool/{POOL_IMAGES}"):
        (build / folder).mkdir(parents=True, exist_ok=True)
    pool_clips, pool_images = pool_plans(cfg)
    tasks = [("clip", i) for i in range(len(video_plan(cfg)))] + [("image", i) for i in range(len(image_plan(cfg)))]
    tasks += [("pool_clip", i) for i in range(len(pool_clips))] + [("pool_image", i) for i in range(len(pool_images))]
    map_samples(_write_sample, tasks, cfg, workers, out=build, progress=progress)
    write_json(build / "meta.json", meta)

    if root.exists():  # an older dataset (different config/version): swap, then delete it
        old = root.with_name(f"{root.name}.old-{os.getpid()}")
        os.replace(root, old)
        os.replace(build, root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(build, root)
    return meta
