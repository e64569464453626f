"""The `paper` preset: the inputs the published S4D models were fine-tuned and tested on. Checked against the
official code's definitions (MSA-LMC/S4D finetune/datasets/kinetics.py VideoClsDatasetFrame: test and train
frame sampling, test crops; finetune/datasets/functional.py resize_clip: PIL `resize((160, 160), BILINEAR)`;
finetune/s4d/sfer/__init__.py: stills Resize((192, 192)) + RandomCrop(160) for training, Resize((160, 160))
for testing; ImageNet mean/std), with frame indices and crop boxes worked out by hand from those rules, and
PIL's resize as the reference for the squash."""
import json

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from s4d.config import ConfigError, load_params, to_dict
from s4d.data.loaders import Augment, ClipDataset, ImageDataset, official_test_clips, official_train_clip, spatial_crops
from s4d.data.manifest import make_manifest, write_manifest

from conftest import ROOT, run_module

OFFICIAL_MEAN = np.array([0.485, 0.456, 0.406])  # finetune/datasets/kinetics.py self.mean / self.std
OFFICIAL_STD = np.array([0.229, 0.224, 0.225])


def official_normalise(rgb: np.ndarray) -> np.ndarray:
    """ClipToTensor (/255) then Normalize, as (3, H, W)."""
    return ((rgb / 255.0 - OFFICIAL_MEAN) / OFFICIAL_STD).transpose(2, 0, 1)


def pil_squash(rgb: np.ndarray, size: int) -> np.ndarray:
    """video_transforms.Resize(size=(size, size), interpolation='bilinear') on a PIL frame."""
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR), dtype=np.float64)


def rows_for(paths, labels, modality="video", frames=1, height=0, width=0):
    return [dict(id=f"{modality[0]}{i:03d}", path=p, label=label, label_name=f"c{label}", label_set="folder:c0,c1,c2",
                 modality=modality, split="test", fold=0, num_frames=frames, height=height, width=width,
                 source="test", group="") for i, (p, label) in enumerate(zip(paths, labels))]


def flat_video(folder, total, height=30, width=48):
    """Frame t is flat grey 2 * t (PNG, lossless): the level read back from a model input names the frame."""
    folder.mkdir(parents=True)
    for t in range(total):
        cv2.imwrite(str(folder / f"{t + 1:05d}.png"), np.full((height, width, 3), 2 * t, np.uint8))


def frame_numbers(view: torch.Tensor) -> list[int]:
    """(C, T, H, W) normalised flat frames -> the frame index each one shows."""
    grey = view[0].mean(dim=(-2, -1)).numpy() * OFFICIAL_STD[0] + OFFICIAL_MEAN[0]
    return [int(v) for v in np.round(grey * 255 / 2)]


# ---------------------------------------------------------------------------------------------- params
def test_paper_preset_sets_the_published_inputs_under_the_command_line(tmp_path):
    ours = load_params(ROOT / "params.yaml")
    paper = load_params(ROOT / "params.yaml", ["preset=paper"])
    # ft_moe_dfew.sh: --sampling_rate 4 --test_num_segment 2 --test_num_crop 2
    assert (paper.data.transforms, paper.data.frame_stride, paper.evaluate.clips, paper.evaluate.crops) == \
        ("official", 4, 2, 2)
    expected = to_dict(ours)  # params.yaml's values, but for the four inputs and the preset's name
    expected["preset"] = "paper"
    expected["data"] |= {"transforms": "official", "frame_stride": 4}
    expected["evaluate"] |= {"clips": 2, "crops": 2}
    assert to_dict(paper) == expected

    text = (ROOT / "params.yaml").read_text()
    assert text.count("\npreset: none") == 1
    (tmp_path / "params.yaml").write_text(text.replace("\npreset: none", "\npreset: paper"))
    in_file = load_params(tmp_path / "params.yaml")
    assert (in_file.data.frame_stride, in_file.evaluate.crops) == (4, 2)  # over the file's values
    # FERV39K's script samples every frame (sr=1): one override on top of the preset
    assert load_params(tmp_path / "params.yaml", ["data.frame_stride=1"]).data.frame_stride == 1
    with pytest.raises(ConfigError, match=r"^preset: 'papers' is not one of none, paper$"):
        load_params(ROOT / "params.yaml", ["preset=papers"])
    with pytest.raises(ConfigError, match=r"data\.transforms: 'paper' is not one of ours, official"):
        load_params(ROOT / "params.yaml", ["data.transforms=paper"])


