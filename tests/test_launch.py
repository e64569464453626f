"""The launcher and the data-parallel, resumable fine-tuning it runs (CPU, gloo, the micro model).

Every run here is the documented command (`python -m s4d.train.finetune ...`, a launcher when
finetune.nproc_per_node > 1), with loader workers on. Kills and stops happen at a chosen step through the
S4D_STEP_HOOK test hook, never by racing a timer.
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import MICRO_MODEL, ROOT, run_module, write_micro_dataset
from s4d.config import load_params

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # multi-process runs of minutes each: `make test-heavy`

# 16 train videos, batch 8: 2 dynamic + 2 static steps per epoch, 12 steps; checkpoints at 3, 6, 9 and after
# each epoch. The linear stem has no BatchNorm, so N ranks match one process in every tensor.
# fp32 on every machine: "N ranks give one rank's weights to float tolerance" is an fp32 property. bf16 autocast
# (what precision auto picks on CPUs with fast bf16 units) rounds each chunk's activations to 8 mantissa bits:
# after these 12 steps 1 and 2 ranks differed by up to 4e-3 in a weight.
RUN = [*MICRO_MODEL, "models.tiny.stem=linear", "data.workers=1", "finetune.epochs=3", "finetune.micro_batch=4",
       "finetune.checkpoint_every=3", "launch.timeout_s=20", "launch.grace_s=60", "finetune.precision=fp32"]
TWO = ["finetune.nproc_per_node=2"]
VAL_COLUMNS = ["epoch", "last_step", "train_loss", "val_uar", "val_war", "val_loss", "best"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")
    write_micro_dataset(root)
    return root


def finetune_cmd(root: Path, out: str, *extra: str, env: dict | None = None):
    return run_module("s4d.train.finetune", *RUN, *extra, "--out", out, cwd=root, env=env, timeout=400)


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def val_log(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "val_log.csv")[VAL_COLUMNS]


@pytest.fixture(scope="module")
def one_rank(project):
    proc = finetune_cmd(project, "one")
    assert proc.returncode == 0, proc.stderr
    return project / "one"


@pytest.fixture(scope="module")
def two_ranks(project):
    proc = finetune_cmd(project, "two", *TWO)
    assert proc.returncode == 0, proc.stderr
    return project / "two"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def descendants(pid: int) -> list[int]:
    """Every process below pid (workers and their data-loader processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def survivors(pids: list[int], wait_s: float = 10.0) -> list[int]:
    """The pids still alive after up to wait_s (data-loader processes notice a dead parent within seconds)."""
    deadline = time.time() + wait_s
    while [pid for pid in pids if alive(pid)] and time.time() < deadline:
        time.sleep(0.1)
    return [pid for pid in pids if alive(pid)]


def wait_for_hook(launcher: subprocess.Popen, hook: Path, timeout_s: float = 300) -> None:
    """Until a worker paused at its step hook (it writes its pid into `hook`); fails if the launcher ended first."""
    deadline = time.time() + timeout_s
    while not hook.exists():
        assert launcher.poll() is None, launcher.communicate()
        assert time.time() < deadline, "the run never reached the hook"
        time.sleep(0.2)


def start_paused(root: Path, out: str, step: int, *extra: str, new_session: bool = False):
    """A 2-rank fine-tune whose rank 0 waits after `step`; returns (launcher, its worker pids)."""
    hook = root / f"{out}.paused"
    hook.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "S4D_STEP_HOOK": f"{step}:pause", "S4D_HOOK_FILE": str(hook)}
    launcher = subprocess.Popen([sys.executable, "-m", "s4d.train.finetune", *RUN, *TWO, *extra, "--out", out],
                                cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=new_session)
    wait_for_hook(launcher, hook)
    workers = descendants(launcher.pid)
    assert int(hook.read_text()) in workers and len(workers) >= 2
    return launcher, workers


def test_two_ranks_equal_one_rank_with_gradient_accumulation(one_rank, two_ranks):
    """Global batch 8, micro-batch 4: one process accumulates two chunks, two ranks take one each."""
    a, b = weights(one_rank / "model.pt"), weights(two_ranks / "model.pt")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    one, two = (json.loads((out / "summary.json").read_text()) for out in (one_rank, two_ranks))
    assert one["best_epoch"] == two["best_epoch"] and one["steps"] == two["steps"] == 12
    assert (one["world_size"], two["world_size"]) == (1, 2)
    pd.testing.assert_frame_equal(val_log(one_rank), val_log(two_ranks), rtol=1e-4)
    steps = [pd.read_csv(out / "train_log.csv") for out in (one_rank, two_ranks)]
    pd.testing.assert_series_equal(steps[0]["loss"], steps[1]["loss"], rtol=1e-4)
    assert not (one_rank / "checkpoints").exists()  # a finished run keeps no resume state


