"""Fine-tuning engine: step plan, mixing, optimiser groups, and real (tiny) runs on the toy dataset."""
import contextlib
import math

import numpy as np
import pandas as pd
import pytest
import torch
from timm.data import Mixup

import toydata
from s4d.data.loaders import ClipDataset
from s4d.data.manifest import read_manifest
from s4d.models import MaskedAutoencoder
from s4d.models.checkpoint import build_model, read_checkpoint, save_checkpoint
from s4d.train.evaluate import evaluate
from s4d.models.classifier import S4DClassifier
from s4d.train.finetune import (EpochDraws, FinetuneError, build_optimizer, epoch_draws,
                                finetune, loader, main, mix_batch, predict, static_steps_for, step_plan,
                                task_metrics)


# root and joint (the toy data and its S4D run) are shared session fixtures (conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def read_logs(out):
    return (pd.read_csv(out / "train_log.csv"), pd.read_csv(out / "val_log.csv"),
            pd.read_csv(out / "expert_load.csv"))


# ------------------------------------------------------------------------------------- step schedule
def test_static_steps_match_the_share():
    assert static_steps_for(6, 0.5) == 6
    assert static_steps_for(6, 0.25) == 2  # 2 of 8 steps
    assert static_steps_for(6, 0.0) == 0
    assert static_steps_for(6, 0.01) == 1  # a static head always gets some steps
    with pytest.raises(FinetuneError, match="static_share"):
        static_steps_for(6, 1.0)


def test_step_plan_is_shuffled_and_deterministic_per_seed_and_epoch():
    plan = step_plan(10, 5, seed=3, epoch=1)
    assert plan.count("dynamic") == 10 and plan.count("static") == 5
    assert plan == step_plan(10, 5, seed=3, epoch=1)
    assert plan != step_plan(10, 5, seed=3, epoch=2)
    assert plan != step_plan(10, 5, seed=4, epoch=1)
    assert plan != ["dynamic"] * 10 + ["static"] * 5


def test_epoch_draws_cover_the_rows_and_number_repeats():
    one_pass = epoch_draws(7, 7, seed=0, epoch=1, stream=1)
    assert sorted(i for i, _ in one_pass) == list(range(7)) and {r for _, r in one_pass} == {0}
    assert one_pass == epoch_draws(7, 7, seed=0, epoch=1, stream=1)
    assert one_pass != epoch_draws(7, 7, seed=0, epoch=2, stream=1)
    more = epoch_draws(4, 10, seed=0, epoch=1, stream=2)  # 2.5 passes: every row twice, two rows 3 times
    counts = np.bincount([i for i, _ in more])
    assert sorted(counts.tolist()) == [2, 2, 3, 3]
    for i in range(4):  # the k-th draw of a row carries repeat number k (its own augmentation seed)
        assert [r for j, r in more if j == i] == list(range(counts[i]))
    labels = np.array([0] * 9 + [1])
    balanced = epoch_draws(10, 400, seed=0, epoch=1, stream=1, labels=labels)
    drawn = labels[[i for i, _ in balanced]]
    assert 0.35 < drawn.mean() < 0.65  # the single class-1 row is drawn about half the time


def test_epoch_draws_repeats_get_their_own_augmentation(root):
    rows = read_manifest(root / "prepared" / "dynamic.csv").query("split == 'train'")
    from s4d.data.loaders import Augment
    with contextlib.chdir(root):
        draws = EpochDraws(ClipDataset(rows, ".", 32, 8, 1, augment=Augment(), seed=0))
        draws.epoch = 1
        first, again, second = draws[(0, 0)][0], draws[(0, 0)][0], draws[(0, 1)][0]
    assert torch.equal(first, again)
    assert not torch.equal(first, second)


