"""The retraining flow: check inputs -> prepare -> validate -> pretrain -> finetune -> evaluate -> gate -> package.

Every step calls the same stage function that `dvc repro` runs (dvc.yaml), on the project in the working
directory (a deployment's pull step sets it), with params.yaml + a dataset preset + the profile + the
run's overrides, resolved once by the first task into `artifacts/flow/params.yaml`:

    check-inputs   unknown dataset name, a broken override, missing data -> the run fails HERE, clearly
    prepare        s4d.data.prepare.prepare
    validate       s4d.data.validate.validate (a fatal check fails the run)
    pretrain       `python -m s4d.train.launch --nproc_per_node N s4d.train.pretrain --params ...`, a
                   real multi-process DeepSpeed job (or `deepspeed --hostfile F` across machines); its output
                   streams into the Prefect log and a non-zero exit fails the task. Skipped when a stamp beside
                   artifacts/pretrain/model.pt shows the same inputs (s4d.train.inputs, the one rule).
                   A retry resumes from its checkpoints.
    folds          (only with `folds=[...]`, instead of finetune ... package) the fold runner
                   `python -m s4d.train.folds`: per-fold metrics, mean +- std in artifacts/folds/summary.json
    finetune       s4d.train.finetune.finetune (finetune.nproc_per_node > 1: `python -m s4d.train.launch
                   --nproc_per_node N s4d.train.finetune ...`, data-parallel; a retry resumes)
    evaluate       s4d.train.evaluate.evaluate (the same launcher with finetune.nproc_per_node > 1)
    gate           s4d.gate.run_gate: floors + no regression vs the champion; markdown + table artifacts
    package        s4d.package.package: promote + bento when the gate passed; otherwise it only records
                   the skip, the champion keeps serving, and the run ends in the state "NotPromoted"
                   (a Failed state: the reasons are its message and the last lines of its log)

Tasks persist their results and retry transient failures (`retries`, `retry_delay_seconds`; a bad input,
a failed validation or a data error is never retried). Each run records its data version (git revision,
DVC hashes, manifest hashes), its params and its metrics as Prefect artifacts and in
artifacts/flow/runs/<time>-<run>.json (+ artifacts/flow/last_run.json).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, RUN_ID, TASK_SOURCE
from prefect.states import Failed, State

from s4d.io import free_port, read_json, sha256_file, write_json, write_text
from s4d.locks import file_lock
from s4d.train.inputs import changed_inputs, inputs_key, stage_inputs

FLOW_DIR = Path("artifacts/flow")
RESOLVED_PARAMS = FLOW_DIR / "params.yaml"
NOT_PROMOTED = "NotPromoted"  # the final state's name when the gate refused the candidate
PRETRAIN_DIR = Path("artifacts/pretrain")
STAMP = PRETRAIN_DIR / "flow_stamp.json"  # inputs of the pretraining that wrote model.pt
PROGRESS_LOG_EVERY_S = 15.0  # progress-bar updates (\r lines) reach the log at most this often

# Named dataset presets: params overrides for data.dynamic / data.static. Roots can still be changed by
# overrides (e.g. dataset=folder overrides=["data.dynamic.root=/data/mine/videos"]).
DATASETS: dict[str, dict[str, Any]] = {
    "synthetic": {
        "description": "the embedded procedurally rendered set (`s4d generate`, the `generate` DVC stage)",
        "overrides": ["data.dynamic.reader=synthetic_video", "data.dynamic.root=data/synthetic/videos",
                      "data.dynamic.fold=1", "data.static.reader=synthetic_image",
                      "data.static.root=data/synthetic/images"],
        "hint": "render it with `s4d generate` (or `dvc repro generate`)",
    },
    "folder": {
        "description": "your own data: data/folder/{videos,images}/[train|val|test/]<class>/<items>",
        "overrides": ["data.dynamic.reader=folder", "data.dynamic.root=data/folder/videos",
                      "data.static.reader=folder", "data.static.root=data/folder/images"],
        "hint": "put one sub-folder per class there (README: Real datasets)",
    },
    "dfew": {
        "description": "DFEW fold 1 + RAF-DB, under data/DFEW and data/RAF-DB",
        "overrides": ["data.dynamic.reader=dfew", "data.dynamic.root=data/DFEW", "data.dynamic.fold=1",
                      "data.static.reader=rafdb", "data.static.root=data/RAF-DB"],
        "hint": "link or copy the datasets there, or override data.dynamic.root / data.static.root",
    },
}


class InputError(ValueError):
    """A bad run request: unknown dataset, broken override, missing data. Never retried."""


class ValidationFailed(ValueError):
    """The prepared manifests failed a fatal data check. Never retried."""


class StageFailed(RuntimeError):
    """A launched training job exited non-zero (retried: a retry resumes from its checkpoints)."""


class PretrainFailed(StageFailed):
    """The pretraining job exited non-zero."""


# ----------------------------------------------------------------------------------------- retrying
NOT_TRANSIENT = (ValueError, KeyError, TypeError, AttributeError, FileNotFoundError, FloatingPointError,
                 NotImplementedError)


def is_transient(task, task_run, state) -> bool:
    """retry_condition_fn: retry I/O, process and runtime failures, never bad inputs or bad data."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - the result itself could not be read: treat as transient
        return True
    if isinstance(exc, NOT_TRANSIENT):
        return False
    return isinstance(exc, Exception)