# ------------------------------------------------------------------------------------ temporal views
# Official test sampling: every 4th frame from 0 (padded with its last), clip i starts at
# int(i * (len(grid) - 16) / (2 - 1)) along the grid.
@pytest.mark.parametrize("total, expected", [
    # grid 0..36 is 10 frames, padded with 36 to 16; step max((16 - 16) / 1, 0) = 0: both clips alike
    (40, [[0, 4, 8, 12, 16, 20, 24, 28, 32, 36] + [36] * 6] * 2),
    # grid 0..68 is 18 frames; step 2: the second clip starts at grid[2] = 8
    (70, [list(range(0, 64, 4)), list(range(8, 72, 4))]),
    # grid 0..96 is 25 frames; step 9: grid[9] = 36
    (100, [list(range(0, 64, 4)), list(range(36, 100, 4))]),
])
def test_official_test_clips_take_the_hand_computed_frames(total, expected, tmp_path):
    assert [c.tolist() for c in official_test_clips(total, 16, 4, 2)] == expected
    flat_video(tmp_path / "v", total)
    rows = make_manifest(rows_for(["v"], [0], frames=total))
    x, _ = ClipDataset(rows, tmp_path, 32, 16, 4, clips=2, crops=2, transforms="official")[0]
    assert x.shape == (2, 3, 16, 32, 32)  # 2 clips; the 2 official crops of a squashed frame coincide
    assert [frame_numbers(view) for view in x] == expected
    ours, _ = ClipDataset(rows, tmp_path, 32, 16, 4, clips=2, crops=1)[0]
    if total == 40:  # ours pads with the video's last frame, the official code with the last one on the grid
        assert frame_numbers(ours[0]) == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36] + [39] * 6
    if total == 100:  # ours ends the last clip at the last frame
        assert frame_numbers(ours[1]) == list(range(39, 100, 4))


class FixedEnd:
    """Stands in for np.random.randint(converted_len, seg_len): the window end the official code draws."""

    def __init__(self, end):
        self.end = end

    def integers(self, lo, hi):
        assert (lo, hi) == (64, 100)  # [16 * 4, total)
        return self.end


def test_official_training_clip_is_a_random_window_by_linspace(tmp_path):
    # end 90: linspace(26, 90, 16) = 26 + 64 k / 15 truncated, the last clipped to 89
    assert official_train_clip(100, 16, 4, FixedEnd(90)).tolist() == \
        [26, 30, 34, 38, 43, 47, 51, 55, 60, 64, 68, 72, 77, 81, 85, 89]
    # 40 frames <= 64: linspace(0, 40, 40 // 4 = 10) = 0, 4.44, ... 40, padded with 40, clipped to 39
    assert official_train_clip(40, 16, 4, FixedEnd(None)).tolist() == [0, 4, 8, 13, 17, 22, 26, 31, 35, 39] + [39] * 6

    flat_video(tmp_path / "v", 100)
    rows = make_manifest(rows_for(["v"], [0], frames=100))
    plain = Augment(scale=(1.0, 1.0), flip=False, rand_augment=False, erase_prob=0.0)
    data = ClipDataset(rows, tmp_path, 32, 16, 4, augment=plain, transforms="official")
    allowed = {tuple(official_train_clip(100, 16, 4, FixedEnd(end)).tolist()) for end in range(64, 100)}
    drawn = set()
    for epoch in range(6):
        data.set_epoch(epoch)
        x, _ = data[0]
        assert x.shape == (3, 16, 32, 32)
        drawn.add(tuple(frame_numbers(x)))
    assert drawn <= allowed and len(drawn) > 1


