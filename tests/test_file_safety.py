"""Nothing lost, every error named: what the stages delete, replace and accept, tried with the user commands.

Checkpoint folders on a mount point (tmpfs) and through a symlink keep files the project did not write; a
changed performance knob resumes, a changed optimisation setting refuses and keeps the run (`--fresh` moves
it aside); a full disk during a checkpoint says so and keeps the previous one; a killed fine-tune keeps the
previous model; a failing prepare keeps both manifests; bad params, split files and manifests give one line
naming the file (and line or key), exit status 1 or 2 and no traceback.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import toydata
from conftest import MICRO_MODEL, ROOT, run_module

# 8 steps (4 per epoch), a checkpoint every 2: ~2.1 MB each on the micro model.
PRETRAIN = MICRO_MODEL + ["pretrain.batch_size=8", "pretrain.image_batch_size=16", "pretrain.epochs=2",
                          "pretrain.checkpoint_every=2", "pretrain.keep_last=2", "pretrain.base_lr=0.2",
                          "pretrain.zero_stage=2"]
ENV = {"OMP_NUM_THREADS": "1"}
KILL_AT_4 = {**ENV, "S4D_STEP_HOOK": "4:kill"}  # after step 4 and its checkpoint


def pretrain(project: Path, *extra: str, env: dict = ENV):
    return run_module("s4d.train.pretrain", *PRETRAIN, *extra, cwd=project, env=env)


def error_line(done: subprocess.CompletedProcess, *needles: str) -> str:
    """The one stderr line holding every needle (progress bars and library warnings may surround it);
    and no traceback anywhere."""
    text = (done.stderr + done.stdout).replace("\r", "\n")
    assert "Traceback" not in text, text[-3000:]
    lines = [line for line in text.splitlines() if all(n in line for n in needles)]
    assert len(lines) == 1, (needles, text[-3000:])
    return lines[0]


def logged_steps(project: Path) -> list[int]:
    import csv

    with (project / "artifacts/pretrain/log.csv").open() as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    """A tmpfs mounted on folder for the block; skips the test where this sandbox may not mount."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here ({done.stderr.strip()}); the symlinked-folder "
                    f"test still covers a folder the project did not create")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


# --------------------------------------------------------------------------------------------- pretraining
@pytest.mark.slow
def test_mount_point_full_disk_and_changed_knob(micro_project):
    """Checkpoints on a 5 MB tmpfs holding a foreign file: the fresh start keeps the file; the third
    checkpoint does not fit and the run stops with "no space left" keeping step 4; with space added, a
    rerun with another data.workers resumes from step 4 and finishes."""
    ckpt = micro_project / "artifacts/pretrain/checkpoints"
    with tmpfs(ckpt, "5m"):
        (ckpt / "foreign.txt").write_text("not the project's")
        full = pretrain(micro_project)
        assert full.returncode == 1, full.stderr[-3000:]
        line = error_line(full, "no space left on artifacts/pretrain/checkpoints")
        assert "while writing checkpoint step_00000006" in line and "previous checkpoint step_00000004 kept" in line
        assert (ckpt / "latest").read_text() == "step_00000004"
        assert sorted(p.name for p in ckpt.iterdir()) == [".s4d-own.json", "foreign.txt", "latest", "step_00000002",
                                                          "step_00000004", "zero_to_fp32.py", "zero_to_torch.py"]
        assert (ckpt / "foreign.txt").read_text() == "not the project's"

        subprocess.run(["mount", "-o", "remount,size=20m", str(ckpt)], check=True)
        resumed = pretrain(micro_project, "data.workers=1")  # a performance knob: not part of the run
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resuming from step 4 of 8" in resumed.stdout
        assert logged_steps(micro_project) == list(range(1, 9))
        assert (ckpt / "latest").read_text() == "step_00000008"
        assert (ckpt / "foreign.txt").read_text() == "not the project's"
        assert os.path.ismount(ckpt)
        assert (micro_project / "artifacts/pretrain/model.pt").is_file()