TASK_OPTIONS = dict(persist_result=True, cache_policy=TASK_SOURCE + RUN_ID + INPUTS, log_prints=True,
                    retry_condition_fn=is_transient, retries=0, retry_delay_seconds=10)


# ------------------------------------------------------------------------------------------- helpers
def sha256_or_none(path: Path) -> Optional[str]:
    """The file's sha256, or None when it does not exist (yet)."""
    return sha256_file(path) if Path(path).is_file() else None


def load_resolved(params_file: str):
    from s4d.config import load_params

    return load_params(params_file)


@contextmanager
def project_lock() -> Iterator[None]:
    """One run per project folder: they would overwrite each other's artifacts."""
    with file_lock(FLOW_DIR / ".lock", busy=f"another retraining run is working in {Path.cwd()} "
                                             f"({FLOW_DIR / '.lock'} is held); wait for it to finish"):
        yield


def stream_process(cmd: list[str], logger, prefix: str, env: Optional[dict] = None,
                   tail_lines: int = 40) -> tuple[int, list[str]]:
    """Run cmd in its own process group, every output line into `logger` as it comes (progress-bar redraws
    throttled); kill the whole group if we are interrupted. Returns (exit status, last lines)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    tail: deque[str] = deque(maxlen=tail_lines)
    buf, last_progress, pending = b"", 0.0, None
    try:
        while True:
            chunk = proc.stdout.read1(65536)
            if not chunk:
                break
            buf += chunk
            while True:
                m = re.search(rb"\r\n|\n|\r", buf)
                if not m:
                    break
                line = buf[:m.start()].decode(errors="replace").rstrip()
                redraw = m.group() == b"\r"
                buf = buf[m.end():]
                if not line.strip():
                    continue
                tail.append(line)
                if redraw:  # a progress bar redrawing itself
                    if time.monotonic() - last_progress >= PROGRESS_LOG_EVERY_S:
                        logger.info(f"{prefix} {line}")
                        last_progress, pending = time.monotonic(), None
                    else:
                        pending = line
                    continue
                if pending:
                    logger.info(f"{prefix} {pending}")
                    pending = None
                logger.info(f"{prefix} {line}")
        if buf.strip():
            line = buf.decode(errors="replace").rstrip()
            tail.append(line)
            logger.info(f"{prefix} {line}")
        elif pending:
            logger.info(f"{prefix} {pending}")
        return proc.wait(), list(tail)
    finally:
        if proc.poll() is None:
            stop_process_group(proc)
        proc.stdout.close()


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the process group a started job leads (by PID)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def child_env() -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DO_NOT_TRACK": "1", "BENTOML_DO_NOT_TRACK": "true",
           "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    # The stage modules must import from this checkout even when the flow runs from elsewhere.
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    return env


def launch_command(params_file: str, nproc_per_node: int, hostfile: str = "",
                   master_port: Optional[int] = None) -> list[str]:
    """The pretraining job: the project's launcher (s4d.train.launch) on this machine, or the DeepSpeed launcher
    over a hostfile (`host slots=N` lines; needs pdsh + passwordless ssh and this project at the same path on
    every host)."""
    if hostfile:
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", hostfile, "--master_port",
                str(master_port or free_port()), "--module", "s4d.train.pretrain", "--params", params_file]
    return stage_command("s4d.train.pretrain", params_file, nproc_per_node, master_port=master_port)


def stage_command(module: str, params_file: str, nproc_per_node: int, *args: str,
                  master_port: Optional[int] = None) -> list[str]:
    """A training stage as N processes on this machine through the project's launcher (s4d.train.launch)."""
    return [sys.executable, "-m", "s4d.train.launch", "--nproc_per_node", str(nproc_per_node),
            "--master_addr", "127.0.0.1", "--master_port", str(master_port or free_port()), module,
            "--params", params_file, *args]