# -------------------------------------------------------------------------------------------- mixing
def test_cutmix_cuts_the_same_box_in_every_frame():
    np.random.seed(0)
    mixup = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=2)
    videos = torch.stack([torch.zeros(3, 4, 16, 16), torch.ones(3, 4, 16, 16)])
    mixed, target = mix_batch(mixup, videos.clone(), torch.tensor([0, 1]))
    assert mixed.shape == videos.shape
    box = mixed[0, 0, 0] == 1  # the pixels of sample 0 taken from sample 1
    assert 0 < box.sum() < 16 * 16
    for c in range(3):
        for t in range(4):
            assert torch.equal(mixed[0, c, t] == 1, box)
    lam = 1 - box.float().mean()  # share of sample 0's own pixels
    assert torch.allclose(target[0], torch.tensor([lam, 1 - lam]))


def test_mix_batch_handles_odd_and_single_batches():
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=3)
    x, target = mix_batch(mixup, torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1]))
    assert x.shape[0] == target.shape[0] == 4  # Mixup pairs samples: the odd one out is dropped
    assert torch.allclose(target.sum(1), torch.ones(4))
    single = torch.randn(1, 3, 8, 8)
    x, target = mix_batch(mixup, single.clone(), torch.tensor([2]))
    assert torch.equal(x, single)
    assert torch.allclose(target, torch.tensor([[0.1 / 3, 0.1 / 3, 0.9 + 0.1 / 3]]))


# ----------------------------------------------------------------------------------------- optimiser
def test_layer_decay_groups_and_no_weight_decay(root):
    params = toydata.params(root / "prepared")
    model = S4DClassifier(params.model, 4, 3)
    optimizer = build_optimizer(model, params.finetune, lr=1e-3)
    decay, depth = params.finetune.layer_decay, params.model.depth
    scale_of = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            scale_of[id(p)] = (group["lr_scale"], group["weight_decay"])
    named = dict(model.named_parameters())
    assert len(scale_of) == len(named)
    for name in [n for n in named if n.startswith("patch_embed.")]:  # every stem parameter: the lowest LR
        assert scale_of[id(named[name])][0] == pytest.approx(decay ** (depth + 1)), name
    assert scale_of[id(named["blocks.0.attn.qkv.weight"])][0] == pytest.approx(decay ** depth)
    assert scale_of[id(named[f"blocks.{depth - 1}.mlp.fc1.weight"])][0] == pytest.approx(decay)
    assert scale_of[id(named["head_dynamic.weight"])] == (1.0, params.finetune.weight_decay)
    assert scale_of[id(named["fc_norm.weight"])] == (1.0, 0.0)
    last = depth - 1
    assert scale_of[id(named[f"blocks.{last}.moe_layer.experts.fc1.weight"])][1] == params.finetune.weight_decay
    assert scale_of[id(named[f"blocks.{last}.moe_layer.experts.fc1.bias"])][1] == 0.0  # 2-D, stacked


# ---------------------------------------------------------------------------------------- real runs
def test_joint_finetune_learns_and_writes_its_logs(joint):
    out, summary = joint
    steps, epochs, load = read_logs(out)
    n_epochs = toydata.params("x").finetune.epochs
    assert summary["epochs_run"] == len(epochs) == n_epochs and not summary["stopped_early"]
    # The colour classes are easy: perfect on val at the selected epoch; overall far above chance (0.25).
    best = summary["best"]["dynamic"]
    assert best["per_class_recall"]["red"] == best["per_class_recall"]["green"] == 1.0
    assert best["war"] >= 0.7 and best["uar"] >= 0.7
    assert summary["best"]["static"]["war"] >= 0.8  # static chance is 1/3
    assert epochs["train_loss"].iloc[-1] < epochs["train_loss"].iloc[0]

    # One task per step, in the configured share; an epoch is one pass over the dynamic train set.
    per_epoch = steps.groupby(["epoch", "task"]).size().unstack()
    assert (per_epoch["dynamic"] == math.ceil(48 / 8)).all() and (per_epoch["static"] == 6).all()
    assert steps.groupby("epoch")["batch"].sum().min() == 48 + 6 * 8
    assert steps["step"].tolist() == list(range(1, len(steps) + 1))
    assert (steps["clips_per_s"] > 0).all() and steps["loss"].notna().all()
    assert (steps["balance_loss"] > 0).all()
    assert steps["lr"].iloc[: summary["steps_per_epoch"]["dynamic"]].is_monotonic_increasing  # warmup
    for column in ("epoch", "val_uar", "val_war", "train_loss", "val_static_uar"):
        assert column in epochs

    # Expert load: per epoch, task and expert of the one MoAE layer; shares sum to 1.
    assert len(load) == n_epochs * 2 * 4
    assert set(load["task"]) == {"dynamic", "static"} and set(load["block"]) == {1}
    assert np.allclose(load.groupby(["epoch", "task"])["share"].sum(), 1.0)
    assert ((load["dropped_share"] >= 0) & (load["dropped_share"] < 1)).all()

    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "scratch" in (out / "init_report.txt").read_text()
    assert summary["wall_time_s"] > 0 and summary["data"]["dynamic_train"] == 48


