"""The unlabelled pretraining pool: new people, no label anywhere, same bytes for the same seed, read by
pretraining only (prepare -> pool manifests -> pretrain on them; fine-tuning and evaluation never touch them)."""
from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import MICRO_MODEL, ROOT, run_module
from s4d.config import ConfigError, SyntheticConfig, load_params
from s4d.data.labels import classes_of
from s4d.data.manifest import read_manifest
from s4d.data.readers import read_pool
from s4d.data.synthetic.face import EMOTIONS, RAFDB_LABEL
from s4d.data.synthetic.generate import generate
from s4d.data.synthetic.plan import image_plan, pool_identity_ids, pool_plans, video_plan
from s4d.data.synthetic.sample import identity_of

MEDIA = ROOT.parent / "shared" / "media"
MICRO = SyntheticConfig(video_identities=5, clips_per_identity=2, num_frames=4, frame_size=48, image_size=40,
                        image_identity_ratio=2.0, images_per_identity=2, pool_identity_ratio=2.0,
                        pool_clips_per_identity=1, pool_images_per_identity=2)
POOL_ON = ["data.pool.reader=synthetic_pool"]
ENV = {"OMP_NUM_THREADS": "1"}


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def jpeg_markers(data: bytes) -> list:
    """The JPEG segment markers up to the start of the image data (SOS)."""
    assert data[:2] == b"\xff\xd8"
    markers, at = [0xD8], 2
    while markers[-1] != 0xDA:
        assert data[at] == 0xFF
        markers.append(data[at + 1])
        at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
    return markers


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """A project folder whose data/synthetic holds the micro dataset and its pool (params.yaml's data roots)."""
    project = tmp_path_factory.mktemp("pool")
    generate(MICRO, root=project / "data/synthetic", workers=1, progress=False)
    (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    return project


def test_pool_people_are_new_and_look_different(synthetic):
    labelled = {s.identity for s in video_plan(MICRO)} | {s.identity for s in image_plan(MICRO)}
    clips, stills = pool_plans(MICRO)
    pool = {s.identity for s in clips} | {s.identity for s in stills}
    assert len(labelled) == 5 + 10 and len(pool) == 2 * 15 and pool.isdisjoint(labelled)
    assert pool == set(pool_identity_ids(MICRO))
    assert len(clips) == 30 and len(stills) == 60

    # the files say the same: identities.csv of the pool against the labelled sets' identity lists
    def ids(path, column="identity"):
        with open(path, newline="") as f:
            return {int(r[column]) for r in csv.DictReader(f)}
    data = synthetic / "data/synthetic"
    on_disk = ids(data / "pool/identities.csv")
    assert on_disk == pool
    assert on_disk.isdisjoint(ids(data / "videos/identities.csv") | ids(data / "images/identities.csv"))

    # and the rendered people differ: no pool face shares its shape and colours with a labelled face
    def looks(i):
        idt = identity_of(MICRO.seed, i, MICRO.glasses_rate)
        return (idt.face_width, idt.face_height, *idt.skin, *idt.hair_color, idt.eye_sep, idt.mouth_width)
    labelled_looks = {looks(i) for i in labelled}
    assert all(looks(i) not in labelled_looks for i in pool)
    assert len({looks(i) for i in pool}) == len(pool)


def test_no_label_is_written_anywhere_in_the_pool(synthetic):
    data = synthetic / "data/synthetic"
    clips, stills = pool_plans(MICRO)
    hidden = [s.emotion for s in clips] + [s.emotion for s in stills]
    assert len(Counter(hidden)) >= 5  # the pool shows varied expressions, so a leak would be visible

    files = sorted(p for p in (data / "pool").rglob("*") if p.is_file())
    assert len(files) == 1 + 30 * MICRO.num_frames + 60
    words = [*EMOTIONS, "happiness", "sadness", "anger", "label", "emotion"]
    for path in files:
        text = str(path.relative_to(data)).lower()
        if path.suffix == ".csv":
            text += path.read_text().lower()
        else:  # a JPEG carries no comment or EXIF segment that could hold one
            assert jpeg_markers(path.read_bytes()) == [0xD8, 0xE0, 0xDB, 0xDB, 0xC0, 0xC4, 0xC4, 0xC4, 0xC4, 0xDA], path
        assert not [w for w in words if w in text], path
    # names follow neither expression nor person: 00001... in a shuffled order
    assert sorted(p.name for p in (data / "pool/videos").iterdir()) == [f"{i:05d}" for i in range(1, 31)]
    assert sorted(p.name for p in (data / "pool/images").iterdir()) == [f"{i:05d}.jpg" for i in range(1, 61)]

    # the one list file holds names and identities, and neither column carries the expression
    with open(data / "pool/identities.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["name", "identity"] and len(table) == 90
    dfew = [str(EMOTIONS.index(e)) for e in hidden]
    rafdb = [str(RAFDB_LABEL[e]) for e in hidden]
    for column in ("name", "identity"):
        values = [r[column] for r in table]
        assert values != dfew and values != rafdb
    by_person = {}
    for r, emotion in zip(table, hidden):
        by_person.setdefault(r["identity"], set()).add(emotion)
    assert any(len(e) > 1 for e in by_person.values())  # one person, several expressions: identity is no label

    meta = json.loads((data / "meta.json").read_text())
    assert meta["pool"] == {"identities": 30, "first_identity": 15, "clips": 30, "images": 60}


def test_same_seed_same_pool_bytes_and_the_labelled_set_is_untouched(synthetic, tmp_path):
    first = synthetic / "data/synthetic"
    again = tmp_path / "again"
    generate(MICRO, root=again, workers=2, progress=False)  # other worker count, same bytes
    assert tree(first / "pool") == tree(again / "pool")
    no_pool = tmp_path / "no_pool"
    generate(dataclasses.replace(MICRO, pool_identity_ratio=0.0), root=no_pool, workers=1, progress=False)
    for part in ("videos", "images"):  # adding the pool leaves every labelled byte as it was
        assert tree(first / part) == tree(no_pool / part)
    assert tree(no_pool / "pool") == {"identities.csv": b"name,identity\n"}
    other_seed = dataclasses.replace(MICRO, seed=1)
    from s4d.data.synthetic.sample import clip_jpegs, image_jpeg
    assert clip_jpegs(other_seed, 0, "pool_clip") != clip_jpegs(MICRO, 0, "pool_clip")
    assert image_jpeg(MICRO, 0, "pool_image") == (first / "pool/images/00001.jpg").read_bytes()


def test_a_users_folder_of_unlabelled_media(tmp_path):
    """data.pool.reader: folder takes videos (files or frame folders) and stills at any depth, no classes."""
    root = tmp_path / "pool"
    (root / "videos/day1").mkdir(parents=True)
    shutil.copy(MEDIA / "single_face.mp4", root / "videos/day1/talk.mp4")
    clip = root / "videos/day2/clip_a"
    clip.mkdir(parents=True)
    for k in range(3):
        shutil.copy(MEDIA / "0-f1-su-ph.jpg", clip / f"{k:03d}.jpg")
    (root / "images/web").mkdir(parents=True)
    shutil.copy(MEDIA / "45-m7-di-ph.jpg", root / "images/web/a.jpg")
    shutil.copy(MEDIA / "multi_face.jpg", root / "images/b.jpg")
    (root / "images/.DS_Store").write_bytes(b"hidden files are skipped")
    elsewhere = tmp_path / "elsewhere/clip_b"
    shutil.copytree(clip, elsewhere)
    (root / "videos/linked").symlink_to(elsewhere)  # a pool assembled from links is read through them
    (root / "videos/day2/again").symlink_to(clip)  # each real folder once (the first in name order)
    (root / "videos/day2/loop").symlink_to(root / "videos")  # and a link loop ends
    rows = read_pool("folder", root).set_index("id")
    assert sorted(rows.index) == ["images/b.jpg", "images/web/a.jpg", "videos/day1/talk.mp4", "videos/day2/again",
                                  "videos/linked"]
    assert set(rows["label"]) == {-1} and set(rows["label_set"]) == set(rows["label_name"]) == {"unlabelled"}
    assert rows.loc["videos/linked", "num_frames"] == 3 and rows.loc["images/b.jpg", "modality"] == "image"
    talk = rows.loc["videos/day1/talk.mp4"]
    assert talk["modality"] == "video" and talk["num_frames"] > 10
    with pytest.raises(KeyError, match="unknown label set 'unlabelled'"):
        classes_of("unlabelled")  # nothing can build a head on pool rows

    (root / "images/notes.txt").write_text("not media")
    with pytest.raises(ValueError, match="images/notes.txt: unsupported file type"):
        read_pool("folder", root)
    with pytest.raises(ValueError, match="neither .* is a folder"):
        read_pool("folder", tmp_path / "nothing")
    with pytest.raises(KeyError, match="unknown pool reader 'rafdb'"):
        read_pool("rafdb", root)


def test_params_name_a_pool_that_pretraining_needs(tmp_path):
    params = load_params(ROOT / "params.yaml", ["pretrain.data=both", *POOL_ON])
    assert (params.pretrain.data, params.data.pool.reader) == ("both", "synthetic_pool")
    with pytest.raises(ConfigError, match="pretrain.data: pool needs a pool, but data.pool.reader is none"):
        load_params(ROOT / "params.yaml", ["pretrain.data=pool", "data.pool.reader=none"])
    with pytest.raises(ConfigError, match="data.pool.reader: 'rafdb' is not one of"):
        load_params(ROOT / "params.yaml", ["data.pool.reader=rafdb"])


def prepare(project: Path, *overrides: str) -> None:
    done = run_module("s4d.data.prepare", *overrides, cwd=project, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]


def prepare_here(*overrides: str) -> None:
    """The prepare command's entry point in this process (the working directory is the project)."""
    from s4d.data.prepare import main

    assert main(list(overrides)) == 0


def test_prepare_writes_pool_manifests_and_pretraining_reads_what_pretrain_data_says(synthetic, monkeypatch):
    from s4d.train.pretrain import manifest_files, train_manifests

    prepared = synthetic / "artifacts/prepared"
    monkeypatch.chdir(synthetic)
    prepare_here(*POOL_ON)
    videos, images = read_manifest(prepared / "pool_dynamic.csv"), read_manifest(prepared / "pool_static.csv")
    assert (len(videos), len(images)) == (30, 60)
    for rows in (videos, images):
        assert set(rows["label"]) == {-1} and set(rows["label_set"]) == {"unlabelled"}
        assert set(rows["split"]) == {"train"} and set(rows["source"]) == {"synthetic_pool"}
        assert set(rows["group"].astype(int)) <= set(pool_identity_ids(MICRO))
    assert set(videos["num_frames"]) == {MICRO.num_frames} and set(videos["modality"]) == {"video"}
    summary = json.loads((prepared / "summary.json").read_text())
    assert summary["pool_dynamic"]["counts"] == {"train": {"unlabelled": 30}}
    labelled = read_manifest(prepared / "dynamic.csv")
    assert set(labelled["label"]) <= set(range(7))  # the labelled manifests are as before

    train = {"labelled": (len(labelled[labelled["split"] == "train"]), None), "pool": (30, 60)}
    for data in ("labelled", "pool", "both"):
        params = load_params("params.yaml", [f"pretrain.data={data}", *POOL_ON])
        names = [p.name for p in manifest_files(params)]
        v, i = train_manifests(params)
        assert names == {"labelled": ["dynamic.csv", "static.csv"], "pool": ["pool_dynamic.csv", "pool_static.csv"],
                         "both": ["dynamic.csv", "static.csv", "pool_dynamic.csv", "pool_static.csv"]}[data]
        assert (v["label"] < 0).all() if data == "pool" else (v["label"] >= 0).any()
        if data != "labelled":
            assert (v["label"] < 0).sum() == 30 and (i["label"] < 0).sum() == 60
        if data == "labelled":
            assert len(v) == train["labelled"][0] and (i["label"] >= 0).all()

    # switched off, the pool manifests go (a stale pool must not be pretrained on) and pretrain.data=pool says why
    prepare_here("data.pool.reader=none")
    assert not (prepared / "pool_dynamic.csv").exists() and not (prepared / "pool_static.csv").exists()
    with pytest.raises(ValueError, match="holds no pool manifest"):
        manifest_files(load_params("params.yaml", ["pretrain.data=pool", *POOL_ON]))


@pytest.mark.slow
def test_pretrain_on_the_pool_then_finetune_and_evaluate_never_read_it(synthetic, tmp_path):
    """The documented commands: prepare with the pool, pretrain on it, then fine-tune from that MAE and
    evaluate with the pool's files gone and its manifests garbage: both only read the labelled sets."""
    project = tmp_path / "project"
    shutil.copytree(synthetic, project)
    prepare(project, *POOL_ON)
    run = [*MICRO_MODEL, "data.workers=2", "data.frame_stride=1", *POOL_ON, "pretrain.data=pool",
           "pretrain.epochs=1", "pretrain.batch_size=4", "pretrain.image_batch_size=8", "pretrain.warmup_epochs=0",
           "finetune.init=pretrain", "finetune.epochs=1", "finetune.batch_size=4", "finetune.image_batch_size=8",
           "evaluate.batch_size=8"]
    done = run_module("s4d.train.pretrain", *run, cwd=project, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    with (project / "artifacts/pretrain/log.csv").open() as f:
        log = list(csv.DictReader(f))
    # 30 pool clips / 4 per step = 7 video steps and as many image steps (image_step_share 0.5); the labelled
    # train split (fewer clips) would give fewer
    assert Counter(r["modality"] for r in log) == {"video": 7, "image": 7}
    assert all(np.isfinite(float(r["loss"])) for r in log)

    shutil.rmtree(project / "data/synthetic/pool")
    for name in ("pool_dynamic.csv", "pool_static.csv"):
        (project / "artifacts/prepared" / name).write_bytes(b"\xff not a manifest \x00")
    for module in ("s4d.train.finetune", "s4d.train.evaluate"):
        done = run_module(module, *run, cwd=project, env=ENV)
        assert done.returncode == 0, (module, done.stderr[-3000:])
    metrics = json.loads((project / "artifacts/eval/metrics.json").read_text())
    assert metrics["dynamic"]["n"] == sum(s.split == "test" for s in video_plan(MICRO))