def run_streamed(cmd: list[str], label: str, what: str, failure: type[StageFailed] = StageFailed) -> None:
    """Run a training job's command, its output streamed into the run's log as `[label] line`; a non-zero exit
    fails the task with `failure` (a StageFailed: retried, and a retried job resumes from its checkpoints)."""
    logger = get_run_logger()
    logger.info(f"launching: {' '.join(cmd)}")
    started = time.time()
    code, tail = stream_process(cmd, logger, f"[{label}]", env=child_env())
    logger.info(f"{what} exited with status {code} after {time.time() - started:.1f} s")
    if code != 0:
        raise failure(f"{what} exited with status {code}: {' '.join(cmd)}\nlast output:\n" + "\n".join(tail[-15:]))


def run_launched(module: str, params_file: str, nproc_per_node: int, *args: str) -> None:
    """A fine-tuning or evaluation stage, data-parallel through the launcher (run_streamed)."""
    name = module.rsplit(".", 1)[1]
    run_streamed(stage_command(module, params_file, nproc_per_node, *args), name,
                 f"{module} ({nproc_per_node} processes)")


def pretrain_inputs(params) -> dict:
    """What the pretraining output depends on: the one rule of s4d.train.inputs (settings without the
    performance knobs, the prepared data, the code, the world size: pretraining's batch is per process)."""
    return stage_inputs(params, "pretrain", world_size=params.pretrain.nproc_per_node)


# ---------------------------------------------------------------------------------------------- tasks
@task(name="check-inputs", **{**TASK_OPTIONS, "retries": 0})
def check_inputs(dataset: str, profile: str, overrides: list[str], params_file: str, nproc_per_node: int) -> dict:
    """Resolve the run's params (params file + dataset preset + profile + overrides), check that the data is
    there, and write the resolved params every later step reads. Anything wrong stops the run here."""
    from omegaconf import OmegaConf

    from s4d.config import ConfigError, load_params, to_dict

    logger = get_run_logger()
    if dataset not in DATASETS:
        raise InputError(f"unknown dataset {dataset!r}; known datasets: {', '.join(sorted(DATASETS))}")
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise InputError(f"overrides must be a list of key=value strings, got {overrides!r}")
    bad = [o for o in overrides if "=" not in o or not o.split("=", 1)[0].strip()]
    if bad:
        raise InputError(f"broken params override(s) {bad}: each must look like key=value, e.g. finetune.epochs=3")
    if not Path(params_file).is_file():
        raise InputError(f"params file {params_file} does not exist (working directory {Path.cwd()})")
    preset = DATASETS[dataset]
    resolved_overrides = [*preset["overrides"], f"profile={profile}", f"pretrain.nproc_per_node={nproc_per_node}",
                          *overrides]
    try:
        params = load_params(params_file, resolved_overrides)
    except ConfigError as e:
        raise InputError(f"params: {e}") from None
    for t in ("dynamic", "static"):
        ds = getattr(params.data, t)
        if not Path(ds.root).exists():
            raise InputError(f"dataset {dataset!r}: the {t} data is missing: data.{t}.root {ds.root} does not exist "
                             f"under {Path.cwd()} ({preset['hint']})")
        if Path(ds.root).is_dir() and not any(Path(ds.root).iterdir()):
            raise InputError(f"dataset {dataset!r}: the {t} data is missing: {ds.root} is empty ({preset['hint']})")
    FLOW_DIR.mkdir(parents=True, exist_ok=True)
    plain = to_dict(params)
    write_text(RESOLVED_PARAMS, OmegaConf.to_yaml(OmegaConf.create(plain)))
    load_params(RESOLVED_PARAMS)  # the file every later step reads must load as it is
    logger.info(f"dataset {dataset} ({preset['description']}), profile {profile}, "
                f"{len(overrides)} override(s); resolved params in {RESOLVED_PARAMS}")
    return {"dataset": dataset, "profile": profile, "overrides": resolved_overrides, "user_overrides": overrides,
            "source_params": params_file, "params_file": str(RESOLVED_PARAMS), "params": plain, "gate": asdict(params.gate)}