def test_best_checkpoint_is_the_best_val_epoch(joint, root):
    out, summary = joint
    epochs = pd.read_csv(out / "val_log.csv")
    best_row = epochs.loc[epochs["val_uar"].idxmax()]  # first epoch reaching the maximum
    ckpt = read_checkpoint(out / "model.pt")
    assert ckpt["meta"]["epoch"] == summary["best_epoch"] == best_row["epoch"]
    assert ckpt["meta"]["labels"] == {"dynamic": toydata.VIDEO_CLASSES, "static": toydata.IMAGE_CLASSES}
    assert ckpt["meta"]["params"]["finetune"]["epochs"] == len(epochs)
    assert epochs["best"].sum() >= 1 and bool(epochs.loc[epochs["val_uar"].idxmax(), "best"])

    # The saved weights reproduce the logged validation numbers of that epoch, at the precision the run chose
    # (`auto`: bf16 autocast on CPUs with fast bf16 units).
    model = build_model(ckpt)
    rows = read_manifest(root / "prepared" / "dynamic.csv").query("split == 'val'")
    with contextlib.chdir(root):
        labels, probs = predict(model, loader(ClipDataset(rows, ".", 32, 8, 1), 8, 0, torch.device("cpu")),
                                torch.device("cpu"), bf16=summary["bf16"])
    metrics = task_metrics(labels, probs, toydata.VIDEO_CLASSES)
    assert metrics["uar"] == pytest.approx(best_row["val_uar"])
    assert metrics["war"] == pytest.approx(best_row["val_war"])
    # bf16 matmuls round differently with another batch layout: the loss agrees to bf16's ~3 digits
    assert metrics["loss"] == pytest.approx(best_row["val_loss"], rel=2e-3 if summary["bf16"] else 1e-4)


def test_early_stopping_with_patience_1(root):
    # A learning rate of 0 cannot improve the first epoch's validation score: stop after one more epoch.
    # (The linear stem: BatchNorm statistics in the hmlp stem would still move with a learning rate of 0.)
    out, summary = toydata.run_finetune(root, "frozen", "finetune.base_lr=0.0", "finetune.epochs=6",
                                        "finetune.patience=1", "models.tiny.stem=linear")
    epochs = pd.read_csv(out / "val_log.csv")
    assert summary["stopped_early"] and summary["epochs_run"] == 2 and len(epochs) == 2
    assert summary["best_epoch"] == 1 and read_checkpoint(out / "model.pt")["meta"]["epoch"] == 1
    assert epochs["val_uar"].nunique() == 1
    assert pd.read_csv(out / "train_log.csv")["epoch"].max() == 2


def test_test_split_is_never_read_in_training(root):
    # Test rows point at folders that do not exist, and the manifest has no val rows: fine-tuning carves
    # val from train (never from test) and succeeds; evaluation then fails naming the missing folder.
    def broken(df):
        df = toydata.no_val(df).copy()
        test = df["split"] == "test"
        df.loc[test, "path"] = "no/such/" + df.loc[test, "id"]
        return df

    prepared = toydata.copy_prepared(root, "prepared_broken_test", broken)
    out, summary = toydata.run_finetune(root, "broken_test", "finetune.epochs=1", prepared=prepared)
    assert summary["data"]["val_carved"]
    assert summary["data"]["dynamic_val"] == 4 * round(0.15 * 12)  # carve_val: per class, from train only
    assert summary["data"]["dynamic_train"] + summary["data"]["dynamic_val"] == 48
    assert (out / "model.pt").is_file()
    with contextlib.chdir(root), pytest.raises(FileNotFoundError, match="no/such/test-red-0"):
        evaluate(toydata.params(prepared), out / "model.pt", root / "runs" / "broken_eval")