@pytest.mark.slow
def test_symlinked_folder_changed_setting_refuses_then_fresh_moves_aside(micro_project, tmp_path):
    """A killed run in a symlinked checkpoint folder: another pretrain.base_lr refuses (exit 2, the key and
    --fresh named) and keeps every checkpoint; --fresh moves the run aside and starts over."""
    elsewhere = tmp_path / "bigdisk" / "ckpt"
    elsewhere.mkdir(parents=True)
    (elsewhere / "foreign.txt").write_text("not the project's")
    link = micro_project / "artifacts/pretrain/checkpoints"
    link.parent.mkdir(parents=True)
    link.symlink_to(elsewhere, target_is_directory=True)

    killed = pretrain(micro_project, env=KILL_AT_4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    before = sorted(p.name for p in elsewhere.iterdir())
    assert "step_00000004" in before and (elsewhere / "latest").read_text() == "step_00000004"

    refused = pretrain(micro_project, "pretrain.base_lr=0.1")
    assert refused.returncode == 2, refused.stderr[-3000:]
    line = error_line(refused, "pretrain refused")
    assert "unfinished run (step 4)" in line and "pretrain.base_lr: 0.2 -> 0.1" in line and "--fresh" in line
    assert sorted(p.name for p in elsewhere.iterdir()) == before  # nothing deleted, nothing moved

    fresh = pretrain(micro_project, "pretrain.base_lr=0.1", "--fresh")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "resuming" not in fresh.stdout and "the unfinished run was moved to" in fresh.stdout
    assert link.is_symlink() and (elsewhere / "foreign.txt").read_text() == "not the project's"
    aside = [p for p in elsewhere.iterdir() if p.name.startswith("previous-")]
    assert len(aside) == 1
    assert (aside[0] / "latest").read_text() == "step_00000004" and (aside[0] / "step_00000004").is_dir()
    assert (aside[0] / "log.csv").read_text().splitlines()[-1].startswith("4,")  # its loss curve went along
    assert (elsewhere / "latest").read_text() == "step_00000008"
    assert logged_steps(micro_project) == list(range(1, 9))


# --------------------------------------------------------------------------------------------- fine-tuning
@pytest.mark.slow
def test_killed_finetune_rerun_keeps_the_previous_model(tmp_path_factory):
    """The previous run's model.pt and summary.json stay byte for byte while a rerun trains (its outputs go
    to a staging folder, its best model to checkpoints/); SIGKILL after the rerun has selected a model of its
    own leaves them whole; the same command then resumes and replaces them."""
    root = toydata.toy_root(tmp_path_factory)
    out = root / "runs" / "keep"
    args = ["--out", str(out), "--params", str(ROOT / "params.yaml"), *toydata.SMALL_MODEL, *toydata.SMALL_RUN,
            "data.prepared_dir=prepared"]
    first = run_module("s4d.train.finetune", *args, "finetune.epochs=1", cwd=root, env=ENV)
    assert first.returncode == 0, first.stderr[-3000:]
    model, summary = (out / "model.pt").read_bytes(), (out / "summary.json").read_bytes()
    steps_per_epoch = len((out / "train_log.csv").read_text().strip().splitlines()) - 1

    rerun = [*args, "finetune.epochs=3", "finetune.patience=3"]
    kill = {**ENV, "S4D_STEP_HOOK": f"{steps_per_epoch + 1}:kill"}  # after epoch 1's validation chose a model
    killed = run_module("s4d.train.finetune", *rerun, cwd=root, env=kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (out / "checkpoints" / "best.pt").is_file() and list(out.glob(".partial-*/val_log.csv"))
    assert (out / "model.pt").read_bytes() == model and (out / "summary.json").read_bytes() == summary

    again = run_module("s4d.train.finetune", *rerun, cwd=root, env=ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from step" in again.stdout
    assert (out / "model.pt").read_bytes() != model
    assert '"epochs_run": 3' in (out / "summary.json").read_text()
    assert not list(out.glob(".partial-*")) and not (out / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, pytest.param(2, marks=pytest.mark.heavy)])
def test_finetune_full_disk_names_it_keeps_the_checkpoint_and_resumes(tmp_path_factory, nproc):
    """Fine-tuning's checkpoints on a 3.5 MB tmpfs holding a foreign file (a step file of the small model is
    ~1.44 MB; two are kept): the third does not fit, and the run stops with one line naming the folder, the
    checkpoint it was writing and the one kept, leaving no partial file (with 2 ranks, both stop); with space
    added, the same command resumes from step 2 and finishes; the foreign file and the mount point stay."""
    root = toydata.toy_root(tmp_path_factory)
    out = root / "runs" / f"full-disk-{nproc}"
    ckpt = out / "checkpoints"
    args = ["--out", str(out), "--params", str(ROOT / "params.yaml"), *toydata.SMALL_MODEL, *toydata.SMALL_RUN,
            "data.prepared_dir=prepared", "data.workers=2", "finetune.epochs=1", "finetune.checkpoint_every=1",
            f"finetune.nproc_per_node={nproc}"]
    with tmpfs(ckpt, "3500k"):
        (ckpt / "foreign.txt").write_text("not the project's")
        full = run_module("s4d.train.finetune", *args, cwd=root, env=ENV)
        assert full.returncode == 2, full.stderr[-3000:]
        line = error_line(full, f"no space left on {ckpt}")
        assert line.startswith("error: ") and "while writing checkpoint step_00000003.pt" in line, line
        assert "previous checkpoint step_00000002.pt kept" in line, line
        assert sorted(p.name for p in ckpt.iterdir()) == ["foreign.txt", "latest", "step_00000001.pt",
                                                          "step_00000002.pt"]  # no partial file left
        assert (ckpt / "latest").read_text().strip() == "step_00000002.pt"
        assert not (out / "model.pt").exists()

        subprocess.run(["mount", "-o", "remount,size=20m", str(ckpt)], check=True)
        resumed = run_module("s4d.train.finetune", *args, cwd=root, env=ENV)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resuming from step 2 of" in resumed.stdout
        summary = json.loads((out / "summary.json").read_text())
        assert summary["resumed_from_step"] == 2 and summary["epochs_run"] == 1
        assert summary["steps"] == len((out / "train_log.csv").read_text().strip().splitlines()) - 1 > 3
        assert (out / "model.pt").stat().st_size > 100_000  # moved off the tmpfs: another file system
        assert os.path.ismount(ckpt) and sorted(p.name for p in ckpt.iterdir()) == ["foreign.txt"]
        assert (ckpt / "foreign.txt").read_text() == "not the project's"


# --------------------------------------------------------------------------------------------- prepare
def write_folder_dataset(root: Path, clips: int, images: int) -> None:
    """A `folder` dataset: videos as frame folders and stills, two classes."""
    rng = np.random.default_rng(0)
    for i in range(clips):
        folder = root / "videos" / ("happy", "sad")[i % 2] / f"clip{i:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for t in range(4):
            cv2.imwrite(str(folder / f"{t:05d}.jpg"), rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    for i in range(images):
        path = root / "images" / ("happy", "sad")[i % 2] / f"img{i:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))


FOLDER_DATA = ["data.dynamic.reader=folder", "data.dynamic.root=ds/videos", "data.static.reader=folder",
               "data.static.root=ds/images", "data.val_fraction=0.25"]


def test_failing_image_side_leaves_both_manifests(tmp_path, monkeypatch, capsys):
    from s4d.data.prepare import main

    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    write_folder_dataset(tmp_path / "ds", clips=8, images=8)
    assert main(FOLDER_DATA) == 0
    prepared = tmp_path / "artifacts/prepared"
    before = {name: (prepared / name).read_bytes() for name in ("dynamic.csv", "static.csv", "summary.json")}

    write_folder_dataset(tmp_path / "ds", clips=12, images=0)  # the video side changes...
    (tmp_path / "ds/images/sad/img01.jpg").write_bytes(b"")  # ...and the image side breaks
    capsys.readouterr()
    assert main(FOLDER_DATA) == 1
    err = capsys.readouterr().err
    assert "prepare failed" in err and "img01.jpg" in err
    assert {name: (prepared / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in prepared.iterdir()) == sorted(before)  # no staging folder left


MEDIA = ROOT.parent / "shared" / "media"


@pytest.mark.slow
@pytest.mark.media
@pytest.mark.skipif(not (MEDIA / "single_face.mp4").is_file(), reason=f"no footage at {MEDIA}")
def test_failing_prepare_keeps_the_previous_face_crops(tmp_path, monkeypatch, capsys):
    """Raw videos go through face cropping. A rerun with another data.face_size re-crops every clip, then
    fails on the image side: the previous crops, reports, manifests and summary stay byte for byte, and
    nothing is left beside them. Fixed, the rerun swaps in the new crops and manifests together."""
    from s4d.data.manifest import read_manifest
    from s4d.data.prepare import main

    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    for i, label in enumerate(("happy", "happy", "sad", "sad")):
        (tmp_path / "ds/videos" / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(MEDIA / "single_face.mp4", tmp_path / "ds/videos" / label / f"clip{i}.mp4")
    write_folder_dataset(tmp_path / "ds", clips=0, images=8)
    prepared = tmp_path / "artifacts/prepared"

    def snapshot() -> dict[str, bytes]:
        return {str(p.relative_to(prepared)): p.read_bytes() for p in sorted(prepared.rglob("*")) if p.is_file()}

    def crop_size(manifest: str) -> set:
        paths = read_manifest(prepared / manifest)["path"]
        return {cv2.imread(str(Path(p) / "00001.jpg")).shape[:2] for p in paths}

    assert main(FOLDER_DATA) == 0
    assert crop_size("dynamic.csv") == {(112, 112)}  # params.yaml's data.face_size
    before = snapshot()
    assert "faces/faces_dynamic.json" in before and sum(n.endswith(".jpg") for n in before) > 4 * 20

    (tmp_path / "ds/images/sad/img01.jpg").write_bytes(b"")  # the image side breaks after the crops are made
    capsys.readouterr()
    assert main([*FOLDER_DATA, "data.face_size=48"]) == 1
    err = capsys.readouterr().err
    assert "prepare failed" in err and "img01.jpg" in err
    assert snapshot() == before  # crops, reports, manifests and summary as they were
    assert sorted(p.name for p in prepared.iterdir()) == ["dynamic.csv", "faces", "static.csv", "summary.json"]

    write_folder_dataset(tmp_path / "ds", clips=0, images=8)
    assert main([*FOLDER_DATA, "data.face_size=48"]) == 0
    assert crop_size("dynamic.csv") == {(48, 48)}
    assert set(read_manifest(prepared / "dynamic.csv")["height"]) == {48}
    assert sorted(p.name for p in prepared.iterdir()) == ["dynamic.csv", "faces", "static.csv", "summary.json"]
    summary = (prepared / "summary.json").read_text()
    assert '"report": "artifacts/prepared/faces/faces_dynamic.json"' in summary

    crops = snapshot()
    assert main([*FOLDER_DATA, "data.face_size=48"]) == 0  # nothing changed: every clip is reused, not re-cropped
    faces = json.loads((prepared / "faces/faces_dynamic.json").read_text())
    assert (faces["reused"], faces["processed"], faces["written"]) == (4, 0, 4)
    assert {k: v for k, v in snapshot().items() if k.endswith(".jpg")} == {
        k: v for k, v in crops.items() if k.endswith(".jpg")}


def test_non_utf8_split_file_names_file_and_line(tmp_path, monkeypatch, capsys):
    from s4d.data.prepare import main

    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    write_folder_dataset(tmp_path / "ds", clips=4, images=0)
    raf = tmp_path / "raf"
    (raf / "EmoLabel").mkdir(parents=True)
    (raf / "EmoLabel/list_patition_label.txt").write_bytes(b"train_00001.jpg 1\ntrain_0000\xff2.jpg 2\n")
    assert main([*FOLDER_DATA, "data.static.reader=rafdb", "data.static.root=raf"]) == 1
    err = capsys.readouterr().err
    assert "list_patition_label.txt:2:11: byte 0xff is not UTF-8 text" in err
    assert not (tmp_path / "artifacts/prepared").exists()  # nothing written


# --------------------------------------------------------------------------------------------- bad input
BAD_PARAMS = {
    "tab": ("profile: tiny\nmodels:\n  tiny:\n\timg_size: 64\n", ["params.yaml:4:1", "not tabs"]),
    "empty": ("", ["params.yaml is empty"]),
    "syntax": ("profile: [tiny\ndata: {}\n", ["params.yaml:2:5", "YAML syntax error: expected ',' or ']'"]),
    "latin1": ("profile: tiny\n# caf\xe9\n", ["params.yaml:2:6", "byte 0xe9 is not UTF-8"]),
}
STAGES = ["s4d.data.synthetic", "s4d.data.prepare", "s4d.data.validate", "s4d.train.pretrain", "s4d.train.finetune"]


# Every stage with a tab; the other files with the fast stages (one loader serves them all).
@pytest.mark.slow
@pytest.mark.parametrize("module, bad", [(m, "tab") for m in STAGES]
                         + [(m, b) for m in STAGES[:2] for b in ("empty", "syntax", "latin1")])
def test_bad_params_file_in_every_stage(tmp_path, module, bad):
    text, needles = BAD_PARAMS[bad]
    (tmp_path / "params.yaml").write_bytes(text.encode("latin-1"))
    done = run_module(module, cwd=tmp_path)
    assert done.returncode == 2
    error_line(done, "error:", *needles)


@pytest.mark.slow
def test_bad_override(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    done = run_module("s4d.train.pretrain", "pretrain.epochs=[1", cwd=tmp_path)
    assert done.returncode == 2
    error_line(done, "override 'pretrain.epochs=[1'", "not valid YAML")


# The stages each damage broke before (validate flagged escaping paths already).
@pytest.mark.slow
@pytest.mark.parametrize("module, damage", [
    ("s4d.data.validate", "zero_bytes"), ("s4d.train.pretrain", "zero_bytes"), ("s4d.data.validate", "header_only"),
    ("s4d.train.finetune", "header_only"), ("s4d.train.pretrain", "escaping_path"),
    ("s4d.train.finetune", "escaping_path")])
def test_bad_manifest_in_every_stage(micro_project, module, damage):
    static = micro_project / "artifacts/prepared/static.csv"
    if damage == "zero_bytes":
        static.write_bytes(b"")
        needles = ["artifacts/prepared/static.csv", "empty file (0 bytes)"]
    elif damage == "header_only":
        static.write_text(static.read_text().splitlines()[0] + "\n")
        needles = ["artifacts/prepared/static.csv", "holds no rows"]
    else:
        lines = static.read_text().splitlines()
        lines[1] = lines[1].replace("images/00000.jpg", "../../../../etc/passwd")
        static.write_text("\n".join(lines) + "\n")
        needles = ["outside the dataset root", "i00000: path '../../../../etc/passwd'"]
    done = run_module(module, *MICRO_MODEL, "pretrain.epochs=1", "finetune.epochs=1", cwd=micro_project, env=ENV)
    assert done.returncode in (1, 2), (done.returncode, done.stderr[-3000:])  # a named user error, not a crash
    error_line(done, *needles)


# --------------------------------------------------------------------------------------------- generator
def test_generator_takes_overrides_like_every_stage(tmp_path, monkeypatch, capsys):
    import json

    from s4d.data.synthetic.__main__ import main

    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    small = ["synthetic.video_identities=5", "synthetic.clips_per_identity=1", "synthetic.num_frames=4",
             "synthetic.image_identity_ratio=1", "synthetic.images_per_identity=1", "synthetic.seed=3",
             "synthetic.test_identities=0", "synthetic.image_test_identities=0"]
    assert main(["--root", "syn", "--workers", "1", "--no-progress", *small]) == 0
    config = json.loads((tmp_path / "syn/meta.json").read_text())["config"]
    assert (config["seed"], config["video_identities"], config["num_frames"]) == (3, 5, 4)
    assert len(list((tmp_path / "syn/videos/frames").iterdir())) == 5

    with pytest.raises(SystemExit) as exit_info:
        main(["--root", "syn2", "synthetic.video_identitie=5"])
    assert exit_info.value.code == 2
    assert "synthetic.video_identitie" in capsys.readouterr().err
    assert not (tmp_path / "syn2").exists()


def test_a_dataset_kept_outside_the_project_loads_and_nothing_else_does(micro_project, tmp_path_factory):
    """data.dynamic.root: /datasets/DFEW (the README's example) holds absolute manifest paths: they load when
    they lie inside a configured dataset folder; `..` and other absolute paths stay refused."""
    from s4d.config import InputError, load_params
    from s4d.data.loaders import ImageDataset
    from s4d.data.manifest import dataset_folders, outside_root, read_manifest
    from s4d.data.validate import file_status

    elsewhere = tmp_path_factory.mktemp("datasets") / "RAF-DB"
    shutil.copytree(micro_project / "images", elsewhere)
    rows = read_manifest(micro_project / "artifacts/prepared/static.csv").head(3)
    rows = rows.assign(path=[str(elsewhere / Path(p).name) for p in rows["path"]])
    folders = dataset_folders(load_params("params.yaml", [f"data.static.root={elsewhere}"]).data)
    assert str(elsewhere) in folders
    image, _ = ImageDataset(rows, ".", 32, augment=None, allowed=folders)[0]
    assert image.shape == (1, 3, 32, 32)
    assert list(file_status(rows, Path("."), folders)) == ["ok"] * 3
    with pytest.raises(InputError, match="outside the dataset root"):
        ImageDataset(rows, ".", 32, augment=None)  # not a configured folder: refused
    for path in ("../../../../etc/passwd", "/etc/passwd", f"{elsewhere}/../../../etc/passwd"):
        assert outside_root(path, ".", folders), path
    assert outside_root("images/00000.jpg", ".", folders) is None