@task(name="prepare", **TASK_OPTIONS)
def prepare_data(params_file: str) -> dict:
    from s4d.data.prepare import prepare
    from s4d.registry import data_version

    params = load_resolved(params_file)
    summary = prepare(params)
    version = data_version(params)
    get_run_logger().info(f"data version {version['id']} (git {version['git_rev']}, manifests "
                          f"{version['manifests_sha256']})")
    return {"summary": summary, "data_version": version}


@task(name="validate", **TASK_OPTIONS)
def validate_data(params_file: str) -> dict:
    """The validate stage (s4d.data.validate.validate), on the resolved params."""
    from s4d.data.validate import validate

    report = validate(load_resolved(params_file), Path("artifacts/validation"))
    print(report.summary())
    if not report.success:
        raise ValidationFailed(report.summary())
    return {"success": True, "rows": report.rows, "warnings": len(report.failed("warning")),
            "docs": str(report.docs_index) if report.docs_index else None}


@task(name="pretrain", **TASK_OPTIONS)
def pretrain_job(params_file: str, nproc_per_node: int, reuse: bool = True, hostfile: str = "") -> dict:
    """The pretraining as a real multi-process job, or the previous output when its inputs are unchanged."""
    logger = get_run_logger()
    params = load_resolved(params_file)
    inputs = pretrain_inputs(params)
    key = inputs_key(inputs)
    model = PRETRAIN_DIR / "model.pt"
    stamp = read_json(STAMP, {})
    if reuse and stamp.get("inputs") == key and stamp.get("model_sha256") and \
            sha256_or_none(model) == stamp["model_sha256"]:
        logger.info(f"pretraining inputs unchanged ({key}): reusing {model} from {stamp.get('finished')}")
        return {**read_json(PRETRAIN_DIR / "summary.json", {}), "reused": True, "inputs": key,
                "model_sha256": stamp["model_sha256"]}

    if stamp.get("detail") and stamp.get("inputs") != key:
        logger.info("pretraining inputs changed: " + "; ".join(changed_inputs(stamp["detail"], inputs)[:6]))
    STAMP.unlink(missing_ok=True)  # from here on, model.pt is not known to match anything
    # A killed job resumes from its checkpoints; a finished run's checkpoints are replaced, an unfinished
    # run made with other params or data is refused (exit 2, s4d.train.pretrain.resume_plan).

    cmd = launch_command(params_file, nproc_per_node, hostfile)
    run_streamed(cmd, "pretrain", "pretraining job", PretrainFailed)
    if not model.is_file():
        raise PretrainFailed(f"pretraining exited 0 but wrote no {model}")
    sha = sha256_or_none(model)
    write_json(STAMP, {"inputs": key, "model_sha256": sha, "detail": inputs,
                       "finished": datetime.now(timezone.utc).isoformat(), "command": cmd})
    return {**read_json(PRETRAIN_DIR / "summary.json", {}), "reused": False, "inputs": key, "model_sha256": sha,
            "exit_code": 0, "command": " ".join(cmd)}


