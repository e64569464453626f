"""Dataset readers against the real split files (in miniature dataset trees) and tiny hand-built trees."""
from __future__ import annotations

import csv
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from s4d.data.labels import LABEL_SETS, canonical_name, classes_of
from s4d.data.manifest import COLUMNS, read_manifest, write_manifest
from s4d.data.readers import (READERS, DatasetError, carve_val, ferplus_majority, read_affectnet, read_dfew,
                              read_ferplus, read_ferv39k, read_folder, read_mafw, read_rafdb,
                              read_synthetic_image, read_synthetic_video)

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "splits"
needs_reference = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason=f"real split files not found at {REFERENCE} (../shared beside the repo)")
DFEW_TRAIN = "EmoLabel_DataSplit/train(single-labeled)/train_set_{}.csv"
DFEW_TEST = "EmoLabel_DataSplit/test(single-labeled)/test_set_{}.csv"
WIDTH, HEIGHT = 8, 6  # of the template frame


# -------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """One tiny JPEG that every frame folder links to (thousands of folders must stay cheap)."""
    path = tmp_path_factory.mktemp("template") / "frame.jpg"
    Image.new("RGB", (WIDTH, HEIGHT), (120, 80, 40)).save(path)
    return path


def place(template: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(template, target)
    except OSError:  # another file system: copy instead
        shutil.copyfile(template, target)


def frame_folders(root: Path, rels, template: Path, frames: int = 1) -> None:
    for rel in rels:
        for i in range(1, frames + 1):
            place(template, root / rel / f"{i:05d}.jpg")


def csv_pairs(path: Path, id_column: str, label_column: str) -> list[tuple[str, str]]:
    """(id, label) straight from a split file with the csv module, independent of the reader."""
    with open(path, newline="") as f:
        return [(r[id_column], r[label_column]) for r in csv.DictReader(f)]


def histogram(df: pd.DataFrame, split: str) -> Counter:
    return Counter(df.loc[df["split"] == split, "label"].tolist())


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def check_manifest_basics(df: pd.DataFrame) -> None:
    assert list(df.columns) == COLUMNS
    assert df["id"].is_unique
    names = [classes_of(s)[i] for s, i in zip(df["label_set"], df["label"])]
    assert df["label_name"].tolist() == names


# ------------------------------------------------------------------------------- real split files
@needs_reference
def test_dfew_fold1_real_split_files_and_label_base(tmp_path, template):
    shutil.copytree(REFERENCE / "DFEW", tmp_path, dirs_exist_ok=True)
    expected = {"train": csv_pairs(tmp_path / DFEW_TRAIN.format(1), "video_name", "label"),
                "test": csv_pairs(tmp_path / DFEW_TEST.format(1), "video_name", "label")}
    frame_folders(tmp_path / "clip_224x224", [c for pairs in expected.values() for c, _ in pairs], template)

    df = read_dfew(tmp_path, fold=1)
    check_manifest_basics(df)
    assert df["split"].value_counts().to_dict() == {"train": 9356, "test": 2341}
    for split, pairs in expected.items():
        assert histogram(df, split) == Counter(int(label) for _, label in pairs)
    assert (df["path"] == "clip_224x224/" + df["id"]).all()
    assert df["id"].str.fullmatch(r"\d{5}").all()
    assert (df[["num_frames", "height", "width"]] == [1, HEIGHT, WIDTH]).all().all()
    assert set(df["fold"]) == {1} and set(df["source"]) == {"dfew"} and set(df["group"]) == {""}

    # The official files number the same classes 1..7: detected per file, or told with label_base.
    for pattern in (DFEW_TRAIN, DFEW_TEST):
        path = tmp_path / pattern.format(1)
        rows = csv_pairs(path, "video_name", "label")
        write_csv(path, ["video_name", "label"], [[c, int(label) + 1] for c, label in rows])
    assert read_dfew(tmp_path, fold=1).equals(df)
    assert read_dfew(tmp_path, fold=1, label_base=1).equals(df)


@needs_reference
def test_ferv39k_real_annotation(tmp_path, template):
    shutil.copytree(REFERENCE / "FERV39K", tmp_path, dirs_exist_ok=True)
    expected = {s: csv_pairs(tmp_path / "Annotation" / f"{s}.csv", "path", "id") for s in ("train", "test")}
    frame_folders(tmp_path / "2_ClipsforFaceCrop", [p for pairs in expected.values() for p, _ in pairs], template)

    df = read_ferv39k(tmp_path)
    check_manifest_basics(df)
    assert df["split"].value_counts().to_dict() == {"train": 31088, "test": 7847}
    for split, pairs in expected.items():
        assert histogram(df, split) == Counter(int(label) for _, label in pairs)
    # the Emotion level of each clip path names the class
    assert (df["id"].str.split("/").str[1].str.lower() == df["label_name"]).all()
    assert set(df["fold"]) == {0}


@needs_reference
def test_mafw_set1_and_whole_set_real_files(tmp_path, template):
    shutil.copytree(REFERENCE / "MAFW", tmp_path, dirs_exist_ok=True)
    anno = tmp_path / "anno/single/no_caption"
    expected = {fold: {s: csv_pairs(anno / sub / f"{s}.csv", "video_name", "labels") for s in ("train", "test")}
                for fold, sub in ((1, "set_1"), (0, ""))}
    clips = {c for per_split in expected.values() for pairs in per_split.values() for c, _ in pairs}
    frame_folders(tmp_path / "frames", clips, template)

    for fold, per_split in expected.items():
        df = read_mafw(tmp_path, fold=fold)
        check_manifest_basics(df)
        assert df["split"].value_counts().to_dict() == {s: len(p) for s, p in per_split.items()}
        for split, pairs in per_split.items():
            assert histogram(df, split) == Counter(int(label) for _, label in pairs)
        assert set(df["label_set"]) == {"mafw11"} and set(df["fold"]) == {fold}
    assert read_mafw(tmp_path, fold=1)["split"].value_counts().to_dict() == {"train": 7333, "test": 1839}


@needs_reference
def test_affectnet7_real_test_list(tmp_path):
    shutil.copy(REFERENCE / "AffectNet_test_affectnet7.txt", tmp_path)
    bmp = tmp_path / "template.bmp"
    Image.new("RGB", (40, 36)).save(bmp)
    with open(tmp_path / "AffectNet_test_affectnet7.txt") as f:
        pairs = [line.split() for line in f if line.strip()]
    for rel, _ in pairs:
        place(bmp, tmp_path / "images" / rel)

    df = read_affectnet(tmp_path, image_dir="images")
    check_manifest_basics(df)
    assert len(df) == 3267 and set(df["split"]) == {"test"}
    assert histogram(df, "test") == Counter(int(label) for _, label in pairs)
    assert (df[["modality", "num_frames", "height", "width"]] == ["image", 1, 36, 40]).all().all()
    assert set(df["label_set"]) == {"affectnet7"}

    # an explicit list file given as the train split; an 8-class label 7 is out of a 7-class set
    (tmp_path / "mine.txt").write_text(f"{pairs[0][0]} 7\n")
    with pytest.raises(DatasetError, match=r"mine\.txt:1: label 7 is outside the allowed range 0\.\.6"):
        read_affectnet(tmp_path, list_files={"train": "mine.txt"}, image_dir="images")
    df8 = read_affectnet(tmp_path, num_classes=8, list_files={"train": "mine.txt"}, image_dir="images")
    assert df8.loc[0, ["label_name", "split", "label_set"]].tolist() == ["contempt", "train", "affectnet8"]


# ------------------------------------------------------------------------------------------- errors
def tiny_dfew(root: Path, template: Path, train: list, test: list, folders=None) -> None:
    write_csv(root / DFEW_TRAIN.format(1), ["video_name", "label"], train)
    write_csv(root / DFEW_TEST.format(1), ["video_name", "label"], test)
    names = folders if folders is not None else [c for c, _ in train + test]
    frame_folders(root / "clip_224x224", names, template)


def test_label_outside_set_names_file_line_value_and_range(tmp_path, template):
    tiny_dfew(tmp_path, template, [["00001", 0], ["00002", 9], ["00003", 2]], [["00004", "x"], ["", 1]],
              folders=["00001", "00002", "00003", "00004"])
    with pytest.raises(DatasetError) as err:
        read_dfew(tmp_path)
    message = str(err.value)
    assert "3 problem(s)" in message
    assert "test_set_1.csv:3: video_name: empty path / name" in message
    assert f"{tmp_path / DFEW_TRAIN.format(1)}:3: label 9 is outside the allowed range 0..6 (dfew7)" in message
    assert "test_set_1.csv:2: label 'x' is not an integer" in message


def test_missing_frame_folder_names_clip_and_expected_path(tmp_path, template):
    tiny_dfew(tmp_path, template, [["00001", 0], ["00002", 1]], [["00003", 2]], folders=["00001", "00003"])
    (tmp_path / "clip_224x224" / "00004").mkdir()
    write_csv(tmp_path / DFEW_TEST.format(1), ["video_name", "label"], [["00003", 2], ["00004", 3]])
    with pytest.raises(DatasetError) as err:
        read_dfew(tmp_path)
    message = str(err.value)
    assert f"clip 00002 ({tmp_path / DFEW_TRAIN.format(1)}:3): missing frame folder, expected " \
           f"{tmp_path / 'clip_224x224' / '00002'}" in message
    assert "clip 00004" in message and "holds no frames" in message


def test_missing_image_names_image_and_expected_path(tmp_path, template):
    (tmp_path / "EmoLabel").mkdir()
    (tmp_path / "EmoLabel/list_patition_label.txt").write_text("train_00001.jpg 1\n")
    with pytest.raises(DatasetError, match=r"image train_00001 .*missing image, expected .*"
                                           r"Image/aligned/train_00001_aligned\.jpg"):
        read_rafdb(tmp_path)


def test_escaping_paths_are_rejected(tmp_path, template):
    write_csv(tmp_path / "Annotation/train.csv", ["path", "id"],
              [["../outside/Angry/0001", 0], ["/etc/Angry/0002", 0], ["Crime/Angry/0003", 0]])
    write_csv(tmp_path / "Annotation/test.csv", ["path", "id"], [["Crime/Happy/0004", 0]])
    frame_folders(tmp_path / "2_ClipsforFaceCrop", ["Crime/Angry/0003", "Crime/Happy/0004"], template)
    with pytest.raises(DatasetError) as err:
        read_ferv39k(tmp_path)
    message = str(err.value)
    assert "train.csv:2: path '../outside/Angry/0001' escapes the dataset root" in message
    assert "train.csv:3: path '/etc/Angry/0002' escapes the dataset root" in message
    assert "test.csv:2: path Crime/Happy/0004 says 'Happy' but label 0 is 'angry'" in message
    assert "3 problem(s)" in message

    (tmp_path / "AffectNet_test_affectnet7.txt").write_text("../../secret.jpg 1\n")
    with pytest.raises(DatasetError, match="'../../secret.jpg' escapes the dataset root"):
        read_affectnet(tmp_path)


def test_missing_split_files_name_expected_paths(tmp_path):
    with pytest.raises(DatasetError) as err:
        read_dfew(tmp_path, fold=3)
    message = str(err.value)
    assert f"missing split file: expected {tmp_path / DFEW_TRAIN.format(3)}" in message
    assert f"missing split file: expected {tmp_path / DFEW_TEST.format(3)}" in message
    with pytest.raises(DatasetError, match=r"expected .*anno/single/no_caption/set_2/train\.csv"):
        read_mafw(tmp_path, fold=2)
    with pytest.raises(DatasetError, match=r"expected at least one of .*AffectNet_train_affectnet8\.txt"):
        read_affectnet(tmp_path, num_classes=8)
    with pytest.raises(DatasetError, match=r"expected .*fer2013new\.csv"):
        read_ferplus(tmp_path)
    with pytest.raises(ValueError, match="fold 6 does not exist"):
        read_dfew(tmp_path, fold=6)


def test_all_problems_collected_in_one_error(tmp_path, template):
    tiny_dfew(tmp_path, template, [[f"{i:05d}", 0] for i in range(1, 26)], [["00026", 1]], folders=["00026"])
    with pytest.raises(DatasetError) as err:
        read_dfew(tmp_path)
    assert len(err.value.problems) == 25
    message = str(err.value)
    assert "25 problem(s)" in message and "... and 5 more" in message
    assert message.count("missing frame folder") == 20


# ------------------------------------------------------------------------------ small image readers
def test_rafdb_shifts_labels_and_splits_by_name(tmp_path, template):
    names = {"train_00001.jpg": 1, "train_00002.jpg": 4, "train_00003.jpg": 7, "test_0001.jpg": 5}
    (tmp_path / "EmoLabel").mkdir()
    (tmp_path / "EmoLabel/list_patition_label.txt").write_text("".join(f"{n} {v}\n" for n, v in names.items()))
    for n in names:
        place(template, tmp_path / "Image/aligned" / n.replace(".jpg", "_aligned.jpg"))
    df = read_rafdb(tmp_path)
    check_manifest_basics(df)
    assert df["id"].tolist() == ["train_00001", "train_00002", "train_00003", "test_0001"]
    assert df["label_name"].tolist() == ["surprise", "happiness", "neutral", "sadness"]
    assert df["split"].tolist() == ["train", "train", "train", "test"]
    assert df["path"][0] == "Image/aligned/train_00001_aligned.jpg"
    assert (df[["modality", "num_frames", "height", "width"]] == ["image", 1, HEIGHT, WIDTH]).all().all()

    (tmp_path / "EmoLabel/list_patition_label.txt").write_text("train_00001.jpg 0\ntrain_00002.jpg 8\n")
    with pytest.raises(DatasetError) as err:
        read_rafdb(tmp_path)
    assert "list_patition_label.txt:1: label 0 is outside the allowed range 1..7 (rafdb7)" in str(err.value)
    assert "list_patition_label.txt:2: label 8 is outside" in str(err.value)


def test_ferplus_majority_rule(tmp_path, template):
    #          usage          name              neu hap sur sad ang dis fea con unk NF
    rows = [["Training", "fer0000000.png", 6, 4, 0, 0, 0, 0, 0, 0, 0, 0],     # neutral 6/10
            ["Training", "fer0000001.png", 0, 10, 0, 0, 0, 0, 0, 0, 0, 0],    # happiness
            ["PublicTest", "fer0000002.png", 0, 0, 0, 5, 5, 0, 0, 0, 0, 0],   # tie: dropped
            ["PublicTest", "fer0000003.png", 0, 0, 4, 0, 0, 3, 3, 0, 0, 0],   # plurality only: dropped
            ["PrivateTest", "fer0000004.png", 1, 0, 0, 0, 0, 0, 0, 0, 9, 0],  # unknown wins: dropped
            ["PrivateTest", "fer0000005.png", 0, 0, 0, 0, 0, 0, 0, 0, 0, 10],  # NF: dropped
            ["Training", "", 0, 10, 0, 0, 0, 0, 0, 0, 0, 0],                  # no image: skipped
            ["PrivateTest", "fer0000006.png", 0, 0, 0, 0, 0, 0, 3, 7, 0, 0],  # contempt
            ["PublicTest", "fer0000007.png", 0, 0, 9, 0, 0, 0, 0, 0, 1, 0]]   # surprise
    header = ["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust",
              "fear", "contempt", "unknown", "NF"]
    write_csv(tmp_path / "fer2013new.csv", header, rows)
    folders = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
    for usage, name, *_ in rows:
        if name:
            place(template, tmp_path / folders[usage] / name)
    df = read_ferplus(tmp_path)
    check_manifest_basics(df)
    got = {r.id: (r.label_name, r.split, r.path) for r in df.itertuples()}
    assert got == {"fer0000000": ("neutral", "train", "FER2013Train/fer0000000.png"),
                   "fer0000001": ("happiness", "train", "FER2013Train/fer0000001.png"),
                   "fer0000006": ("contempt", "test", "FER2013Test/fer0000006.png"),
                   "fer0000007": ("surprise", "val", "FER2013Valid/fer0000007.png")}
    assert ferplus_majority([0] * 10) is None and ferplus_majority([3, 2] + [0] * 8) == 0


def test_folder_reader_with_splits_and_mixed_items(tmp_path, template):
    import cv2

    place(template, tmp_path / "train/angry/a.jpg")
    frame_folders(tmp_path / "train/angry", ["clip1"], template, frames=3)
    (tmp_path / "train/happy").mkdir()
    writer = cv2.VideoWriter(str(tmp_path / "train/happy/v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (40, 32))
    for i in range(5):
        writer.write(np.full((32, 40, 3), 40 * i, np.uint8))
    writer.release()
    place(template, tmp_path / "val/happy/b.png")
    place(template, tmp_path / "test/sad/c.jpeg")
    (tmp_path / "train/sad").mkdir()
    (tmp_path / "train/.DS_Store").write_text("")

    df = read_folder(tmp_path)
    check_manifest_basics(df)
    assert set(df["label_set"]) == {"folder:angry,happy,sad"}
    got = {r.id: (r.label, r.split, r.modality, r.num_frames, r.height, r.width) for r in df.itertuples()}
    assert got == {"train/angry/a.jpg": (0, "train", "image", 1, HEIGHT, WIDTH),
                   "train/angry/clip1": (0, "train", "video", 3, HEIGHT, WIDTH),
                   "train/happy/v.avi": (1, "train", "video", 5, 32, 40),
                   "val/happy/b.png": (1, "val", "image", 1, HEIGHT, WIDTH),
                   "test/sad/c.jpeg": (2, "test", "image", 1, HEIGHT, WIDTH)}

    (tmp_path / "test/sad/notes.txt").write_text("x")
    (tmp_path / "extra").mkdir()
    with pytest.raises(DatasetError) as err:
        read_folder(tmp_path)
    assert "unsupported file type .txt" in str(err.value)
    assert f"{tmp_path / 'extra'}: unexpected beside the split folders" in str(err.value)


def test_folder_reader_without_split_level(tmp_path, template):
    place(template, tmp_path / "dog/1.jpg")
    place(template, tmp_path / "cat/2.webp")
    df = read_folder(tmp_path)
    assert df[["id", "label_name", "split"]].values.tolist() == [["cat/2.webp", "cat", "train"],
                                                                 ["dog/1.jpg", "dog", "train"]]
    (tmp_path / "loose.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match="loose.jpg: a file outside any class folder"):
        read_folder(tmp_path)


# --------------------------------------------------------------------------------- synthetic set
def synthetic_videos(root: Path, template: Path) -> None:
    """12 clips of 4 identities: p0, p1 train, p2 val (listed in the train file), p3 test."""
    clips = list(range(1, 13))
    frame_folders(root / "frames", [f"{c:05d}" for c in clips], template, frames=2)
    split_dir = root / "EmoLabel_DataSplit"
    write_csv(split_dir / "train(single-labeled)/set_1.csv", ["video_name", "label"],
              [[f"{c:05d}", c % 7] for c in clips[:9]])
    write_csv(split_dir / "test(single-labeled)/set_1.csv", ["video_name", "label"],
              [[f"{c:05d}", c % 7] for c in clips[9:]])
    splits = ["train", "train", "val", "test"]
    write_csv(root / "identities.csv", ["video_name", "identity", "split"],
              [[f"{c:05d}", f"p{(c - 1) // 3}", splits[(c - 1) // 3]] for c in clips])


def test_synthetic_video_joins_identities(tmp_path, template):
    synthetic_videos(tmp_path, template)
    df = read_synthetic_video(tmp_path, fold=1)
    check_manifest_basics(df)
    assert df["split"].value_counts().to_dict() == {"train": 6, "val": 3, "test": 3}
    assert df.groupby("group")["split"].nunique().max() == 1
    assert df.set_index("id").loc["00007", ["group", "split", "path", "num_frames"]].tolist() == \
        ["p2", "val", "frames/00007", 2]
    assert set(df["source"]) == {"synthetic_video"} and set(df["fold"]) == {1}
    assert READERS["synthetic_video"] is read_synthetic_video

    write_csv(tmp_path / "identities.csv", ["video_name", "identity", "split"],
              [["00001", "p0", "test"], ["00010", "p3", "train"]])
    with pytest.raises(DatasetError) as err:
        read_synthetic_video(tmp_path)
    message = str(err.value)
    assert "00001: split file says train but identities.csv says test" in message
    assert "00010: split file says test but identities.csv says train" in message
    assert "00002: no row in" in message


def test_synthetic_image_joins_identities(tmp_path, template):
    names = [f"train_{n:05d}" for n in range(1, 7)] + [f"test_{n:05d}" for n in range(1, 3)]
    (tmp_path / "EmoLabel").mkdir()
    (tmp_path / "EmoLabel/list_patition_label.txt").write_text(
        "".join(f"{n}.jpg {i % 7 + 1}\n" for i, n in enumerate(names)))
    for n in names:
        place(template, tmp_path / f"Image/aligned/{n}_aligned.jpg")
    identity_split = {"a": "train", "b": "val", "c": "test"}
    owners = ["a", "a", "a", "a", "b", "b", "c", "c"]
    write_csv(tmp_path / "identities.csv", ["image_name", "identity", "split"],
              [[f"{n}.jpg", o, identity_split[o]] for n, o in zip(names, owners)])
    df = read_synthetic_image(tmp_path)
    check_manifest_basics(df)
    assert df["split"].tolist() == ["train"] * 4 + ["val"] * 2 + ["test"] * 2
    assert df["group"].tolist() == owners
    assert set(df["label_set"]) == {"rafdb7"} and set(df["source"]) == {"synthetic_image"}


# ------------------------------------------------------------------------------------- carve_val
def toy_manifest(labels: list[int], groups: list[str], split: str = "train") -> pd.DataFrame:
    from s4d.data.manifest import make_manifest

    classes = LABEL_SETS["dfew7"]
    return make_manifest([dict(id=f"{i:05d}", path=f"f/{i:05d}", label=lab, label_name=classes[lab],
                               label_set="dfew7", modality="video", split=split, fold=1, num_frames=16,
                               height=48, width=48, source="toy", group=g)
                          for i, (lab, g) in enumerate(zip(labels, groups))])


def test_carve_val_stratified_and_deterministic():
    labels = [0] * 100 + [1] * 50 + [2] * 10 + [3]
    df = toy_manifest(labels, [""] * len(labels))
    carved = carve_val(df, 0.2, seed=1)
    val = carved[carved["split"] == "val"]
    assert Counter(val["label"]) == {0: 20, 1: 10, 2: 2}  # a class of one stays in train
    assert carved.drop(columns="split").equals(df.drop(columns="split"))
    assert carve_val(df, 0.2, seed=1).equals(carved)
    assert set(carve_val(df, 0.2, seed=2).query("split == 'val'")["id"]) != set(val["id"])
    # shuffled input order gives the same ids
    shuffled = carve_val(df.sample(frac=1, random_state=0), 0.2, seed=1)
    assert set(shuffled.query("split == 'val'")["id"]) == set(val["id"])


def test_carve_val_identity_disjoint_and_keeps_existing_val():
    rng = np.random.default_rng(0)
    groups = [f"p{i // 6}" for i in range(240)]  # 40 identities of 6 clips
    labels = rng.integers(0, 7, size=240).tolist()
    df = toy_manifest(labels, groups)
    df.loc[df["group"].isin(["p0", "p1"]), "split"] = "test"
    carved = carve_val(df, 0.15, seed=0)
    assert carved.groupby("group")["split"].nunique().max() == 1
    assert (carved.loc[df["split"] == "test", "split"] == "test").all()
    val = carved[carved["split"] == "val"]
    train_before = df[df["split"] == "train"]
    assert 0.10 <= len(val) / len(train_before) <= 0.20
    target = 0.15 * train_before["label"].value_counts()
    got = val["label"].value_counts().reindex(target.index, fill_value=0)
    assert (abs(got - target) <= 4).all(), (got, target)  # per class close to its share

    assert carve_val(carved, 0.3, seed=5).equals(carved)  # already has val: unchanged
    with pytest.raises(ValueError, match="val fraction"):
        carve_val(df, 1.5, seed=0)


# ------------------------------------------------------------------------------ manifest and labels
def test_manifest_round_trip_keeps_dtypes(tmp_path):
    df = toy_manifest([0, 1, 2], ["", "p1", ""])
    path = write_manifest(df, tmp_path / "sub" / "dynamic.csv")
    back = read_manifest(path)
    assert back.equals(df)
    assert back["id"].tolist() == ["00000", "00001", "00002"] and back["group"].tolist() == ["", "p1", ""]
    assert str(back["label"].dtype) == "int64"
    assert [p.name for p in path.parent.iterdir()] == ["dynamic.csv"]  # no temp file left
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['group'\]"):
        write_manifest(df.drop(columns="group"), tmp_path / "x.csv")


def test_label_tables():
    assert LABEL_SETS["dfew7"][0] == "happy" and LABEL_SETS["rafdb7"][3] == "happiness"
    assert LABEL_SETS["ferv39k7"] == sorted(LABEL_SETS["ferv39k7"])
    assert LABEL_SETS["mafw11"] == sorted(LABEL_SETS["mafw11"]) and len(LABEL_SETS["mafw11"]) == 11
    assert LABEL_SETS["affectnet8"][:7] == LABEL_SETS["affectnet7"]
    canonical = {s: {canonical_name(n) for n in names} for s, names in LABEL_SETS.items()}
    seven = {"happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"}
    assert all(canonical[s] == seven for s in ("dfew7", "ferv39k7", "rafdb7", "affectnet7"))
    assert canonical["ferplus8"] == canonical["affectnet8"] == seven | {"contempt"}
    assert classes_of("folder:cat,dog") == ["cat", "dog"]
    with pytest.raises(KeyError, match="unknown label set"):
        classes_of("nope")