def test_video_only_baseline_has_no_static_head_or_data(root):
    prepared = toydata.copy_prepared(root, "prepared_video_only", static=False)  # no static.csv at all
    out, summary = toydata.run_finetune(root, "video_only", "finetune.static_share=0", "finetune.epochs=1",
                                        prepared=prepared)
    ckpt = read_checkpoint(out / "model.pt")
    assert ckpt["num_static_classes"] == 0 and not any(k.startswith("head_static") for k in ckpt["state_dict"])
    steps, epochs, load = read_logs(out)
    assert set(steps["task"]) == {"dynamic"} and len(steps) == 6
    assert not any(c.startswith("val_static") for c in epochs.columns)
    assert set(load["task"]) == {"dynamic"}
    assert summary["model"]["static_head"] is False and "static_train" not in summary["data"]


def test_vanilla_baseline_via_the_command_line(root, capsys):
    out = root / "runs" / "vanilla"
    argv = ["--params", str(toydata.REPO / "params.yaml"), "--out", str(out), *toydata.SMALL_MODEL,
            *toydata.SMALL_RUN, f"data.prepared_dir={root / 'prepared'}", "models.tiny.moae.layers=0",
            "finetune.epochs=1"]
    with contextlib.chdir(root):
        main(argv)
    assert '"best_epoch": 1' in capsys.readouterr().out
    ckpt = read_checkpoint(out / "model.pt")
    assert not any(".moe_layer." in k for k in ckpt["state_dict"]) and ckpt["num_static_classes"] == 3
    assert len(build_model(ckpt).moae_layers()) == 0
    steps, _, load = read_logs(out)
    assert load.empty and list(load.columns)[:4] == ["epoch", "task", "block", "expert"]
    assert set(steps["task"]) == {"dynamic", "static"} and (steps["balance_loss"] == 0).all()


def test_mixup_and_cutmix_run_for_both_modalities(root):
    out, summary = toydata.run_finetune(root, "mixup", "finetune.mixup=0.8", "finetune.cutmix=1.0",
                                        "finetune.batch_size=10", "finetune.epochs=1")
    steps = pd.read_csv(out / "train_log.csv")
    assert set(steps["task"]) == {"dynamic", "static"}
    assert np.isfinite(steps["loss"]).all() and (steps["loss"] > 0).all()
    # 48 clips in batches of 10: the last batch of 8 stays whole (even); batches keep their size
    assert sorted(steps.query("task == 'dynamic'")["batch"].tolist()) == [8, 10, 10, 10, 10]


def test_init_from_a_pretraining_checkpoint_is_reported(root, tmp_path):
    params = toydata.params(root / "prepared")
    mae_path = tmp_path / "mae.pt"
    save_checkpoint(mae_path, MaskedAutoencoder(params.model))
    out, summary = toydata.run_finetune(root, "from_mae", f"finetune.init={mae_path}", "finetune.epochs=1")
    report = (out / "init_report.txt").read_text()
    assert "pretraining checkpoint" in report and "initialised fresh" in report and "moe_layer" in report
    assert "ignored from checkpoint" in report and "decoder" in report
    assert summary["init"] == report.strip() == read_checkpoint(out / "model.pt")["meta"]["init"]


def test_missing_pretraining_checkpoint_is_a_clear_error(root, tmp_path):
    with contextlib.chdir(tmp_path), pytest.raises(FinetuneError, match="artifacts/pretrain/model.pt"):
        finetune(toydata.params(root / "prepared", "finetune.init=pretrain"), tmp_path / "out")