@task(name="finetune", **TASK_OPTIONS)
def finetune_job(params_file: str, pretrain_sha: str) -> dict:
    from s4d.train.finetune import finetune

    params = load_resolved(params_file)
    if params.finetune.init == "pretrain" and sha256_or_none(PRETRAIN_DIR / "model.pt") != pretrain_sha:
        raise RuntimeError(f"{PRETRAIN_DIR / 'model.pt'} changed since the pretrain step; another run?")
    out = Path("artifacts/finetune")
    if params.finetune.nproc_per_node > 1:  # data-parallel: N processes through the launcher
        run_launched("s4d.train.finetune", params_file, params.finetune.nproc_per_node, "--out", str(out))
        summary = read_json(out / "summary.json", {})
    else:
        summary = finetune(params, out)
    return {k: summary.get(k) for k in ("best_epoch", "best", "epochs_run", "stopped_early", "steps", "wall_time_s",
                                        "device", "model", "data")}


@task(name="evaluate", **TASK_OPTIONS)
def evaluate_job(params_file: str) -> dict:
    from s4d.train.evaluate import evaluate

    params = load_resolved(params_file)
    checkpoint, out = Path("artifacts/finetune/model.pt"), Path("artifacts/eval")
    if params.finetune.nproc_per_node > 1:  # the test views split over N processes, as the stage command does
        run_launched("s4d.train.evaluate", params_file, params.finetune.nproc_per_node, "--checkpoint",
                     str(checkpoint), "--out", str(out))
        return read_json(out / "metrics.json", {})
    return evaluate(params, checkpoint, out)


@task(name="folds", **TASK_OPTIONS)
def folds_job(params_file: str, folds: list[int]) -> dict:
    """The k-fold protocol (DFEW, MAFW): the fold runner, `python -m s4d.train.folds` (per fold prepare ->
    finetune -> evaluate, each stage through the launcher; finished folds kept, a retry resumes), its output
    into the run's log. Returns artifacts/folds/summary.json (per-fold metrics, mean and std)."""
    from s4d.train.folds import parse_folds

    try:
        folds = parse_folds(",".join(str(f) for f in folds))
    except Exception as e:  # noqa: BLE001 - argparse's type error: a bad request, never retried
        raise InputError(f"folds: {e}") from None
    out = Path("artifacts/folds")
    run_streamed([sys.executable, "-m", "s4d.train.folds", "--folds", ",".join(map(str, folds)), "--out", str(out),
                  "--params", params_file], "folds", "the fold runner")
    return read_json(out / "summary.json", {})


@task(name="gate", **TASK_OPTIONS)
def gate_job(params_file: str, gate: dict) -> dict:
    """The evaluation gate; the decision and the comparison become Prefect artifacts."""
    from s4d.gate import GateConfig, comparison_table, report_markdown, run_gate

    logger = get_run_logger()
    params = load_resolved(params_file)
    decision = run_gate(params, GateConfig(**gate))
    verdict = "passed" if decision["passed"] else "FAILED"
    create_markdown_artifact(report_markdown(decision), key="s4d-gate-report",
                             description=f"evaluation gate {verdict}")
    create_table_artifact(comparison_table(decision), key="s4d-gate-comparison",
                          description="candidate vs champion vs floors")
    if decision["passed"]:
        logger.info("gate passed: " + "; ".join(decision["notes"] or ["floors met, no regression"]))
    else:
        logger.warning("gate FAILED: " + "; ".join(decision["reasons"]) + ". The champion keeps serving.")
    return decision


@task(name="package", **TASK_OPTIONS)
def package_job(params_file: str, build: bool, run_info: dict) -> dict:
    from s4d.package import package

    logger = get_run_logger()
    params = load_resolved(params_file)
    return package(params, build=build, run_info=run_info, log=logger.info)


# ------------------------------------------------------------------------------------------- record
def _run_identity() -> dict:
    from prefect.runtime import deployment, flow_run

    return {"flow_run_id": str(flow_run.id or ""), "flow_run_name": str(flow_run.name or ""),
            "deployment": str(deployment.name or ""), "scheduled_start": str(flow_run.scheduled_start_time or "")}