def test_kill_9_and_restart_gives_bit_identical_weights(project, one_rank):
    proc = finetune_cmd(project, "killed", env={"S4D_STEP_HOOK": "7:kill"})
    assert proc.returncode == -signal.SIGKILL
    assert (project / "killed" / "checkpoints" / "latest").read_text().strip() == "step_00000006.pt"
    assert not (project / "killed" / "model.pt").exists()

    default = load_params(ROOT / "params.yaml").finetune.base_lr
    changed = finetune_cmd(project, "killed", f"finetune.base_lr={default / 2}")
    assert changed.returncode == 2
    assert f"finetune.base_lr: {default} -> {default / 2}" in changed.stderr and "Traceback" not in changed.stderr

    proc = finetune_cmd(project, "killed")
    assert proc.returncode == 0, proc.stderr
    assert "resuming from step 6 of 12" in proc.stdout
    a, b = weights(one_rank / "model.pt"), weights(project / "killed" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(val_log(one_rank), val_log(project / "killed"))
    logs = [pd.read_csv(out / "train_log.csv").drop(columns="clips_per_s") for out in (one_rank, project / "killed")]
    pd.testing.assert_frame_equal(*logs)


def test_a_killed_rank_stops_the_launcher_and_two_ranks_resume_exactly(project, two_ranks):
    proc = finetune_cmd(project, "killed2", *TWO, env={"S4D_STEP_HOOK": "7:kill:1"})
    assert proc.returncode == 128 + signal.SIGKILL
    assert "rank 1" in proc.stderr and "SIGKILL" in proc.stderr
    proc = finetune_cmd(project, "killed2", *TWO)
    assert proc.returncode == 0, proc.stderr
    assert "resuming from step 6 of 12" in proc.stdout
    a, b = weights(two_ranks / "model.pt"), weights(project / "killed2" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(val_log(two_ranks), val_log(project / "killed2"))


def test_sigterm_to_the_launcher_checkpoints_and_stops_every_worker(project):
    launcher, workers = start_paused(project, "term", 5)
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM at step 5 of 12" in err
    assert (project / "term" / "checkpoints" / "latest").read_text().strip() == "step_00000005.pt"
    assert not survivors(workers)


def test_kill_9_of_the_launchers_process_group_leaves_no_worker(project):
    launcher, workers = start_paused(project, "group", 2, new_session=True)
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait(timeout=30)
    assert not survivors(workers)


def test_kill_9_of_the_launcher_alone_stops_its_workers(project):
    """The workers ask for SIGTERM when the launcher dies: they checkpoint and exit."""
    launcher, workers = start_paused(project, "orphans", 5)
    launcher.kill()
    launcher.wait(timeout=30)
    assert not survivors(workers, wait_s=120)
    assert (project / "orphans" / "checkpoints" / "latest").read_text().strip() == "step_00000005.pt"


def test_distributed_evaluation_equals_one_process(project, one_rank):
    from s4d.config import load_params
    from s4d.train.evaluate import evaluate

    with contextlib.chdir(project):
        single = evaluate(load_params(project / "params.yaml", RUN), one_rank / "model.pt", project / "eval1")
    proc = run_module("s4d.train.evaluate", *RUN, *TWO, "--checkpoint", str(one_rank / "model.pt"),
                      "--out", "eval2", cwd=project)
    assert proc.returncode == 0, proc.stderr
    sharded = json.loads((project / "eval2" / "metrics.json").read_text())
    for task in ("dynamic", "static"):
        for key in ("uar", "war", "n", "per_class_recall"):
            assert sharded[task][key] == single[task][key], (task, key)
        assert sharded[task]["loss"] == pytest.approx(single[task]["loss"], rel=1e-3)
    scores = [pd.read_csv(project / d / "scores.csv") for d in ("eval1", "eval2")]
    assert scores[0]["id"].tolist() == scores[1]["id"].tolist()
    # Not bit-equal: MoAE capacity is counted per forward, so a shard's smaller batches drop other tokens
    # (on this model: probabilities move by ~1e-4; with no drops the shards compute exactly the same).
    pd.testing.assert_frame_equal(*scores, rtol=0, atol=1e-3)
    routing = [json.loads((project / d / "routing.json").read_text()) for d in ("eval1", "eval2")]
    assert routing[0]["tasks"]["dynamic"]["tokens"] == routing[1]["tasks"]["dynamic"]["tokens"] > 0
    assert routing[0]["tasks"]["dynamic"]["layers"][0]["top1_share"] == pytest.approx(
        routing[1]["tasks"]["dynamic"]["layers"][0]["top1_share"])


def test_launcher_command_line_errors_are_one_line(project):
    proc = run_module("s4d.train.launch", "--nnodes", "2", "--node_rank", "2", "s4d.train.finetune", cwd=project)
    assert proc.returncode == 2 and "--node_rank must be in 0..1, got 2" in proc.stderr
    proc = run_module("s4d.train.launch", "s4d.train.finetune", "launch.timeout_s=1", cwd=project)
    assert proc.returncode == 2 and "launch.timeout_s" in proc.stderr and "Traceback" not in proc.stderr


def node_cmd(node: int, port: int, out: str) -> list[str]:
    return [sys.executable, "-m", "s4d.train.launch", "--nnodes", "2", "--node_rank", str(node),
            "--master_addr", "127.0.0.1", "--master_port", str(port), "--nproc_per_node", "1",
            "s4d.train.finetune", *RUN, "--out", out]


def test_two_nodes_on_loopback_lose_a_node_exit_named_and_resume_exactly(project, two_ranks):
    """Two launchers as two nodes (one rank each). Node 1 is killed (its whole process group) while its rank
    waits after step 7: node 0 ends within 60 s naming its rank; restarting both resumes from step 6 and
    ends with the weights of a single-node 2-process run."""
    from s4d.io import free_port

    # One thread per rank, as the single-node launcher gives each of its 2 ranks on this machine: the same
    # float summation order, so the same bits.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // 2))}
    hook = project / "nodes.paused"
    port = free_port()
    node0 = subprocess.Popen(node_cmd(0, port, "nodes"), cwd=project, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    node1 = subprocess.Popen(node_cmd(1, port, "nodes"), cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True,
                             env={**env, "S4D_STEP_HOOK": "7:pause:1", "S4D_HOOK_FILE": str(hook)})
    deadline = time.time() + 300
    while not hook.exists():
        assert node0.poll() is None and node1.poll() is None, (node0.communicate(), node1.communicate())
        assert time.time() < deadline
        time.sleep(0.2)
    node0_workers = descendants(node0.pid)
    os.killpg(node1.pid, signal.SIGKILL)
    node1.wait(timeout=30)
    lost = time.time()
    _, err = node0.communicate(timeout=90)
    assert time.time() - lost < 60
    assert node0.returncode == 1, err
    assert "rank 0 of 2 (node 0): a collective failed, another rank was lost" in err
    assert "lost: rank 1 (node 1) did not answer" in err  # the lost rank is named, not only the survivor
    assert "launch: node 0: rank 0" in err
    assert not survivors(node0_workers)

    port = free_port()
    nodes = [subprocess.Popen(node_cmd(n, port, "nodes"), cwd=project, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in (0, 1)]
    outs = [node.communicate(timeout=400) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outs
    assert "resuming from step 6 of 12" in outs[0][0]
    a, b = weights(two_ranks / "model.pt"), weights(project / "nodes" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(val_log(two_ranks), val_log(project / "nodes"))


def test_pretraining_with_nproc_2_runs_under_the_launcher_checkpoints_on_sigterm_and_resumes(project):
    """`pretrain.nproc_per_node=2` makes the plain stage command a launcher of 2 DeepSpeed ranks. A SIGTERM to
    it while rank 0 waits after step 1 (no checkpoint due there) writes a checkpoint of step 1 and stops
    every worker (exit 143); the same command resumes from step 1 and finishes."""
    args = [*MICRO_MODEL, "pretrain.nproc_per_node=2", "pretrain.epochs=1", "pretrain.batch_size=4",
            "pretrain.image_batch_size=8", "pretrain.checkpoint_every=100"]
    hook = project / "pretrain.paused"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "S4D_STEP_HOOK": "1:pause", "S4D_HOOK_FILE": str(hook)}
    launcher = subprocess.Popen([sys.executable, "-m", "s4d.train.pretrain", *args], cwd=project, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_hook(launcher, hook)
    workers = descendants(launcher.pid)
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 128 + signal.SIGTERM, err
    assert "pretraining stopped by SIGTERM at step 1 of" in err
    ckpt = project / "artifacts" / "pretrain" / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step_00000001"
    assert not (project / "artifacts" / "pretrain" / "model.pt").exists()
    assert not survivors(workers)

    proc = run_module("s4d.train.pretrain", *args, cwd=project, timeout=400)
    assert proc.returncode == 0, proc.stderr
    assert "resuming from step 1 of" in proc.stdout
    summary = json.loads((project / "artifacts" / "pretrain" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] > 1 and summary["steps_this_run"] == summary["steps"] - 1
