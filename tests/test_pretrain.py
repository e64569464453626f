"""DeepSpeed MAE pretraining as real processes: resume after SIGKILL, 2 ranks, 2 nodes on one machine."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import MICRO_MODEL, ROOT, run_module
from s4d.io import free_port

pytestmark = pytest.mark.slow

ONE_RANK = MICRO_MODEL + ["pretrain.batch_size=8", "pretrain.image_batch_size=16", "pretrain.epochs=6",
                          "pretrain.checkpoint_every=4", "pretrain.keep_last=2", "pretrain.base_lr=0.2",
                          "pretrain.zero_stage=2"]
# The same global batch split over two ranks.
TWO_RANKS = ONE_RANK + ["pretrain.batch_size=4", "pretrain.image_batch_size=8"]
ENV = {"OMP_NUM_THREADS": "1"}


def losses(project):
    with (project / "artifacts/pretrain/log.csv").open() as f:
        return [(int(r["step"]), r["modality"], float(r["loss"])) for r in csv.DictReader(f)]


def weights(project):
    return torch.load(project / "artifacts/pretrain/model.pt", weights_only=True)["state_dict"]


def copy_project(src, dst):
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("pretrain"))
    return dst


def test_pretraining_learns_and_writes_outputs(micro_project):
    cache = micro_project / "cache"
    done = run_module("s4d.train.pretrain", *ONE_RANK, cwd=micro_project, env={**ENV, "S4D_CACHE_DIR": str(cache)})
    assert done.returncode == 0, done.stderr[-3000:]
    # the stage chose the precision and the attention kernel by the probes and applied them (printed, cached)
    chosen = "bf16" if "precision: bf16 autocast on cpu (auto:" in done.stderr else "fp32"
    assert chosen == "bf16" or "precision: fp32 on cpu (auto:" in done.stderr
    assert f"attention cpu {chosen} train" in done.stderr
    assert any(f"attention cpu {chosen} train" in key for key in json.loads((cache / "precision.json").read_text()))
    # learning evidence beside the loss: probes of the pretrained and the random encoder, the baseline
    summary = json.loads((micro_project / "artifacts/pretrain/summary.json").read_text())
    for modality in ("video", "image"):
        for encoder in ("pretrained", "random_init"):
            row = summary["probe"][modality][encoder]
            assert 0.0 <= row["val_uar"] <= 1.0 and row["n_val"] > 0 and row["n_train"] > 0
        assert 0.0 < summary["baseline_loss"][modality] < 2.0
        assert summary["mae_loss_on_probe_sample"][modality] > 0.0
        # the MAE and the input-ignoring guess on the same tokens of training rows, augmented as trained: half of
        # the rows scored (at most probe_samples), the guess fitted on the others
        sample = summary["training_sample"][modality]
        rows = summary["data"]["videos" if modality == "video" else "images"]
        assert sample["samples"] == min(128, rows // 2) and sample["fit_samples"] == min(rows - sample["samples"], 8 * 128)
        assert 0.0 < sample["baseline_loss"] < 2.0 and 0.0 < sample["mae_loss"] < 2.0
        assert f"{modality}: MAE loss" in done.stdout and f"for the per-position mean of {sample['fit_samples']} others" \
            in done.stdout
    assert summary["probe_seconds"] >= 0.0
    log = losses(micro_project)
    assert [s for s, _, _ in log] == list(range(1, 25))
    assert {m for _, m, _ in log} == {"video", "image"}
    first = sum(loss for _, _, loss in log[:4]) / 4
    last = sum(loss for _, _, loss in log[-4:]) / 4
    assert last < first * 0.95, (first, last)
    out = micro_project / "artifacts/pretrain"
    assert (out / "loss.png").stat().st_size > 5000
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000020", "step_00000024"]
    assert (out / "checkpoints/latest").read_text() == "step_00000024"


def test_bf16_autocast_trains_fp32_weights(micro_project, tmp_path):
    """precision bf16 (what `auto` picks on CPUs with fast bf16 units): the hmlp stem's BatchNorm runs under
    autocast, and the exported weights stay fp32. DeepSpeed's own bf16 mode cast the parameters but not the
    BatchNorm buffers, and the first step failed."""
    project = copy_project(micro_project, tmp_path / "bf16")
    done = run_module("s4d.train.pretrain", *ONE_RANK, "pretrain.epochs=2", "pretrain.precision=bf16",
                      "pretrain.probe_samples=0", cwd=project, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "precision: bf16 autocast on cpu (bf16: set in params)" in done.stderr
    summary = json.loads((project / "artifacts/pretrain/summary.json").read_text())
    assert summary["bf16"] is True and summary["steps"] == 8
    state = weights(project)
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float32}
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    log = losses(project)
    assert len(log) == 8 and all(0.0 < loss < 3.0 for _, _, loss in log)


def test_kill_and_resume_ends_with_the_same_weights(micro_project, tmp_path):
    killed = copy_project(micro_project, tmp_path / "killed")
    full = run_module("s4d.train.pretrain", *ONE_RANK, cwd=micro_project, env=ENV)
    assert full.returncode == 0, full.stderr[-3000:]

    proc = subprocess.Popen([sys.executable, "-m", "s4d.train.pretrain", *ONE_RANK], cwd=killed,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **ENV},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed / "artifacts/pretrain/checkpoints/latest"
    deadline = time.time() + 240
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "artifacts/pretrain/model.pt").exists()

    resumed = run_module("s4d.train.pretrain", *ONE_RANK, cwd=killed, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    start = int(next(line for line in resumed.stdout.splitlines() if "resuming from step" in line).split()[3])
    assert 0 < start < 24
    assert losses(killed) == losses(micro_project)
    a, b = weights(micro_project), weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_ranks_track_one_rank_on_the_same_global_batch(micro_project, tmp_path):
    # The linear stem: the hmlp stem's BatchNorm takes its statistics per rank (SyncBatchNorm needs a GPU),
    # so with it two half batches cannot give the one-rank loss exactly.
    linear = ["models.tiny.stem=linear"]
    one = run_module("s4d.train.pretrain", *ONE_RANK, *linear, cwd=micro_project, env=ENV)
    assert one.returncode == 0, one.stderr[-3000:]
    two_dir = copy_project(micro_project, tmp_path / "two")
    two = run_module("torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
                     "-m", "s4d.train.pretrain", *TWO_RANKS, *linear, cwd=two_dir, env=ENV)
    assert two.returncode == 0, two.stderr[-3000:]
    summary = (two_dir / "artifacts/pretrain/summary.json").read_text()
    assert '"world_size": 2' in summary and '"zero_stage": 2' in summary
    for (s1, m1, l1), (s2, m2, l2) in zip(losses(micro_project), losses(two_dir), strict=True):
        assert (s1, m1) == (s2, m2)
        assert abs(l1 - l2) < 1e-4 * max(1.0, abs(l1)), (s1, l1, l2)


def test_two_nodes_with_one_launcher_each(micro_project):
    port = str(free_port())
    env = {**os.environ, "PYTHONPATH": str(ROOT), **ENV}
    launchers = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank",
                                   str(rank), "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
                                   "--master_port", port, "-m", "s4d.train.pretrain", *TWO_RANKS,
                                   "pretrain.zero_stage=3"],
                                  cwd=micro_project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
                 for rank in (0, 1)]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in launchers]
    finally:
        for p in launchers:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in launchers] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    summary = (micro_project / "artifacts/pretrain/summary.json").read_text()
    assert '"world_size": 2' in summary and '"zero_stage": 3' in summary
    assert len(losses(micro_project)) == 24


def test_changed_data_does_not_resume_an_old_run(micro_project):
    """Same params, other data: the old checkpoints are not resumed (they are cleared, training restarts)."""
    first = run_module("s4d.train.pretrain", *ONE_RANK, "pretrain.epochs=1", cwd=micro_project, env=ENV)
    assert first.returncode == 0, first.stderr[-3000:]
    manifest = micro_project / "artifacts/prepared/dynamic.csv"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[:-1]) + "\n")  # one video fewer
    again = run_module("s4d.train.pretrain", *ONE_RANK, "pretrain.epochs=1", cwd=micro_project, env=ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" not in again.stdout
    assert [s for s, _, _ in losses(micro_project)][0] == 1


def test_missing_prepared_data_is_a_clear_error(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    done = run_module("s4d.train.pretrain", cwd=tmp_path, env=ENV)
    assert done.returncode == 1
    assert "pretrain failed: manifest artifacts/prepared/dynamic.csv does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_evidence_line_of_a_video_only_mae_names_the_untrained_modality():
    """A video-only MAE (MAE-DFER, pretrain.image_step_share=0) has no image loss: said, not printed as nan."""
    from s4d.train.pretrain import evidence_line

    probe = {"pretrained": {"val_uar": 0.171, "val_accuracy": 0.167},
             "random_init": {"val_uar": 0.083, "val_accuracy": 0.083}}
    line = evidence_line({"probe": {"video": probe, "image": probe}, "final_loss": {"video": 0.8078},
                          "mae_loss_on_probe_sample": {"video": 0.7291, "image": 0.9759},
                          "baseline_loss": {"video": 0.7042, "image": 0.9241},
                          "training_sample": {"video": {"mae_loss": 0.8011, "baseline_loss": 0.8104, "samples": 128,
                                                        "fit_samples": 1024}}})
    video, image = line.splitlines()
    assert video.startswith("video: MAE loss 0.8078 (last steps); on 128 training samples augmented as trained 0.8011 "
                            "vs 0.8104 for the per-position mean of 1024 others; 0.7291 on the probe sample")
    assert image.startswith("image: no MAE training steps; 0.9759 on the probe sample") and "nan" not in line
