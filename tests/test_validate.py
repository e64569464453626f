"""Great Expectations validation of manifests: a clean pair passes, each kind of breakage is named."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from s4d.data.labels import LABEL_SETS
from s4d.data.manifest import read_manifest, make_manifest, write_manifest
from s4d.data.validate import FATAL, WARNING, main, validate_manifests

CLIP_LENGTH = 8
SHORT_CLIP = "00003"  # has 4 frames: below CLIP_LENGTH, only a warning


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    """A clean video set (28 clips, 4 per class, 14 identities) and image set (21 images) on disk."""
    base = tmp_path_factory.mktemp("data")
    frame = base / "frame.jpg"
    Image.new("RGB", (48, 40)).save(frame)
    classes = LABEL_SETS["dfew7"]
    video_root, image_root = base / "videos", base / "images"
    rows = []
    for i in range(28):
        clip = f"{i:05d}"
        frames = 4 if clip == SHORT_CLIP else CLIP_LENGTH
        (video_root / "frames" / clip).mkdir(parents=True)
        for f in range(1, frames + 1):
            (video_root / "frames" / clip / f"{f:05d}.jpg").hardlink_to(frame)
        identity = i // 2
        split = "train" if identity < 9 else "val" if identity < 11 else "test"
        rows.append(dict(id=clip, path=f"frames/{clip}", label=i % 7, label_name=classes[i % 7],
                         label_set="dfew7", modality="video", split=split, fold=1, num_frames=frames,
                         height=40, width=48, source="test", group=f"p{identity}"))
    dynamic = make_manifest(rows)

    rafdb = LABEL_SETS["rafdb7"]
    (image_root / "Image").mkdir(parents=True)
    rows = []
    for i in range(21):
        name = f"train_{i:05d}"
        (image_root / "Image" / f"{name}.jpg").hardlink_to(frame)
        rows.append(dict(id=name, path=f"Image/{name}.jpg", label=i % 7, label_name=rafdb[i % 7],
                         label_set="rafdb7", modality="image", split="train" if i < 15 else "test", fold=0,
                         num_frames=1, height=40, width=48, source="test", group=""))
    static = make_manifest(rows)
    return dict(manifests={"dynamic": dynamic, "static": static},
                roots={"dynamic": video_root, "static": image_root}, base=base)


@pytest.fixture(scope="module")
def clean_report(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return out, validate_manifests(dataset["manifests"], dataset["roots"], out, CLIP_LENGTH)


def failed_checks(report, manifest: str, severity: str = FATAL) -> set[str]:
    return {r.check for r in report.failed(severity) if r.manifest == manifest}


def test_clean_manifests_pass_with_data_docs(clean_report):
    out, report = clean_report
    assert report.success, report.summary()
    assert failed_checks(report, "dynamic") == failed_checks(report, "static") == set()
    checks = {r.check for r in report.results if r.manifest == "dynamic"}
    assert {"ids_unique", "labels_in_set", "files_present", "groups_disjoint", "class_shares", "image_height",
            "image_width", "clip_length"} <= checks
    assert report.docs_index == out / "gx/uncommitted/data_docs/local_site/index.html"
    assert report.docs_index.is_file()
    assert list((out / "gx/uncommitted/data_docs/local_site/validations").rglob("*.html"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["success"] is True and summary["rows"] == {"dynamic": 28, "static": 21}


def test_short_clips_are_flagged_not_fatal(clean_report):
    _, report = clean_report
    assert failed_checks(report, "dynamic", WARNING) == {"clip_length"}
    warning = report.failed(WARNING)[0]
    assert warning.unexpected_count == 1 and warning.examples == [f"{SHORT_CLIP}: num_frames=4"]
    assert f"WARN clip_length" in report.summary() and SHORT_CLIP in report.summary()
    assert failed_checks(report, "static", WARNING) == set()  # images have no clip length


def broken_variants(clean: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, str]]:
    """name -> (manifest with one kind of damage, the check that must name it)."""
    classes = LABEL_SETS["dfew7"]
    variants = {}

    df = clean.copy()
    df.loc[1, "id"] = df.loc[0, "id"]
    variants["duplicate_id"] = df, "ids_unique"

    df = clean.copy()
    df.loc[5, "label"] = 9
    variants["label_out_of_set"] = df, "labels_in_set"

    df = clean.copy()
    df.loc[6, "label_name"] = "joy"
    variants["label_name_mismatch"] = df, "labels_in_set"

    df = clean.copy()
    df.loc[7, "path"] = "frames/99999"
    variants["missing_file"] = df, "files_present"

    df = clean.copy()
    df.loc[df["split"] == "test", "group"] = "p0"  # p0 is a train identity
    variants["identity_in_two_splits"] = df, "groups_disjoint"

    df = clean.copy()
    df.loc[:19, "label"] = 0  # 21 of 28 rows are happy: 75 %
    df["label_name"] = [classes[i] for i in df["label"]]
    variants["class_share"] = df, "class_shares"

    df = clean.copy()
    df.loc[8, "width"] = 16
    variants["too_small_image"] = df, "image_width"
    return variants


def test_each_broken_variant_fails_its_check(dataset, tmp_path):
    variants = broken_variants(dataset["manifests"]["dynamic"])
    report = validate_manifests({name: df for name, (df, _) in variants.items()},
                                {name: dataset["roots"]["dynamic"] for name in variants}, tmp_path, CLIP_LENGTH,
                                data_docs=False)  # HTML is covered by the clean run; it costs ~1 s a table
    assert not report.success
    summary = report.summary()
    for name, (_, check) in variants.items():
        assert failed_checks(report, name) == {check}, name
        assert failed_checks(report, name, WARNING) == {"clip_length"}  # still only a warning
        section = summary.split(f"[{name}]")[1].split("\n[")[0]
        assert f"FAIL {check}" in section, section
    results = {(r.manifest, r.check): r for r in report.results}
    assert "label 9 outside dfew7 (0..6)" in results["label_out_of_set", "labels_in_set"].examples[0]
    assert "'fear' in dfew7, not 'joy'" in results["label_name_mismatch", "labels_in_set"].examples[0]
    assert "frames/99999" in results["missing_file", "files_present"].examples[0]
    assert "identity p0 in test+train" in results["identity_in_two_splits", "groups_disjoint"].examples[0]
    assert results["class_share", "class_shares"].examples[0].startswith("happy: share=0.75")
    assert results["too_small_image", "image_width"].examples == ["00008: width=16"]
    assert results["duplicate_id", "ids_unique"].unexpected_count == 2
    assert json.loads((tmp_path / "summary.json").read_text())["success"] is False


def test_stage_exit_codes(micro_project, capsys):
    """The `validate` stage on prepared manifests (paths relative to the project), params from params.yaml."""
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "Manifest validation passed" in out and "WARN clip_length" in out  # 6-frame clips < 15 frames
    assert (micro_project / "artifacts/validation/gx/uncommitted/data_docs/local_site/index.html").is_file()
    assert json.loads((micro_project / "artifacts/validation/summary.json").read_text())["success"] is True

    prepared = micro_project / "artifacts/prepared/static.csv"
    broken = read_manifest(prepared)
    broken.loc[2, "path"] = "images/gone.jpg"
    write_manifest(broken, prepared)
    assert main(["validate.min_size=8"]) == 1
    out = capsys.readouterr().out
    assert "Manifest validation FAILED" in out and "FAIL files_present" in out and "gone.jpg" in out
    assert_offline_data_docs(micro_project / "artifacts/validation/gx/uncommitted/data_docs/local_site")

    with pytest.raises(SystemExit) as exit_info:
        main(["validate.min_sise=8"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "validate.min_sise" in err and len(err.strip().splitlines()) == 1


def assert_offline_data_docs(site: Path) -> None:
    """After a passing and a failing run: index.html lists both runs' four results, newest first, with the
    failing table marked and every link resolving; no page or stylesheet loads anything over http(s)."""
    index = (site / "index.html").read_text()
    runs = re.findall(r"<tr><td>([\d: -]+)</td><td>([^<]+)</td><td>[^<]+</td><td>(.*?)</td><td><a href=\"([^\"]+)\"",
                      index)
    assert len(runs) == 8 and len({run for run, *_ in runs}) == 2, index
    assert [run for run, *_ in runs] == sorted((run for run, *_ in runs), reverse=True)
    newest, oldest = runs[:4], runs[4:]
    assert all("passed" in result for *_, result, _ in oldest)  # short clips only warn:
    assert {table for _, table, result, _ in oldest if "warning" in result} == {"manifests-dynamic_rows"}
    assert {table for _, table, result, _ in newest if "FAILED" in result} == {"manifests-static_rows"}
    assert all((site / link).is_file() for *_, link in runs)
    remote = re.compile(r"<(?:script|link|img)\b[^>]*\b(?:src|href)=[\"']https?://|url\(\s*[\"']?https?://",
                        re.IGNORECASE)
    pages = [*site.rglob("*.html"), *site.rglob("*.css")]
    assert len(pages) > 8 and not [p for p in pages if remote.search(p.read_text())]


def damaged_clips(base: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """Six 8-frame clips with their own frame files (not hard links), five of them damaged in one frame;
    returns the manifest and, per damaged clip id, the text its frames_decode failure must show."""
    classes = LABEL_SETS["dfew7"]
    damage = {"corrupt5": ("00005.jpg", "does not decode"), "empty3": ("00003.jpg", "does not decode (empty file)"),
              "truncated8": ("00008.jpg", "truncated"), "png_truncated": ("00002.png", "truncated"),
              "mixed": ("00006.jpg", "frames differ in size")}
    rows = []
    for i, clip in enumerate(["clean", *damage]):
        folder = base / "frames" / clip
        folder.mkdir(parents=True)
        suffix = "png" if clip.startswith("png") else "jpg"
        for f in range(1, 9):
            size = (40, 48) if clip == "mixed" and f == 6 else (48, 40)
            Image.effect_noise(size, 40).convert("RGB").save(folder / f"{f:05d}.{suffix}")
        if clip in damage:
            path = folder / damage[clip][0]
            data = path.read_bytes()
            if clip.startswith("corrupt"):
                path.write_bytes(bytes(range(256)) * 4)  # a frame overwritten by something else
            elif clip.startswith("empty"):
                path.write_bytes(b"")
            elif "truncated" in clip:
                path.write_bytes(data[: len(data) // 2])  # a copy cut off half way
        rows.append(dict(id=clip, path=f"frames/{clip}", label=i % 7, label_name=classes[i % 7], label_set="dfew7",
                         modality="video", split="train", fold=1, num_frames=8, height=40, width=48,
                         source="test", group=""))
    return make_manifest(rows), {clip: f"{name}: {text}" if clip != "mixed" else text
                                 for clip, (name, text) in damage.items()}


def test_every_frame_is_checked(tmp_path):
    """A zero-byte, corrupt or truncated frame anywhere in a clip, or a frame of another size, fails
    frames_decode naming the clip and the frame; the clean clip passes."""
    manifest, expected = damaged_clips(tmp_path / "data")
    report = validate_manifests({"dynamic": manifest}, {"dynamic": tmp_path / "data"}, tmp_path / "out",
                                CLIP_LENGTH, min_class_share=0, max_class_share=1, data_docs=False, workers=2)
    result = next(r for r in report.results if r.check == "frames_decode")
    assert not report.success and not result.success
    assert failed_checks(report, "dynamic") == {"frames_decode"}
    assert result.unexpected_count == len(expected)
    shown = dict(e.split(": ", 1) for e in result.examples)
    assert set(shown) == set(expected)  # "clean" is not among them
    for clip, text in expected.items():
        assert text in shown[clip], (clip, shown[clip])
    assert "48x40 (00001.jpg), 40x48 (00006.jpg)" in shown["mixed"]
    assert "FAIL frames_decode" in report.summary()


def test_loader_names_the_clip_with_mixed_frame_sizes(tmp_path):
    from s4d.data.loaders import ClipDataset

    manifest, _ = damaged_clips(tmp_path)
    mixed = manifest[manifest["id"] == "mixed"]
    with pytest.raises(OSError, match=r"clip .*frames/mixed: frames differ in size \(40x48, 48x40\)"):
        ClipDataset(mixed, tmp_path, 32, 8, 1)[0]