# ------------------------------------------------------------------------------------- spatial views
def smooth_image(height, width, seed=0):
    """A colour image with detail at several scales (so a wrong crop or resize shows), values 0..255."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    img = np.stack([128 + 100 * np.sin(2 * np.pi * (f * xx + g * yy) + p)
                    for f, g, p in rng.uniform(0.5, 3, (3, 3))], axis=-1)
    return img.clip(0, 255).astype(np.uint8)


def test_official_views_of_a_non_square_frame_are_the_whole_squashed_frame(tmp_path):
    """Official test crops: Resize((32, 32)) then crops (max(h, w) - 32) / (crops - 1) = 0 apart: both crops are
    rows 0..31, cols 0..31 of the squashed frame, i.e. all of it; ours centre-crops the short-side resize."""
    rgb = smooth_image(30, 48)
    cv2.imwrite(str(tmp_path / "still.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    flat = tmp_path / "v"
    flat.mkdir()
    for t in range(8):
        cv2.imwrite(str(flat / f"{t:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    reference = official_normalise(pil_squash(rgb, 32))
    pixels = (OFFICIAL_STD * 255)[:, None, None]  # normalised units -> grey levels

    still, _ = ImageDataset(make_manifest(rows_for(["still.png"], [0], "image")), tmp_path, 32, augment=None,
                            crops=2, transforms="official")[0]
    clip, _ = ClipDataset(make_manifest(rows_for(["v"], [0], frames=8)), tmp_path, 32, 4, 2, clips=1, crops=2,
                          transforms="official")[0]
    assert still.shape == (1, 3, 32, 32) and clip.shape == (1, 3, 4, 32, 32)
    assert np.abs((still[0].numpy() - reference) * pixels).max() <= 1.5  # torchvision antialias vs PIL bilinear
    for t in range(4):
        assert np.abs((clip[0, :, t].numpy() - reference) * pixels).max() <= 1.5

    ours, _ = ImageDataset(make_manifest(rows_for(["still.png"], [0], "image")), tmp_path, 32, augment=None)[0]
    assert np.abs((ours[0].numpy() - reference) * pixels).max() > 20  # a different picture of the same frame


def test_our_crops_along_the_long_side_take_the_hand_computed_columns():
    """A 64 x 150 frame at size 64 (no resize): 2 crops take columns 0..63 and 86..149, 3 crops 0, 43, 86."""
    columns = torch.arange(150, dtype=torch.uint8).expand(3, 64, 150)
    assert [int(c[0, 0, 0]) for c in spatial_crops(columns, 64, 2)] == [0, 86]
    assert [int(c[0, 0, 0]) for c in spatial_crops(columns, 64, 3)] == [0, 43, 86]
    assert [int(c[0, 0, 0]) for c in spatial_crops(columns, 64, 1)] == [43]
    rows = columns.transpose(1, 2)  # a portrait frame: the crops move down
    assert [int(c[0, 0, 0]) for c in spatial_crops(rows, 64, 2)] == [0, 86]
    assert all(c.shape == (3, 64, 64) for c in spatial_crops(rows, 64, 3))


def test_official_training_still_is_a_random_crop_of_the_squash_to_1_2_times(tmp_path):
    """sfer/__init__.py data_augment: Resize((192, 192)) then RandomCrop((160, 160)); at 40 px: 48 then 40."""
    rgb = smooth_image(30, 48, seed=1)
    cv2.imwrite(str(tmp_path / "still.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    plain = Augment(scale=(1.0, 1.0), flip=False, rand_augment=False, erase_prob=0.0)
    data = ImageDataset(make_manifest(rows_for(["still.png"], [0], "image")), tmp_path, 40, augment=plain,
                        transforms="official")
    big = official_normalise(pil_squash(rgb, 48))
    pixels = (OFFICIAL_STD * 255)[:, None, None]
    offsets = set()
    for epoch in range(4):
        data.set_epoch(epoch)
        x = data[0][0].numpy()
        assert x.shape == (3, 40, 40)
        errors = {(y, x0): np.abs((x - big[:, y:y + 40, x0:x0 + 40]) * pixels).max()
                  for y in range(9) for x0 in range(9)}
        best = min(errors, key=errors.get)
        assert errors[best] <= 1.5
        offsets.add(best)
    assert len(offsets) > 1  # a random crop, not a fixed one


# ------------------------------------------------------------------------ evaluate on an imported model
@pytest.mark.slow
def test_evaluate_with_the_paper_preset_on_an_imported_s4d_model(tmp_path, monkeypatch):
    """`s4d import` an official S4D file, then `python -m s4d.train.evaluate --checkpoint imported.pt
    preset=paper` on non-square frames: its probabilities are the model's on the inputs built here by the
    official rules (PIL squash, clips on the stride-4 grid, softmax averaged over the views)."""
    from test_official import SMALL_S4D_ARGS, official_state_dict, save_official

    from s4d.cli import main as s4d
    from s4d.models import load_model

    monkeypatch.chdir(tmp_path)
    sd = official_state_dict(dim=96, depth=2, mlp=192, patch=8, classes=3, image_classes=3, moe_layers=(1,),
                             experts=4, bottleneck=24, seed=11)
    src = save_official(tmp_path / "checkpoint-best.pth", sd, **SMALL_S4D_ARGS)  # 32 px, 4 frames
    assert s4d(["import", str(src), "imported.pt", "--dynamic-labels", "c0,c1,c2", "--static-labels", "c0,c1,c2"]) == 0

    videos, stills, totals = [], [], [45, 40, 61]
    for i, total in enumerate(totals):
        folder = tmp_path / "frames" / f"{i}"
        folder.mkdir(parents=True)
        video = [smooth_image(36, 60, seed=10 * i + t // 8) for t in range(total)]  # changes every 8 frames
        for t, rgb in enumerate(video):
            cv2.imwrite(str(folder / f"{t:05d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        videos.append(video)
        stills.append(smooth_image(50, 30, seed=100 + i))
        cv2.imwrite(str(tmp_path / f"still{i}.png"), cv2.cvtColor(stills[-1], cv2.COLOR_RGB2BGR))
    write_manifest(make_manifest(rows_for([f"frames/{i}" for i in range(3)], [0, 1, 2], frames=40)),
                   tmp_path / "artifacts/prepared/dynamic.csv")
    write_manifest(make_manifest(rows_for([f"still{i}.png" for i in range(3)], [0, 1, 2], "image")),
                   tmp_path / "artifacts/prepared/static.csv")
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())

    runs = {name: run_module("s4d.train.evaluate", "--checkpoint", "imported.pt", "--out", f"eval_{name}", *extra,
                             cwd=tmp_path) for name, extra in (("paper", ["preset=paper"]), ("ours", []))}
    for done in runs.values():
        assert done.returncode == 0, done.stderr
    assert "(n=3, 2x2 views squashed, crops coincide)" in runs["paper"].stdout
    metrics = json.loads((tmp_path / "eval_paper/metrics.json").read_text())
    assert metrics["views"] == {"clips": 2, "crops": 2}
    assert metrics["inputs"] == {"transforms": "official", "frame_stride": 4}

    model = load_model(tmp_path / "imported.pt")
    # grids: 45 frames -> 0..44 (12) step 8; 40 -> 0..36 (10) step 6; 61 -> 0..60 (16) step 12 (4 frames a clip)
    clips = [[official_test_clips(total, 4, 4, 2)[c] for c in range(2)] for total in totals]
    assert [[c.tolist() for c in v] for v in clips] == [[[0, 4, 8, 12], [32, 36, 40, 44]],
                                                       [[0, 4, 8, 12], [24, 28, 32, 36]],
                                                       [[0, 4, 8, 12], [48, 52, 56, 60]]]
    x = torch.tensor(np.stack([np.stack([np.stack([official_normalise(pil_squash(videos[v][t], 32)) for t in idx],
                                                   axis=1) for idx in clips[v]]) for v in range(3)]),
                     dtype=torch.float32)  # (videos, 2 clips, C, T, H, W)
    images = torch.tensor(np.stack([official_normalise(pil_squash(s, 32)) for s in stills]), dtype=torch.float32)
    # one batch of every view, as evaluate forwards it (the MoE capacity is per batch), at the precision it chose
    bf16 = "precision: bf16 autocast" in runs["paper"].stderr
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        expected = model(x.flatten(0, 1)).float().softmax(dim=-1).view(3, 2, -1).mean(dim=1).numpy()
        expected_static = model(images).float().softmax(dim=-1).numpy()
    scores = {name: pd.read_csv(tmp_path / f"eval_{name}/scores.csv")[["p_c0", "p_c1", "p_c2"]].to_numpy()
              for name in ("paper", "ours")}
    static = pd.read_csv(tmp_path / "eval_paper/scores_static.csv")[["p_c0", "p_c1", "p_c2"]].to_numpy()
    # PIL and torchvision round their resized frames to whole grey levels on their own: a few 1e-3 apart
    gaps = [np.abs(scores["paper"] - expected).max(), np.abs(static - expected_static).max(),
            np.abs(scores["ours"] - expected).max()]
    print("max |probability difference| paper video, paper stills, ours video:", gaps)
    tol = 1e-2 if bf16 else 5e-3  # bf16's 8-bit mantissa roughly doubles those gaps (measured 5.2e-3 on stills)
    assert gaps[0] < tol and gaps[1] < tol, gaps
    assert gaps[2] > 2e-2, gaps  # the preset changed what the model saw
