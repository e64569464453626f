"""The fold runner on a micro DFEW-layout dataset with 2 folds (the documented command)."""
import json
import shutil

import pytest

from conftest import MICRO_MODEL, run_module, write_micro_dataset

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # multi-process runs of minutes each: `make test-heavy`


def write_dfew_micro(root):
    """24 micro clips in DFEW's layout (frame folders + per-fold split files) and a folder of stills."""
    write_micro_dataset(root)
    for i in range(24):
        shutil.copytree(root / "frames" / f"{i:05d}", root / "dfew" / "clip_224x224" / f"{i + 1:05d}")
    for fold, test_slot in ((1, 5), (2, 4)):
        rows = {"train": [], "test": []}
        for i in range(24):
            rows["test" if i % 6 == test_slot else "train"].append(f"{i + 1:05d},{i % 3}")
        for split, lines in rows.items():
            name = "train(single-labeled)/train_set" if split == "train" else "test(single-labeled)/test_set"
            path = root / "dfew" / "EmoLabel_DataSplit" / f"{name}_{fold}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("video_name,label\n" + "\n".join(lines) + "\n")
    for i in range(48):
        split = "test" if i % 6 == 5 else "train"
        target = root / "stills" / split / f"c{i % 3}" / f"{i:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "images" / f"{i:05d}.jpg", target)


def test_two_folds_run_and_are_averaged(tmp_path):
    write_dfew_micro(tmp_path)
    args = ["--folds", "1,2", "--out", "folds", *MICRO_MODEL, "data.workers=1", "finetune.epochs=2",
            "data.dynamic.reader=dfew", "data.dynamic.root=dfew", "data.static.reader=folder",
            "data.static.root=stills"]
    proc = run_module("s4d.train.folds", *args, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "folds" / "summary.json").read_text())
    assert summary["folds"] == [1, 2] and summary["dataset"] == "dfew"
    per_fold = [json.loads((tmp_path / "folds" / "folds" / f"fold_{k}.json").read_text()) for k in (1, 2)]
    assert [m["fold"] for m in per_fold] == [1, 2]
    # each fold is tested on its own clips: fold 1 on ids with i % 6 == 5, fold 2 on i % 6 == 4
    ids = [set(__import__("pandas").read_csv(tmp_path / "folds" / f"fold_{k}" / "eval" / "scores.csv",
                                             dtype={"id": str})["id"]) for k in (1, 2)]
    assert ids[0] == {f"{i + 1:05d}" for i in range(24) if i % 6 == 5}
    assert ids[1] == {f"{i + 1:05d}" for i in range(24) if i % 6 == 4}
    uar = [m["dynamic"]["uar"] for m in per_fold]
    assert summary["dynamic"]["uar"]["mean"] == pytest.approx(sum(uar) / 2)
    assert summary["dynamic"]["uar"]["std"] == pytest.approx(abs(uar[0] - uar[1]) / 2 ** 0.5)
    assert "mean over 2 folds: UAR" in proc.stdout

    again = run_module("s4d.train.folds", *args, cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("done before with the same params, kept") == 2

    bad = run_module("s4d.train.folds", "--folds", "1,9", cwd=tmp_path)
    assert bad.returncode == 2 and "fold numbers 1..5" in bad.stderr
