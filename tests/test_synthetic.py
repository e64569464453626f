"""The procedural expression dataset: layout, determinism, splits, dynamics and calibration."""
from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from s4d.data.synthetic.__main__ import load_config, main
from s4d.config import SyntheticConfig
from s4d.data.synthetic.face import AU, EMOTIONS, RAFDB_LABEL, UPPER_FACE
from s4d.data.synthetic.generate import VERSION, generate
from s4d.data.synthetic.plan import image_plan, video_plan
from s4d.data.synthetic.sample import (CONFUSED_WITH, clip_jpegs, clip_scene, render_clip, render_image,
                                     shown_expression, still_scene)

TINY = SyntheticConfig(video_identities=5, clips_per_identity=2, num_frames=4, frame_size=48, image_size=40,
                       image_identity_ratio=2.0, images_per_identity=2)
RAFDB_NAME = {v: k for k, v in RAFDB_LABEL.items()}


def read_csv(path: Path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("one") / "synthetic"
    generate(TINY, root=root, workers=1, progress=False)
    return root


def test_same_config_gives_identical_bytes_whatever_the_workers(tiny, tmp_path):
    other = tmp_path / "synthetic"
    generate(TINY, root=other, workers=2, progress=False)
    a, b = tree(tiny), tree(other)
    assert sorted(a) == sorted(b)
    meta_a, meta_b = json.loads(a.pop("meta.json")), json.loads(b.pop("meta.json"))
    assert meta_a["config"].pop("root") == str(tiny) and meta_b["config"].pop("root") == str(other)
    assert meta_a == meta_b
    assert a == b  # every JPEG and list file, byte for byte
    reseeded = {**vars(TINY), "seed": 1}
    assert render_clip(SyntheticConfig(**reseeded), 0)[0].tobytes() != render_clip(TINY, 0)[0].tobytes()


def test_video_layout_is_dfew(tiny):
    clips = video_plan(TINY)
    assert len(clips) == TINY.video_identities * TINY.clips_per_identity
    folders = sorted(p.name for p in (tiny / "videos" / "frames").iterdir())
    assert folders == [f"{i:05d}" for i in range(1, len(clips) + 1)]
    for name in folders:
        frames = sorted(p.name for p in (tiny / "videos" / "frames" / name).iterdir())
        assert frames == [f"{k:05d}.jpg" for k in range(1, TINY.num_frames + 1)]
    image = cv2.imread(str(tiny / "videos" / "frames" / "00001" / "00001.jpg"))
    assert image.shape == (TINY.frame_size, TINY.frame_size, 3)

    lists = tiny / "videos" / "EmoLabel_DataSplit"
    train = read_csv(lists / "train(single-labeled)" / "set_1.csv")
    test = read_csv(lists / "test(single-labeled)" / "set_1.csv")
    who = {r["video_name"]: r for r in read_csv(tiny / "videos" / "identities.csv")}
    assert list(train[0]) == ["video_name", "label"] and list(next(iter(who.values()))) == [
        "video_name", "identity", "split"]
    assert sorted(r["video_name"] for r in train + test) == folders  # every clip listed exactly once
    assert all(re.fullmatch(r"\d{5}", r["video_name"]) and 0 <= int(r["label"]) <= 6 for r in train + test)
    assert {who[r["video_name"]]["split"] for r in train} <= {"train", "val"}  # val rides in the train list
    assert {who[r["video_name"]]["split"] for r in test} == {"test"}
    for row in train + test:  # labels agree with the plan, in DFEW order
        assert EMOTIONS[int(row["label"])] == clips[int(row["video_name"]) - 1].emotion


def test_image_layout_is_rafdb(tiny):
    lines = (tiny / "images" / "EmoLabel" / "list_patition_label.txt").read_text().splitlines()
    assert len(lines) == len(image_plan(TINY)) == round(TINY.video_identities * TINY.image_identity_ratio) * 2
    who = {r["image_name"]: r for r in read_csv(tiny / "images" / "identities.csv")}
    for line, sample in zip(lines, image_plan(TINY)):
        name, label = line.split(" ")
        assert re.fullmatch(r"(train|test)_\d{5}\.jpg", name) and 1 <= int(label) <= 7
        assert RAFDB_NAME[int(label)] == sample.emotion
        image = cv2.imread(str(tiny / "images" / "Image" / "aligned" / name.replace(".jpg", "_aligned.jpg")))
        assert image.shape == (TINY.image_size, TINY.image_size, 3)
        assert (who[name]["split"] == "test") == name.startswith("test_")
    numbers = [int(n.split()[0][-9:-4]) for n in lines if n.startswith("train_")]
    assert numbers == list(range(1, len(numbers) + 1))


def test_meta_counts_match_the_files(tiny):
    meta = json.loads((tiny / "meta.json").read_text())
    assert meta["version"] == VERSION and meta["config"]["num_frames"] == TINY.num_frames
    who = read_csv(tiny / "videos" / "identities.csv")
    assert meta["videos"]["per_split"] == {s: sum(r["split"] == s for r in who) for s in ("train", "val", "test")}
    assert sum(sum(c.values()) for c in meta["videos"]["per_class"].values()) == len(who)
    assert meta["images"]["total"] == len(read_csv(tiny / "images" / "identities.csv"))
    leftovers = [p for p in tiny.parent.iterdir() if ".tmp-" in p.name] + list(tiny.rglob("*.tmp*"))
    assert leftovers == []


def test_splits_are_identity_disjoint_and_roughly_balanced():
    cfg = SyntheticConfig(video_identities=40, clips_per_identity=6)
    for plan in (video_plan(cfg), image_plan(cfg)):
        people = {split: {s.identity for s in plan if s.split == split} for split in ("train", "val", "test")}
        assert people["train"].isdisjoint(people["val"]) and people["train"].isdisjoint(people["test"])
        assert people["val"].isdisjoint(people["test"]) and all(people.values())
    videos = {s.identity for s in video_plan(cfg)}
    images = {s.identity for s in image_plan(cfg)}
    assert len(videos) == 40 and len(images) == 400 and videos.isdisjoint(images)
    test_people = {s.identity for s in video_plan(cfg) if s.split == "test"}
    assert len(test_people) == 8  # test_fraction 0.2
    counts = Counter(s.emotion for s in video_plan(cfg))
    share = {e: counts[e] / len(video_plan(cfg)) for e in EMOTIONS}
    assert 0.1 < min(share.values()) < max(share.values()) < 0.2  # mild skew, every class present
    assert max(share, key=share.get) == "happy" and min(share, key=share.get) == "disgust"


def test_test_identities_add_a_test_split_of_that_size():
    base = SyntheticConfig(video_identities=20, clips_per_identity=3, image_identity_ratio=2.0)
    cfg = SyntheticConfig(**{**base.__dict__, "test_identities": 7, "image_test_identities": 9})
    for plan, test_people, others in ((video_plan(cfg), 7, 20), (image_plan(cfg), 9, 40)):
        people = {split: {s.identity for s in plan if s.split == split} for split in ("train", "val", "test")}
        assert len(people["test"]) == test_people and len(people["train"] | people["val"]) == others
        assert people["val"] and len(people["val"]) == 2 * others // 20  # val_fraction 0.1 of the others
        assert not people["test"] & (people["train"] | people["val"])
        per_class = Counter(s.emotion for s in plan if s.split == "test")
        assert set(per_class) == set(EMOTIONS)  # exact class quotas in the bigger test split too
    assert len([s for s in video_plan(cfg) if s.split == "test"]) == 21
    videos = {s.identity for s in video_plan(cfg)}
    assert videos == set(range(27)) and videos.isdisjoint({s.identity for s in image_plan(cfg)})
    # 0 keeps test_fraction: the plan of the default is unchanged
    assert [s for s in video_plan(base) if s.split == "test"] and \
        len({s.identity for s in video_plan(base) if s.split == "test"}) == 4


def test_rendered_samples_equal_the_files(tiny):
    frames, sample = render_clip(TINY, 2)
    assert frames.shape == (TINY.num_frames, TINY.frame_size, TINY.frame_size, 3) and frames.dtype == np.uint8
    on_disk = cv2.imread(str(tiny / "videos" / "frames" / sample.name / "00002.jpg"))[:, :, ::-1]
    np.testing.assert_array_equal(frames[1], on_disk)
    image, still = render_image(TINY, 0)
    on_disk = cv2.imread(str(tiny / "images" / "Image" / "aligned" / f"{still.name}_aligned.jpg"))[:, :, ::-1]
    np.testing.assert_array_equal(image, on_disk)


def test_rerun_is_skipped_and_foreign_folders_are_refused(tiny, tmp_path, capsys):
    stamp = (tiny / "meta.json").stat().st_mtime_ns
    generate(TINY, root=tiny, workers=1, progress=False)
    assert "already complete" in capsys.readouterr().out
    assert (tiny / "meta.json").stat().st_mtime_ns == stamp
    foreign = tmp_path / "not_a_dataset"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate(TINY, root=foreign, workers=1, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_cli_reads_the_synthetic_section(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "--workers" in capsys.readouterr().out
    assert load_config(tmp_path / "missing.yaml") == SyntheticConfig()
    params = tmp_path / "params.yaml"
    params.write_text("synthetic:\n  seed: 3\n  video_identities: 3\n  clips_per_identity: 1\n  num_frames: 2\n"
                      "  frame_size: 32\n  image_size: 32\n  image_identity_ratio: 1.0\n  images_per_identity: 1\n")
    cfg = load_config(params)
    assert (cfg.seed, cfg.video_identities, cfg.frame_size, cfg.root) == (3, 3, 32, "data/synthetic")
    root = tmp_path / "cli"
    assert main(["--params", str(params), "--root", str(root), "--workers", "1", "--no-progress"]) == 0
    assert json.loads((root / "meta.json").read_text())["videos"]["total"] == 3
    main(["--params", str(params), "--root", str(root), "--workers", "1", "--no-progress"])
    assert "already complete" in capsys.readouterr().out
    params.write_text("synthetic:\n  no_such_field: 1\n")
    with pytest.raises(SystemExit) as exit_:  # the whole params file is checked by the typed schema
        main(["--params", str(params), "--root", str(root), "--no-progress"])
    assert exit_.value.code == 2 and "synthetic.no_such_field" in capsys.readouterr().err


def test_dynamics_separate_the_confusable_pairs():
    """Surprise has a faster onset than fear, anger moves the upper face first and disgust the lower face."""
    cfg = SyntheticConfig(video_identities=60, clips_per_identity=6)
    jump, lead = {e: [] for e in EMOTIONS}, {e: [] for e in EMOTIONS}
    for index, sample in enumerate(video_plan(cfg)):
        scene = clip_scene(cfg, index)
        if scene.coverage != "full":
            continue
        env = scene.timeline.envelope
        jump[sample.emotion].append(np.diff(env).max())
        aus = scene.timeline.aus - scene.timeline.aus[0]
        expressive = np.abs(aus[:, :AU["blink"]])
        upper = expressive[:, UPPER_FACE[:AU["blink"]]].sum(1)
        lower = expressive[:, ~UPPER_FACE[:AU["blink"]]].sum(1)
        if upper.max() > 0.3 and lower.max() > 0.3:  # which half reaches half its maximum first
            lead[sample.emotion].append(np.argmax(upper > upper.max() / 2) - np.argmax(lower > lower.max() / 2))
        if sample.emotion == "neutral":
            assert np.ptp(env) == 0  # nothing happens in a neutral clip
    assert np.mean(jump["surprise"]) > 0.7 > 0.4 > np.mean(jump["fear"])
    assert np.mean(lead["angry"]) < -1 and np.mean(lead["disgust"]) > 1


@pytest.mark.slow
def test_calibration_learnable_not_saturated_and_temporal_beats_single_frame():
    """Numbers documented in docs/synthetic.md (this size: 60 identities x 10 clips, 120 test clips)."""
    from s4d.data.synthetic.calibrate import calibrate

    report = calibrate(SyntheticConfig(video_identities=60, clips_per_identity=10), workers=2, progress=False)
    pixels, aus, chance = report["pixels"], report["true_aus"], report["chance"]
    print(json.dumps(report["pixels"]), json.dumps(report["true_aus"]), report["seconds"])
    assert report["clips"]["test"] == 120
    assert pixels["single_frame"] > chance + 0.05  # learnable from pixels, even frame by frame
    assert pixels["temporal"] > chance + 0.15
    assert pixels["temporal"] - pixels["single_frame"] >= 0.08  # time matters
    assert pixels["temporal"] <= 0.8  # not saturated
    assert aus["temporal"] - aus["single_frame"] >= 0.1  # even with perfect perception
    assert aus["temporal"] <= 0.98  # perfect perception nearly solves it; pixels stay far from that


def test_the_project_readers_parse_it(tiny):
    readers = pytest.importorskip("s4d.data.readers")
    videos = readers.READERS["synthetic_video"](tiny / "videos").set_index("id")
    for sample in video_plan(TINY):
        row = videos.loc[sample.name]
        assert (row.label, row.split, int(row.group)) == (EMOTIONS.index(sample.emotion), sample.split,
                                                          sample.identity)
        assert row.num_frames == TINY.num_frames
    images = readers.READERS["synthetic_image"](tiny / "images").set_index("id")
    for sample in image_plan(TINY):
        row = images.loc[sample.name]
        assert (row.label, row.split, int(row.group)) == (RAFDB_LABEL[sample.emotion] - 1, sample.split,
                                                          sample.identity)


def _grey_and_cast(images: list) -> tuple:
    """Mean grey level and mean red-minus-blue of RGB uint8 images, from the pixels."""
    pixels = np.stack(images).astype(np.float64)
    return pixels.mean(), (pixels[..., 0] - pixels[..., 2]).mean()


def test_domain_gap_moves_the_stills_away_from_the_clips_and_only_the_stills():
    # Stills vs clips at gap 0 and 1 (no label noise): brightness and colour cast measured on the pixels,
    # head yaw and face scale from the drawn poses. docs/synthetic.md (Conditions) states the shifts.
    small = dict(video_identities=20, clips_per_identity=2, num_frames=4, frame_size=64, image_size=64,
                 image_identity_ratio=3.0, images_per_identity=2, static_label_noise=0.0)
    stats = {}
    for gap in (0.0, 1.0):
        cfg = SyntheticConfig(**small, domain_gap=gap)
        clips = [clip_scene(cfg, i) for i in range(len(video_plan(cfg)))]
        stills = [still_scene(cfg, i) for i in range(len(image_plan(cfg)))]
        clip_grey, clip_cast = _grey_and_cast([f for i in range(len(clips)) for f in render_clip(cfg, i)[0]])
        still_grey, still_cast = _grey_and_cast([render_image(cfg, i)[0] for i in range(len(stills))])
        clip_yaw = np.mean([abs(p.yaw) for c in clips for p in c.timeline.poses])
        clip_scale = np.mean([p.scale for c in clips for p in c.timeline.poses])
        stats[gap] = dict(
            brightness=still_grey / clip_grey, cast=still_cast - clip_cast,
            yaw=np.mean([abs(s.pose.yaw) for s in stills]) / clip_yaw,
            scale=np.mean([s.pose.scale for s in stills]) / clip_scale,
            clip_bytes=b"".join(clip_jpegs(cfg, 0)))
    print({g: {k: round(v, 3) for k, v in s.items() if k != "clip_bytes"} for g, s in stats.items()})
    same, gap = stats[0.0], stats[1.0]
    assert gap["clip_bytes"] == same["clip_bytes"]  # the videos stay the movie source
    assert abs(same["brightness"] - 1) < 0.05 and gap["brightness"] > 1.15
    assert abs(same["cast"]) < 4 and gap["cast"] > 8
    assert 0.75 < same["yaw"] < 1.35 and gap["yaw"] < 0.5 * same["yaw"] + 0.1
    assert abs(same["scale"] - 1) < 0.02 and abs(gap["scale"] - 1.15) < 0.03


def test_static_label_noise_rate_and_what_the_noisy_faces_show():
    cfg = SyntheticConfig(video_identities=100, image_identity_ratio=10.0, images_per_identity=2,
                          static_label_noise=0.1)
    plan = image_plan(cfg)
    shown = [shown_expression(cfg, i, s.emotion) for i, s in enumerate(plan)]
    noisy = [(s.emotion, e) for s, e in zip(plan, shown) if e != s.emotion]
    rate = len(noisy) / len(plan)
    confused = sum(e == CONFUSED_WITH[label] for label, e in noisy) / len(noisy)
    print(f"{len(plan)} stills: noise rate {rate:.3f}, confused-class share {confused:.3f}")
    # 2,000 stills: the binomial sd of the rate is 0.0067; of the share (~200 noisy) ~0.03.
    assert abs(rate - 0.1) < 0.02 and 0.6 < confused < 0.85  # 2/3 + 1/3 x 1/6 = 0.72 expected
    assert all(e in EMOTIONS for _, e in noisy)
    clean = SyntheticConfig(**{**cfg.__dict__, "static_label_noise": 0.0})
    assert all(shown_expression(clean, i, s.emotion) == s.emotion for i, s in enumerate(plan))