def write_record(record: dict) -> Path:
    name = f"{record['started'].replace(':', '').replace('-', '')[:15]}-{record.get('flow_run_name') or 'run'}.json"
    path = FLOW_DIR / "runs" / name
    write_json(path, record)
    write_json(FLOW_DIR / "last_run.json", record)
    return path


def record_markdown(record: dict) -> str:
    dv = record.get("data_version") or {}
    m = record.get("metrics") or {}
    gate = record.get("gate") or {}
    pkg = record.get("package") or {}
    lines = [f"# Retraining run {record.get('flow_run_name', '')}: {record['status']}", "",
             f"- dataset **{record.get('dataset')}**, profile **{record.get('profile')}**, overrides "
             f"`{' '.join(record.get('user_overrides') or []) or '(none)'}`",
             f"- data version `{dv.get('id')}`: git `{dv.get('git_rev')}`{' (dirty)' if dv.get('git_dirty') else ''}, "
             f"data.dvc md5 `{(dv.get('data_dvc') or {}).get('md5', '-')}`, prepared manifests "
             f"`{json.dumps(dv.get('manifests_sha256'))}`"]
    pre = record.get("pretrain") or {}
    if pre:
        lines.append(f"- pretraining: {'reused (inputs unchanged)' if pre.get('reused') else 'ran'}, "
                     f"{pre.get('steps')} steps, world size {pre.get('world_size')}")
    for t in ("dynamic", "static"):
        if t in m:
            lines.append(f"- test {t}: UAR **{m[t]['uar']:.4f}**, WAR **{m[t]['war']:.4f}** (n={m[t].get('n')})")
    if gate:
        lines.append(f"- gate: **{'passed' if gate.get('passed') else 'FAILED'}** "
                     + ("; ".join(gate.get("reasons") or gate.get("notes") or [])))
    if pkg:
        lines.append("- package: " + (f"skipped ({pkg.get('reason')})" if pkg.get("skipped") else
                                       f"champion `{pkg.get('champion')}`, bento `{pkg.get('bento_tag', '-')}`"))
    if record.get("error"):
        lines += ["", f"**Error:** `{record['error']}`"]
    if record.get("params"):
        from omegaconf import OmegaConf

        lines += ["", "<details><summary>resolved params</summary>", "", "```yaml",
                  OmegaConf.to_yaml(OmegaConf.create(record["params"])).rstrip(), "```", "</details>"]
    return "\n".join(lines) + "\n"


def publish_record(record: dict) -> None:
    path = write_record(record)
    record["record_file"] = str(path)
    create_markdown_artifact(record_markdown(record), key="s4d-retrain-run",
                             description=f"retraining run: {record['status']}")
    m = record.get("metrics") or {}
    dv = record.get("data_version") or {}
    rows = [{"task": t, "uar": m[t]["uar"], "war": m[t]["war"], "n": m[t].get("n"), "data_version": dv.get("id", ""),
             "git_rev": dv.get("git_rev") or "", "dataset": record.get("dataset")} for t in ("dynamic", "static")
            if t in m]
    if rows:
        create_table_artifact(rows, key="s4d-retrain-metrics", description="test metrics of this run")


