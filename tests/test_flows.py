"""The Prefect retraining flow on a micro project: under prefect_test_harness (a full run with a 2-process
pretraining job, a re-run that reuses pretraining and fails the gate, bad inputs), and for real: `prefect
server start` + a process worker + `prefect deployment run`, and the weekly cron deployment creating runs."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import MICRO_MODEL, ROOT, bentoml_home
from flows.retrain import stop_process_group
from flows.worker import descendants
from s4d import registry
from s4d.io import free_port
from test_registry import STUB_BENTOFILE, STUB_SERVICE

CLASSES = ("c0", "c1", "c2")
SPLITS = {"train": (4, 8), "val": (1, 2), "test": (2, 2)}  # per class: (videos, images)
MICRO_RUN = MICRO_MODEL + [
    "data.frame_stride=1", "pretrain.batch_size=4", "pretrain.image_batch_size=8", "pretrain.epochs=2",
    "pretrain.checkpoint_every=100", "finetune.epochs=2", "finetune.batch_size=8", "finetune.image_batch_size=8",
    "finetune.warmup_epochs=0", "evaluate.clips=1", "evaluate.batch_size=8",
    "gate.min_uar=0.0", "gate.min_war=0.0", "gate.max_uar_drop=1.0", "gate.max_war_drop=1.0",
    # After MICRO_MODEL's data.workers=0: the flow runs its loaders with worker processes, as users' runs do
    # (forked workers inherit Prefect's exit hooks; with 0 workers that failure could never show).
    "data.workers=2",
]
TELEMETRY_OFF = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "BENTOML_DO_NOT_TRACK": "true",
                 "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1"}


def write_folder_dataset(root: Path, size: int = 40, frames: int = 6) -> None:
    """data/folder/{videos,images}/<split>/<class>/...: colour and motion encode the class (as conftest's)."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 100, size, dtype=np.float32)
    background = (ramp[None, :, None] + ramp[:, None, None] * 0.5).repeat(3, axis=2)

    def frame(label):
        img = background + rng.normal(0, 3, (size, size, 3))
        img[..., label] += 100
        return img.clip(0, 255).astype(np.uint8)

    for split, (n_videos, n_images) in SPLITS.items():
        for label, name in enumerate(CLASSES):
            for i in range(n_videos):
                folder = root / "data/folder/videos" / split / name / f"v{i:03d}"
                folder.mkdir(parents=True)
                for t in range(frames):
                    img = frame(label)
                    x = (4 + 5 * t) if label != 2 else (size - 8 - 5 * t)
                    cv2.rectangle(img, (x, 10), (x + 6, 30), (255, 255, 255), -1)
                    cv2.imwrite(str(folder / f"{t + 1:05d}.jpg"), img)
            images = root / "data/folder/images" / split / name
            images.mkdir(parents=True)
            for i in range(n_images):
                cv2.imwrite(str(images / f"i{i:03d}.jpg"), frame(label))


def make_project(root: Path) -> Path:
    """params.yaml, the folder dataset, a stub bento service, and flows/ as a deployment sees it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    write_folder_dataset(root)
    (root / "stub_service.py").write_text(STUB_SERVICE)
    (root / "serving").mkdir()
    (root / "serving/bentofile.yaml").write_text(STUB_BENTOFILE)
    (root / "flows").symlink_to(ROOT / "flows")
    shutil.copy(ROOT / "prefect.yaml", root / "prefect.yaml")
    return root


# -------------------------------------------------------------------------------- under the harness
@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("flow") / "project")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with bentoml_home(root.parent / "bentoml"):
            yield root
    finally:
        os.chdir(cwd)


def task_runs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r for r in runs}


def artifacts(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in found}


@pytest.mark.slow
def test_full_run_pretrains_on_two_processes_gates_and_promotes(harness, project):
    from flows.retrain import retrain

    state = retrain(dataset="folder", overrides=MICRO_RUN, nproc_per_node=2, retries=0, return_state=True)
    assert state.is_completed(), state.message
    record = state.result()
    assert record["status"] == "promoted"
    # pretraining ran as a real 2-process job and its output reached the flow's log
    assert not record["pretrain"]["reused"] and record["pretrain"]["world_size"] == 2
    assert "s4d.train.launch --nproc_per_node 2" in record["pretrain"]["command"]
    assert record["pretrain"]["exit_code"] == 0
    # the run records data version, params and metrics
    dv = record["data_version"]
    assert dv["manifests_sha256"]["dynamic"] and dv["datasets"]["dynamic"]["reader"] == "folder"
    assert record["params"]["models"]["tiny"]["embed_dim"] == 64 and record["gate_config"]["min_uar"] == 0.0
    assert 0.0 <= record["metrics"]["dynamic"]["uar"] <= 1.0
    saved = json.loads((project / "artifacts/flow/last_run.json").read_text())
    assert saved["status"] == "promoted" and saved["flow_run_id"] == str(state.state_details.flow_run_id)
    # every stage ran once, in a task that completed
    runs = task_runs(state.state_details.flow_run_id)
    assert set(runs) == {"check-inputs", "prepare", "validate", "pretrain", "finetune", "evaluate", "gate", "package"}
    assert all(r.state.is_completed() for r in runs.values())
    assert len(list((harness / "storage").iterdir())) >= len(runs)  # task results are persisted
    # gate decision + comparison and the run record are Prefect artifacts
    arts = artifacts(state.state_details.flow_run_id)
    assert {"s4d-gate-report", "s4d-gate-comparison", "s4d-retrain-run", "s4d-retrain-metrics"} <= set(arts)
    assert "Evaluation gate: PASSED" in arts["s4d-gate-report"].data
    assert arts["s4d-gate-comparison"].type == "table"
    # promoted: a candidate, a champion carrying metrics/params/data version, a bento packaging the champion
    champ = registry.current_champion()
    assert champ.tag == record["package"]["champion"] and champ.revision == 1
    assert champ.metadata["run"]["flow_run_id"] == record["flow_run_id"]
    assert champ.data_version["id"] == dv["id"] and champ.metrics["dynamic"]["uar"] == record["metrics"]["dynamic"]["uar"]
    bento = json.loads((project / "artifacts/package/bento.json").read_text())
    assert bento["model_tags"] == [champ.tag]


@pytest.mark.slow
def test_rerun_reuses_pretraining_and_a_failed_gate_keeps_the_champion(harness, project):
    from flows.retrain import retrain

    champion = registry.current_champion()
    assert champion is not None, "runs after test_full_run..."
    stamp = (project / "artifacts/pretrain/flow_stamp.json").read_text()
    # A candidate that learns nothing (lr 0) against a floor it cannot meet.
    overrides = MICRO_RUN + ["finetune.base_lr=0.0", "finetune.min_lr=0.0", "gate.min_uar=0.99"]
    state = retrain(dataset="folder", overrides=overrides, nproc_per_node=2, retries=0, return_state=True)
    # a refusal is a state of its own (not a green Completed), and its message says why
    assert state.is_failed() and state.name == "NotPromoted", (state.name, state.message)
    assert "below the floor 0.9900" in state.message and "champion keeps serving" in state.message
    record = state.result(raise_on_failure=False)
    assert record["pretrain"]["reused"] and (project / "artifacts/pretrain/flow_stamp.json").read_text() == stamp
    assert record["status"] == "gate failed: not promoted" and not record["gate"]["passed"]
    assert any("below the floor 0.9900" in r for r in record["gate"]["reasons"])
    assert record["gate"]["champion"]["tag"] == champion.tag and record["gate"]["champion"]["compared"]
    assert record["package"]["skipped"]
    assert registry.current_champion().tag == champion.tag and len(registry.candidates()) == 1
    assert json.loads((project / "artifacts/package/bento.json").read_text())["skipped"]
    arts = artifacts(state.state_details.flow_run_id)
    assert "Evaluation gate: FAILED" in arts["s4d-gate-report"].data
    assert "champion keeps serving" in arts["s4d-gate-report"].data
    rows = json.loads(arts["s4d-gate-comparison"].data)
    assert rows[0]["metric"] == "uar" and rows[0]["champion"] != ""  # the champion was scored too


@pytest.mark.parametrize("kwargs, message", [
    ({"dataset": "imagenet"}, "unknown dataset 'imagenet'; known datasets: dfew, folder, synthetic"),
    ({"dataset": "folder", "overrides": ["finetune.epochz=3"]}, "finetune.epochz"),
    ({"dataset": "folder", "overrides": ["finetune.epochs"]}, "broken params override"),
    ({"dataset": "folder", "overrides": ["finetune.epochs=-1"]}, "finetune.epochs: -1 is outside"),
    ({"dataset": "synthetic"}, "the dynamic data is missing: data.dynamic.root data/synthetic/videos does not exist"),
    ({"dataset": "folder", "nproc_per_node": 0}, "pretrain.nproc_per_node: 0 is outside"),
])
def test_bad_input_fails_at_the_first_task(harness, project, kwargs, message):
    from flows.retrain import retrain

    before = [r.tag for r in registry.history()], [r.tag for r in registry.candidates()]
    state = retrain(**{"overrides": MICRO_RUN, **kwargs}, retries=3, retry_delay_seconds=0, return_state=True)
    assert state.is_failed()
    assert message in state.message
    runs = task_runs(state.state_details.flow_run_id)
    assert list(runs) == ["check-inputs"] and runs["check-inputs"].state.is_failed()
    assert runs["check-inputs"].run_count == 1  # a bad input is not retried
    assert ([r.tag for r in registry.history()], [r.tag for r in registry.candidates()]) == before
    assert json.loads((project / "artifacts/flow/last_run.json").read_text())["status"] == "failed"


def test_a_crashing_pretraining_job_surfaces_its_exit_status_and_is_retried(harness, project, monkeypatch):
    import flows.retrain as fr

    def failing(params_file, nproc, hostfile="", master_port=None):
        return [sys.executable, "-c", "import sys; print('rank 0: out of memory', flush=True); sys.exit(3)"]

    monkeypatch.setattr(fr, "launch_command", failing)
    state = fr.retrain(dataset="folder", overrides=MICRO_RUN + ["pretrain.epochs=3"], retries=1,
                       retry_delay_seconds=0, return_state=True)
    assert state.is_failed() and "pretraining job exited with status 3" in state.message
    assert "rank 0: out of memory" in state.message
    runs = task_runs(state.state_details.flow_run_id)
    assert runs["pretrain"].run_count == 2 and "finetune" not in runs  # retried once, then the run stopped


def test_launch_commands():
    from flows.retrain import launch_command

    local = launch_command("artifacts/flow/params.yaml", 4, master_port=29500)
    assert local[1:] == ["-m", "s4d.train.launch", "--nproc_per_node", "4", "--master_addr", "127.0.0.1",
                         "--master_port", "29500", "s4d.train.pretrain", "--params", "artifacts/flow/params.yaml"]
    multi = launch_command("p.yaml", 4, hostfile="/etc/s4d/hostfile", master_port=29500)
    assert multi[1:] == ["-m", "deepspeed.launcher.runner", "--hostfile", "/etc/s4d/hostfile", "--master_port",
                         "29500", "--module", "s4d.train.pretrain", "--params", "p.yaml"]


# --------------------------------------------------------------- a real server, worker and deployments
def prefect_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def stop(proc: subprocess.Popen) -> None:
    """Stop a process we started and everything it started (its own process group), by PID."""
    if proc.poll() is None:
        stop_process_group(proc)


def api(url: str, path: str, body: dict | None = None):
    req = urllib.request.Request(url + path, data=json.dumps(body or {}).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"}, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`prefect server start` on a free 127.0.0.1 port, a temporary PREFECT_HOME, a fast scheduler loop."""
    home = tmp_path_factory.mktemp("prefect_server")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, **TELEMETRY_OFF, "PREFECT_HOME": str(home / "home"), "PREFECT_API_URL": url,
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2", "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(ROOT),
           # README's server settings: `--watch` prints the run's logs, not only its state changes
           "PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED": "true", "PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED": "true",
           "BENTOML_HOME": str(home / "bentoml"), "OMP_NUM_THREADS": "1"}
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(prefect_cmd("server", "start", "--host", "127.0.0.1", "--port", str(port)), env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                if api(url, "/health") is True:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (home / "server.log").read_text()[-3000:]
            assert time.time() < deadline, "prefect server not healthy in 90 s"
            time.sleep(0.5)
        yield {"url": url, "env": env, "home": home}
    finally:
        stop(proc)
        log.close()


def run_cli(server, *args, cwd, timeout=120):
    out = subprocess.run(prefect_cmd(*args), cwd=cwd, env=server["env"], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"prefect {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def deployment_id(server, name):
    found = api(server["url"], "/deployments/filter", {"deployments": {"name": {"any_": [name]}}})
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def deployed(server, tmp_path_factory):
    """The repository's prefect.yaml deployed from a micro project into the process pool `s4d-process`."""
    project = make_project(tmp_path_factory.mktemp("deployed") / "project")
    run_cli(server, "work-pool", "create", "s4d-process", "--type", "process", cwd=project)
    run_cli(server, "--no-prompt", "deploy", "--all", cwd=project)
    return project


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def flow_run_state(server, run_id):
    return api(server["url"], f"/flow_runs/{run_id}")["state"]["type"]


@pytest.mark.slow
def test_worker_runs_a_deployment_to_completion_reports_failures_and_stops_on_sigterm(server, deployed):
    """README's worker command (flows.worker around `prefect worker start`): a deployment run completes; a bad
    run's reason reaches `--watch`; SIGTERM while the worker is starting a run stops it within 10 s."""
    log = open(server["home"] / "worker.log", "w")
    worker = subprocess.Popen([sys.executable, "-m", "flows.worker", "--pool", "s4d-process", "--limit", "1"],
                              cwd=deployed, env=server["env"], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        params = json.dumps({"dataset": "folder", "overrides": MICRO_RUN, "nproc_per_node": 1})
        out = subprocess.run(prefect_cmd("deployment", "run", "retrain/on-demand", "--params", params, "--watch",
                                         "--watch-timeout", "400"),
                             cwd=deployed, env=server["env"], capture_output=True, text=True, timeout=450)
        worker_log = (server["home"] / "worker.log").read_text()
        assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-2000:]}\nworker:\n{worker_log[-6000:]}"
        dep = deployment_id(server, "on-demand")
        runs = api(server["url"], "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}})
        assert len(runs) == 1 and runs[0]["state"]["type"] == "COMPLETED", runs
        assert runs[0]["parameters"]["dataset"] == "folder"
        # it ran in the deployed project folder: its record and a promoted champion are there
        record = json.loads((deployed / "artifacts/flow/last_run.json").read_text())
        assert record["flow_run_id"] == runs[0]["id"] and record["status"] == "promoted"
        assert record["deployment"] == "on-demand"
        logs = api(server["url"], "/logs/filter", {"logs": {"flow_run_id": {"any_": [runs[0]["id"]]}}, "limit": 200})
        assert any(entry["message"].startswith("[pretrain]") for entry in logs), "pretraining output not streamed"

        # a failed run: `--watch` exits 1 and its output says why
        bad = subprocess.run(prefect_cmd("deployment", "run", "retrain/on-demand", "--param", "dataset=imagenet",
                                         "--watch", "--watch-timeout", "300"),
                             cwd=deployed, env=server["env"], capture_output=True, text=True, timeout=350)
        assert bad.returncode == 1, bad.stdout[-3000:]
        watched = " ".join(bad.stdout.split())  # the console wraps long lines
        assert "run failed: InputError: unknown dataset 'imagenet'; known datasets: dfew, folder, synthetic" in watched, \
            bad.stdout[-3000:]

        # SIGTERM while the worker is starting a run (the run is PENDING: deterministic, no timer race)
        created = subprocess.run(prefect_cmd("deployment", "run", "retrain/on-demand", "--params", params),
                                 cwd=deployed, env=server["env"], capture_output=True, text=True, timeout=120)
        assert created.returncode == 0, created.stderr
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", created.stdout)[1]
        deadline = time.time() + 120
        while flow_run_state(server, run_id) == "SCHEDULED":
            assert time.time() < deadline, "the worker did not pick the run up"
            time.sleep(0.2)
        started_processes = descendants(worker.pid)  # prefect's worker and what it started
        started = time.monotonic()
        os.kill(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
        stopped_in = time.monotonic() - started
        assert stopped_in < 10, f"the worker took {stopped_in:.1f} s to stop after SIGTERM"
        left = [pid for pid in started_processes if alive(pid)]
        assert not left, f"processes left behind: {left}"
    finally:
        stop(worker)
        log.close()


@pytest.mark.slow
def test_weekly_cron_deployment_gets_scheduled_runs(server, deployed):
    from datetime import datetime

    dep = deployment_id(server, "weekly")
    assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["0 3 * * 1"]
    assert dep["work_pool_name"] == "s4d-process" and dep["global_concurrency_limit"]["limit"] == 1
    deadline, runs = time.time() + 60, []
    while time.time() < deadline:
        runs = api(server["url"], "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [dep["id"]]},
                                                                      "state": {"type": {"any_": ["SCHEDULED"]}}}})
        if runs:
            break
        time.sleep(1)
    assert runs, "the scheduler created no runs for the weekly deployment"
    for run in runs:
        start = datetime.fromisoformat(run["expected_start_time"].replace("Z", "+00:00"))
        assert (start.weekday(), start.hour, start.minute) == (0, 3, 0) and start.utcoffset().total_seconds() == 0
        assert run["parameters"]["dataset"] == "synthetic" and run["auto_scheduled"]