# ----------------------------------------------------------------------------------------------- flow
@flow(name="retrain", log_prints=True, persist_result=True)
def retrain(dataset: str = "synthetic", profile: str = "tiny", overrides: Optional[list[str]] = None,
            nproc_per_node: int = 1, params_file: str = "params.yaml", retries: int = 2,
            retry_delay_seconds: float = 10.0, reuse_pretrain: bool = True, build_bento: bool = True,
            hostfile: str = "", folds: Optional[list[int]] = None) -> dict | State:
    """Retrain on `dataset` (a preset name: synthetic, folder, dfew), gate, and promote when it passes.

    overrides: params.yaml `key=value` strings (gate.* included); nproc_per_node: pretraining processes;
    hostfile: run pretraining with the DeepSpeed launcher across the hosts listed there instead;
    retries / retry_delay_seconds: for transient task failures.
    folds: run the k-fold protocol instead (e.g. [1, 2, 3, 4, 5] for DFEW / MAFW) through the fold runner
    (s4d.train.folds): per-fold metrics and mean +- std in artifacts/folds/summary.json; nothing is gated or
    promoted (five models are a report, not a candidate).
    Returns the run record; when the gate refuses the candidate, a Failed state named "NotPromoted" carrying it.
    """
    logger = get_run_logger()
    overrides = list(overrides or [])
    opts = {"retries": retries, "retry_delay_seconds": retry_delay_seconds}
    record: dict[str, Any] = {"status": "running", "started": datetime.now(timezone.utc).isoformat(),
                              "dataset": dataset, "profile": profile, "user_overrides": overrides,
                              "nproc_per_node": nproc_per_node, **_run_identity()}
    with project_lock():
        try:
            inputs = check_inputs(dataset, profile, overrides, params_file, nproc_per_node)
            record.update(params=inputs["params"], overrides=inputs["overrides"], gate_config=inputs["gate"],
                          params_file=inputs["params_file"])
            pf = inputs["params_file"]
            prepared = prepare_data.with_options(**opts)(pf)
            record["data_version"] = prepared["data_version"]
            record["validation"] = validate_data.with_options(**opts)(pf)
            pre = pretrain_job.with_options(**opts)(pf, nproc_per_node, reuse_pretrain, hostfile)
            record["pretrain"] = pre
            if folds:
                record["folds"] = folds_job.with_options(**opts)(pf, list(folds))
                record["status"] = "completed: folds"
                return record
            record["finetune"] = finetune_job.with_options(**opts)(pf, pre["model_sha256"])
            metrics = evaluate_job.with_options(**opts)(pf)
            record["metrics"] = {t: {k: metrics[t][k] for k in ("uar", "war", "n", "per_class_recall")}
                                 for t in ("dynamic", "static") if t in metrics}
            decision = gate_job.with_options(**opts)(pf, inputs["gate"])
            record["gate"] = {k: decision[k] for k in ("passed", "reasons", "notes", "champion")}
            run_info = {"via": "prefect flow retrain", **{k: record[k] for k in ("flow_run_id", "flow_run_name")},
                        "dataset": dataset, "overrides": overrides}
            record["package"] = package_job.with_options(**opts)(pf, build_bento, run_info)
            record["status"] = "promoted" if record["package"].get("promoted") else (
                "gate failed: not promoted" if not decision["passed"] else "completed")
        except BaseException as e:
            record["status"] = "failed"
            record["error"] = f"{type(e).__name__}: {e}"
            # The reason as the run's last log line: `prefect deployment run --watch` prints the run's logs.
            logger.error(f"run failed: {record['error']}")
            raise
        finally:
            record["finished"] = datetime.now(timezone.utc).isoformat()
            try:
                publish_record(record)
            except Exception as e:  # noqa: BLE001 - never hide the run's own outcome behind this
                logger.warning(f"could not publish the run record: {e}")
    logger.info(f"run {record['status']}: record in {record.get('record_file')}")
    if not record["gate"]["passed"]:
        # Not a crash, but not a success either: a state of its own, red in the UI, exit 1 from `--watch`.
        reason = (f"the evaluation gate refused the candidate: {'; '.join(record['gate']['reasons'])}. "
                  f"Nothing was promoted; the champion keeps serving.")
        logger.error(f"{NOT_PROMOTED}: {reason}")
        return Failed(name=NOT_PROMOTED, message=reason, data=record)
    return record


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Run the retraining flow once, here (no deployment needed).")
    ap.add_argument("--dataset", default="synthetic", help=f"one of {', '.join(sorted(DATASETS))}")
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--nproc-per-node", type=int, default=1)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--folds", default="", help="run the k-fold protocol through s4d.train.folds, e.g. 1,2,3,4,5")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    a = ap.parse_args()
    state = retrain(dataset=a.dataset, profile=a.profile, overrides=a.overrides, nproc_per_node=a.nproc_per_node,
                    build_bento=not a.no_build, folds=[int(f) for f in a.folds.split(",") if f.strip()] or None,
                    return_state=True)
    if not state.is_completed():
        print(f"retrain finished in state {state.name}: {state.message}", file=sys.stderr)
    sys.exit(0 if state.is_completed() else 1)
