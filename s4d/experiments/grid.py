"""The experiment grid of the reproduction report: each arm is a set of params overrides, run over
seeds at the `tiny` profile on the prepared data (the embedded benchmark by default).

    python -m s4d.experiments.grid [--arms ARM ...] [--seeds N] [--budget NAME] [--shard K/N] [--dry-run]
                                   [--params FILE] [key=value ...]

Studies and arms (`--dry-run` prints the resolved overrides):
  pretraining  pre_none, pre_video, pre_dual: no pretraining / video-only MAE / dual-modal MAE, each followed
               by the same video-only fine-tune
  finetuning   ft_video, ft_vanilla, ft_s4d: video-only / vanilla multi-task (no MoAE) / S4D
  experts, top_k, layers   MoAE ablations of the S4D fine-tune

The pretraining arms set their start themselves. The other arms start where params.yaml's `finetune.init`
says: `pretrain` is the paper's protocol (the dual-modal MAE of the same seed), `scratch` (the tiny default,
since a laptop-sized MAE is a worse start than random weights) or a checkpoint file are used as they are;
`finetune.init=pretrain` on the command line runs the paper's protocol.

Arms whose resolved params are identical are one run (ft_video is pre_dual, or pre_none when the fine-tunes
start from scratch; experts8, top2 and layers3 are ft_s4d at the default MoAE): the first arm in the list
trains, the others get a copy of its record.
Every pretraining reads the unlabelled pool only (`pretrain.data=pool`), as the paper pretrains on unlabelled
VoxCeleb2 + AffectNet: params.yaml's data.pool where it sets one, else the embedded data's pool, which the grid
renders (s4d.data.synthetic, synthetic.pool_identity_ratio=1.5) into experiments/synthetic/ and prepares into
experiments/prepared/ before its first pretraining (POOL).
Pretraining is shared per (kind, seed). A run whose record exists and was made from the same params, data
and pretraining (its `key`) is skipped, so re-running the command continues where it stopped; a record
with another key (params.yaml, the budget or the data changed) is redone.

Each job is its stage command run through the project's launcher (s4d.train.launch), one after the
other: `s4d.train.pretrain --out experiments/pretrain/...`, `s4d.train.finetune`, `s4d.train.evaluate`, with
pretrain.nproc_per_node / finetune.nproc_per_node processes each (1 by default). A SIGTERM to the grid
reaches the running job as it does through any launcher (it checkpoints and stops; the grid exits 143).
A run's `key` is s4d.train.inputs' rule (settings without performance knobs, data, code, start checkpoint).
To use more cores, start N processes with `--shard 1/N` ... `--shard N/N` (each, say, with
OMP_NUM_THREADS=1) at the same time: the runs to train are dealt to the shards by their expected cost (a
joint fine-tune counts 4/3 of a video-only one), a copied record goes with the run it copies, and a
pretraining that two shards need is made by whichever gets its lock first.

Outputs:
  experiments/pretrain/<kind>/seed<k>/   pretrain()'s model.pt, log.csv, loss.png, summary.json; grid.json
  experiments/runs/<arm>/seed<k>/        finetune/, eval/ (metrics.json, routing.json, ...), result.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from s4d.config import ConfigError, Params, load_params, to_dict
from s4d.io import read_json, write_json
from s4d.locks import file_lock
from s4d.train.inputs import (InputsError, changed_inputs, data_digest, init_digest, inputs_key,
                              stage_inputs)

EXPERIMENTS = Path("experiments")
PRETRAIN_DIR = EXPERIMENTS / "pretrain"
RUNS_DIR = EXPERIMENTS / "runs"
RESULT = "result.json"
PRETRAIN_STAMP = "grid.json"  # beside pretrain()'s outputs: what made them (the cache key)

# fp32 pinned: `precision: auto` picks bf16 on CPUs with fast bf16 units, which changes the numbers but not a
# record's key, and a grid resumed over days may run on different machines.
COMMON = ("profile=tiny", "pretrain.precision=fp32", "finetune.precision=fp32")
VIDEO_ONLY = "finetune.static_share=0"
MOAE = "models.tiny.moae"

# Pretraining kinds: overrides on top of params.yaml (whose default is the dual-modal MAE).
LGI = "models.tiny.encoder=lgi"
PRETRAINING: dict[str, tuple[str, ...]] = {
    "video": ("pretrain.image_step_share=0",),
    "dual": (),
    # MAE-DFER: the LGI-Former pretrained on videos with the appearance + motion target
    "maedfer": (LGI, "pretrain.target=pixels+motion", "pretrain.image_step_share=0"),
    "dual_lgi": (LGI,),
}

# Every pretraining reads the unlabelled pool only, as the paper's MAE (VoxCeleb2 + AffectNet). params.yaml's
# own pool (data.pool.reader) where it sets one; else, on the embedded data, the generator's pool of the same
# synthetic config (new identities, 1.5 per labelled one: 2,025 clips + 2,025 stills), rendered into
# experiments/ and prepared beside copies of the labelled manifests, so that make repro (which fine-tunes from
# scratch and never reads a pool) renders none. Fine-tuning runs never see these overrides.
POOL = "pretrain.data=pool"
POOL_DIR = EXPERIMENTS / "synthetic"  # the generator's output: the embedded data with its pool
POOL_PREPARED = EXPERIMENTS / "prepared"
EMBEDDED_POOL = ("synthetic.pool_identity_ratio=1.5", "data.pool.reader=synthetic_pool",
                 f"data.pool.root={POOL_DIR / 'pool'}", f"data.prepared_dir={POOL_PREPARED}", POOL)


# of pretrain's summary
EVIDENCE = ("data", "final_loss", "training_sample", "baseline_loss", "mae_loss_on_probe_sample", "probe", "bf16")

FROM_PARAMS = "params"  # an arm that starts where params' finetune.init says ("pretrain": the dual-modal MAE)


@dataclass(frozen=True)
class Arm:
    name: str
    study: str
    label: str
    pretrain: str | None  # a PRETRAINING kind, FROM_PARAMS, or None: no pretraining (with finetune.init=scratch)
    overrides: tuple[str, ...] = ()


ARMS: tuple[Arm, ...] = (
    Arm("pre_none", "pretraining", "no pretraining", None, ("finetune.init=scratch", VIDEO_ONLY)),
    Arm("pre_video", "pretraining", "video-only MAE", "video", (VIDEO_ONLY,)),
    Arm("pre_dual", "pretraining", "dual-modal MAE", "dual", (VIDEO_ONLY,)),
    Arm("ft_video", "finetuning", "video-only", FROM_PARAMS, (VIDEO_ONLY,)),
    Arm("ft_vanilla", "finetuning", "vanilla multi-task", FROM_PARAMS, (f"{MOAE}.layers=0",)),
    Arm("ft_s4d", "finetuning", "S4D (MoAE joint)", FROM_PARAMS),
    Arm("experts2", "experts", "2 experts", FROM_PARAMS, (f"{MOAE}.experts=2",)),
    Arm("experts4", "experts", "4 experts", FROM_PARAMS, (f"{MOAE}.experts=4",)),
    Arm("experts8", "experts", "8 experts", FROM_PARAMS, (f"{MOAE}.experts=8",)),
    Arm("top1", "top_k", "top-1 routing", FROM_PARAMS, (f"{MOAE}.top_k=1",)),
    Arm("top2", "top_k", "top-2 routing", FROM_PARAMS, (f"{MOAE}.top_k=2",)),
    Arm("layers1", "layers", "MoAE on the last block", FROM_PARAMS, (f"{MOAE}.layers=1",)),
    Arm("layers3", "layers", "MoAE on the last 3 blocks", FROM_PARAMS, (f"{MOAE}.layers=3",)),
    Arm("layers6", "layers", "MoAE on all 6 blocks", FROM_PARAMS, (f"{MOAE}.layers=6",)),
    # Method families at the same budget as ft_s4d, each from its own pretraining.
    Arm("maedfer", "family", "MAE-DFER (LGI-Former, motion MAE, video-only)", "maedfer", (LGI, VIDEO_ONLY)),
    Arm("s4d_lgi", "family", "S4D on the LGI-Former", "dual_lgi", (LGI,)),
)
ARM_BY_NAME = {arm.name: arm for arm in ARMS}

# Named training budgets: overrides applied to every run.
BUDGETS: dict[str, tuple[str, ...]] = {
    "default": (),  # params.yaml's epochs
    # make repro's fine-tune (8 epochs), fixed here if params.yaml changes; pretraining: 2 passes over the
    # pool (2,025 clips: 504 steps of the dual MAE at batch 16, the batch the study was run with, 3x make
    # repro's MAE steps at the time)
    "laptop": ("finetune.epochs=8", "pretrain.epochs=2", "pretrain.warmup_epochs=0.5", "pretrain.batch_size=16"),
    "short": ("pretrain.epochs=1", "pretrain.warmup_epochs=0.25", "finetune.epochs=4",
              "finetune.warmup_epochs=0.5"),  # a quick look: the numbers are not the study's
}
DEFAULT_SEEDS = 5  # the design of docs/synthetic.md; measured seed noise: 5 seeds resolve ~3.2 points, not 2


class GridError(ValueError):
    """A grid request that cannot run (unknown arm, missing prepared data); reported without a traceback."""


# ----------------------------------------------------------------------------------------------- plan
@dataclass
class PretrainJob:
    kind: str
    seed: int
    overrides: list[str]
    params: Params
    dir: Path
    key: str  # pretrain_key: model, pretraining and data settings, and the data


@dataclass
class Run:
    arm: Arm
    seed: int
    overrides: list[str]
    params: Params
    dir: Path
    key: str  # inputs_key(inputs)
    pretrain: PretrainJob | None
    init: str  # what the fine-tune starts from: "pretrain:<kind>", "scratch" or a checkpoint path
    same_as: Run | None = None  # an earlier arm with identical params: its record is reused
    requested: bool = True  # False: in the plan only because a requested arm is the same run
    inputs: dict | None = None  # run_inputs: what the record depends on (kept in it, to name what changed)


@dataclass
class Plan:
    params_file: str
    budget: str
    common: list[str]  # COMMON + budget + command-line overrides, applied to every job
    seeds: list[int]
    pretrainings: list[PretrainJob]
    runs: list[Run]
    pool: tuple[str, ...] = ()  # the overrides that make the pretrainings read the pool (none: no pretraining)


def seed_overrides(seed: int) -> list[str]:
    # data.seed stays: it draws the val carve of `prepare`, which must be the same split for every seed.
    return [f"pretrain.seed={seed}", f"finetune.seed={seed}"]


def load(params_file: str, overrides: list[str]) -> Params:
    try:
        return load_params(params_file, overrides)
    except ConfigError as e:
        raise GridError(str(e)) from None


def check_prepared(params: Params) -> None:
    prepared = Path(params.data.prepared_dir)
    missing = [str(prepared / f"{task}.csv") for task in ("dynamic", "static")
               if not (prepared / f"{task}.csv").is_file()]
    if missing:
        raise GridError(f"prepared manifests missing ({', '.join(missing)}): run `dvc repro validate` "
                        f"(or `s4d generate && s4d prepare`) first")


def pool_overrides(base: Params) -> tuple[str, ...]:
    """The overrides that make a pretraining read the unlabelled pool (see POOL)."""
    if base.data.pool.reader != "none":
        return (POOL,)
    if base.data.dynamic.reader != "synthetic_video":
        raise GridError(f"the pretraining arms read an unlabelled pool, and data.dynamic.reader is "
                        f"{base.data.dynamic.reader}: set data.pool (reader and root) to yours and prepare it")
    return EMBEDDED_POOL


def prepare_pool(base: Params, params_file: str, common: list[str]) -> None:
    """Render (generate: skipped when complete) and prepare the embedded pool for the pretraining arms, under
    a lock (shards start together). The labelled manifests prepared beside it must be the base's, byte for
    byte: the pretrainings' probes read them."""
    from s4d.data.prepare import pool_manifests, prepare
    from s4d.data.synthetic.generate import generate

    params = load(params_file, [*common, *EMBEDDED_POOL])
    source = POOL_PREPARED / "pool_source.json"  # the generator's meta of the pool last prepared
    with file_lock(EXPERIMENTS / ".pool.lock"):
        meta = generate(params.synthetic, root=POOL_DIR, workers=max(1, params.data.workers))
        meta = json.loads(json.dumps(meta))  # as the stamp reads back
        same = [(Path(base.data.prepared_dir) / name, POOL_PREPARED / name) for name in ("dynamic.csv", "static.csv")]
        if read_json(source, None) != meta or not pool_manifests(POOL_PREPARED) or any(
                not b.is_file() or a.read_bytes() != b.read_bytes() for a, b in same):
            prepare(params)
            write_json(source, meta)
        for a, b in same:
            if a.read_bytes() != b.read_bytes():
                raise GridError(f"{b} (prepared with the pool) differs from {a}: run `dvc repro validate` "
                                f"so that the embedded data match params.yaml, then the grid again")


def data_fingerprint(params: Params) -> str:
    """s4d.train.inputs' data rule (manifests and sample sizes, not modification times: re-rendering the
    same embedded data, as `make grid` does, keeps the grid's results)."""
    try:
        return data_digest(params)
    except InputsError as e:
        raise GridError(str(e)) from None


def init_fingerprint(init: str) -> str:
    """'scratch' as it is; a checkpoint file by its contents."""
    try:
        return init_digest(init)
    except InputsError:
        raise GridError(f"finetune.init {init!r}: no such checkpoint file (expected pretrain, scratch or a file)") \
            from None


def pretrain_key(params: Params, data_key: str) -> str:
    """What a pretraining's output depends on: s4d.train.inputs' rule."""
    return inputs_key(stage_inputs(params, "pretrain", world_size=params.pretrain.nproc_per_node, data=data_key))


def run_inputs(params: Params, data_key: str, init_key: str) -> dict:
    """What a run's record depends on: s4d.train.inputs' rule for fine-tuning + evaluation, its start named
    by `init_key` (a pretraining of this grid by its own key: its model.pt may not exist yet)."""
    return stage_inputs(params, "evaluate", world_size=params.finetune.nproc_per_node, data=data_key, init=init_key)


def build_plan(params_file: str = "params.yaml", arms: list[str] | None = None, seeds: int = DEFAULT_SEEDS,
               budget: str = "default", overrides: list[str] | None = None) -> Plan:
    """Resolve every (arm, seed) of the requested arms, plus the runs they are copies of, in execution
    order (seed by seed, arms in ARMS order)."""
    if budget not in BUDGETS:
        raise GridError(f"unknown budget {budget!r}; known: {', '.join(BUDGETS)}")
    unknown = [a for a in arms or [] if a not in ARM_BY_NAME]
    if unknown:
        raise GridError(f"unknown arm(s) {', '.join(unknown)}; known: {', '.join(ARM_BY_NAME)}")
    if seeds < 1:
        raise GridError(f"--seeds must be at least 1, not {seeds}")
    requested = set(arms or ARM_BY_NAME)
    common = [*COMMON, *BUDGETS[budget], *(overrides or [])]
    base = load(params_file, common)
    check_prepared(base)
    data_key = data_fingerprint(base)
    pool_key = None  # the pretrainings' data: the pool's manifests and the labelled ones
    try:
        pool: tuple[str, ...] | None = pool_overrides(base)
    except GridError as e:  # no pool for these data: an error only if a requested arm pretrains
        pool, no_pool = None, e

    pretrainings: dict[tuple[str, int], PretrainJob] = {}
    init_keys: dict[str, str] = {}  # a start checkpoint is hashed once, not once per run
    runs: list[Run] = []
    for seed in range(seeds):
        by_params: dict[str, Run] = {}
        for arm in ARMS:
            job = None
            ovr = [*common, *arm.overrides, *seed_overrides(seed)]
            kind = arm.pretrain
            if kind == FROM_PARAMS:
                kind = "dual" if base.finetune.init == "pretrain" else None
            if kind is not None and pool is None:
                if arm.name in requested:
                    raise GridError(f"arm {arm.name}: {no_pool}")
                continue
            if kind is not None:
                if (kind, seed) not in pretrainings:
                    pre_ovr = [*common, *pool, *PRETRAINING[kind], f"pretrain.seed={seed}"]
                    pre_params = load(params_file, pre_ovr)
                    # the labelled data (the base's) and the pool's manifests: a pool not prepared yet counts as
                    # absent, one prepared from other labelled data is redone (prepare_pool)
                    pool_key = pool_key or f"{data_key}+{data_fingerprint(pre_params)}"
                    pretrainings[kind, seed] = PretrainJob(
                        kind, seed, pre_ovr, pre_params, PRETRAIN_DIR / kind / f"seed{seed}",
                        pretrain_key(pre_params, pool_key))
                job = pretrainings[kind, seed]
                ovr.append(f"finetune.init={job.dir / 'model.pt'}")
            try:
                params = load(params_file, ovr)
            except GridError as e:
                if arm.name in requested:
                    raise GridError(f"arm {arm.name}: {e}") from None
                continue  # e.g. layers6 on a shallower model: it cannot be the same run as a requested arm
            resolved = json.dumps(to_dict(params), sort_keys=True)
            init = f"pretrain:{job.kind}" if job else params.finetune.init
            if job is None and init not in init_keys:
                init_keys[init] = init_fingerprint(init)
            inputs = run_inputs(params, data_key, f"pretrain:{job.key}" if job else init_keys[init])
            run = Run(arm, seed, ovr, params, RUNS_DIR / arm.name / f"seed{seed}", inputs_key(inputs), job, init,
                      same_as=by_params.get(resolved), requested=arm.name in requested, inputs=inputs)
            by_params.setdefault(resolved, run)
            runs.append(run)
    needed = {id(r.same_as) for r in runs if r.requested and r.same_as is not None}
    runs = [r for r in runs if r.requested or id(r) in needed]
    used = {id(r.pretrain) for r in runs if r.pretrain is not None and r.same_as is None}
    used_jobs = [j for j in pretrainings.values() if id(j) in used]
    return Plan(params_file, budget, common, list(range(seeds)), used_jobs, runs, pool if used_jobs else ())


# ---------------------------------------------------------------------------------------------- cache
def pretrain_cached(job: PretrainJob) -> bool:
    stamp = read_json(job.dir / PRETRAIN_STAMP, None)
    return stamp is not None and stamp.get("key") == job.key and (job.dir / "model.pt").is_file()


def run_state(run: Run) -> str:
    """cached | stale (a record from other params, data or pretraining) | to run."""
    record = read_json(run.dir / RESULT, None)
    if record is None:
        return "to run"
    return "cached" if record.get("key") == run.key else "stale"


# --------------------------------------------------------------------------------------------- shards
def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' (1 <= K <= N) -> (K - 1, N)."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise GridError(f"--shard must look like K/N (e.g. 1/2), not {text!r}") from None
    if not 1 <= k <= n:
        raise GridError(f"--shard {text}: K must be between 1 and N")
    return k - 1, n


def run_cost(run: Run) -> int:
    # Measured on the tiny profile: a joint epoch (half its steps on cheap still-image batches) takes ~1.3x
    # a video-only one.
    return 4 if run.params.finetune.static_share > 0 else 3


def shard_runs(plan: Plan, shard: int, shards: int) -> list[Run]:
    """The runs of one shard, in plan order: each run to train goes to the least loaded shard so far, each
    copy to the shard of the run it copies, cached runs cost nothing. Every process makes the same deal as
    long as they see the same cached runs: start the shards together."""
    dealt, owner_shard = [0] * shards, {}
    for run in plan.runs:
        if run.same_as is None:
            owner_shard[id(run)] = k = min(range(shards), key=dealt.__getitem__)
            dealt[k] += run_cost(run) if run_state(run) != "cached" else 0
    return [r for r in plan.runs if owner_shard[id(r.same_as or r)] == shard]


@contextmanager
def pretrain_lock(job: PretrainJob) -> Iterator[None]:
    """Held while one shard checks and makes a pretraining, so that two shards never make the same one."""
    with file_lock(job.dir.parent / f".{job.dir.name}.lock"):
        yield


# -------------------------------------------------------------------------------------------- execute
class JobFailed(RuntimeError):
    """A stage command of the grid exited non-zero (it printed its reason); args: (message, exit status)."""


def run_job(module: str, args: list[str], nproc: int, params: Params, what: str) -> None:
    """One stage command through the project's launcher (s4d.train.launch), as every caller runs them, with
    nproc processes; a SIGTERM to the grid is passed on to it."""
    from s4d.train.launch import relaunch

    code = relaunch(module, args, nproc, params.launch)
    if code:
        raise JobFailed(f"{what}: python -m {module} exited with status {code}", code)


def run_pretraining(job: PretrainJob, plan: Plan) -> dict:
    started = time.time()
    run_job("s4d.train.pretrain", ["--params", plan.params_file, *job.overrides, "--out", str(job.dir)],
            job.params.pretrain.nproc_per_node, job.params, f"pretraining {job.kind} seed{job.seed}")
    stamp = {"kind": job.kind, "seed": job.seed, "overrides": job.overrides, "key": job.key,
             "seconds": round(time.time() - started, 1), "summary": read_json(job.dir / "summary.json")}
    write_json(job.dir / PRETRAIN_STAMP, stamp)
    # The checkpoints only serve to resume an interrupted pretraining; model.pt is the product.
    shutil.rmtree(job.dir / "checkpoints", ignore_errors=True)
    return stamp


def task_result(metrics: dict | None) -> dict | None:
    if metrics is None:
        return None
    return {k: metrics[k] for k in ("uar", "war", "n", "per_class_recall")}


def train_and_evaluate(run: Run, plan: Plan) -> dict:
    tick = time.time()
    args, nproc = ["--params", plan.params_file, *run.overrides], run.params.finetune.nproc_per_node
    name = f"{run.arm.name} seed{run.seed}"
    run_job("s4d.train.finetune", [*args, "--out", str(run.dir / "finetune")], nproc, run.params,
            f"{name}: fine-tuning")
    summary = read_json(run.dir / "finetune" / "summary.json")
    tuned = time.time()
    run_job("s4d.train.evaluate", [*args, "--checkpoint", str(run.dir / "finetune" / "model.pt"), "--out",
                                   str(run.dir / "eval")], nproc, run.params, f"{name}: evaluation")
    metrics = read_json(run.dir / "eval" / "metrics.json")
    done = time.time()
    stamp = read_json(run.pretrain.dir / PRETRAIN_STAMP, None) if run.pretrain else None
    return {
        "arm": run.arm.name, "study": run.arm.study, "label": run.arm.label, "seed": run.seed,
        "budget": plan.budget, "params_file": plan.params_file, "overrides": run.overrides, "key": run.key,
        "same_as": None, "inputs": run.inputs,
        "init": run.init,
        "pretrain": None if run.pretrain is None else {
            "kind": run.pretrain.kind, "dir": str(run.pretrain.dir),
            "seconds": stamp["seconds"] if stamp else None,
            # the learning evidence (MAE loss vs the per-position-mean baseline, linear probes) for the report
            "evidence": {k: stamp["summary"][k] for k in EVIDENCE if k in stamp["summary"]} if stamp else None},
        "dynamic": task_result(metrics["dynamic"]), "static": task_result(metrics.get("static")),
        "routing": str(run.dir / "eval" / "routing.json"),
        "finetune": {"dir": str(run.dir / "finetune"), "best_epoch": summary["best_epoch"],
                     "epochs_run": summary["epochs_run"]},
        "seconds": {"finetune": round(tuned - tick, 1), "evaluate": round(done - tuned, 1)},
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


@dataclass
class Counts:
    pretrained: int = 0
    trained: int = 0  # fine-tune + evaluate runs
    copied: int = 0  # records of arms that are the same run as another
    cached: int = 0


def say(line: str) -> None:
    print(line, flush=True)


def execute(plan: Plan, log: Callable[[str], None] = say, shard: tuple[int, int] = (0, 1)) -> Counts:
    """Run what is not cached (of this shard's runs), in plan order; one progress line per run."""
    runs = shard_runs(plan, *shard)
    counts, started, total = Counts(), time.time(), len(runs)
    for i, run in enumerate(runs, start=1):
        head = f"[{i}/{total}] {run.arm.name} seed{run.seed}"
        state = run_state(run)
        if state == "cached":
            counts.cached += 1
            log(f"{head}: cached ({run.dir / RESULT})")
            continue
        tick = time.time()
        if state == "stale":
            saved = (read_json(run.dir / RESULT) or {}).get("inputs")
            changed = "; ".join(changed_inputs(saved, run.inputs or {})[:4]) if saved else "a record without them"
            log(f"{head}: the record is from other inputs ({changed}); redoing the run")
        if run.same_as is not None:
            owner = read_json(run.same_as.dir / RESULT, None)
            if owner is None or owner.get("key") != run.key:
                raise RuntimeError(f"{run.same_as.dir / RESULT} should have been written by this grid")
            record = {**owner, "arm": run.arm.name, "study": run.arm.study, "label": run.arm.label,
                      "overrides": run.overrides, "same_as": run.same_as.arm.name, "seconds": {}}
            write_json(run.dir / RESULT, record)
            counts.copied += 1
            log(f"{head}: same run as {run.same_as.arm.name} seed{run.seed}, record copied")
            continue
        job = run.pretrain
        if job is not None and not pretrain_cached(job):
            with pretrain_lock(job):
                if not pretrain_cached(job):  # another shard may have made it while this one waited
                    log(f"{head}: pretraining {job.kind} seed{job.seed} -> {job.dir}")
                    stamp = run_pretraining(job, plan)
                    counts.pretrained += 1
                    log(f"{head}: pretraining {job.kind} done in {stamp['seconds']:.1f} s")
        log(f"{head}: fine-tune + evaluate -> {run.dir}")
        record = train_and_evaluate(run, plan)
        write_json(run.dir / RESULT, record)
        counts.trained += 1
        dyn = record["dynamic"]
        log(f"{head}: dynamic test UAR {dyn['uar']:.4f} WAR {dyn['war']:.4f} in {time.time() - tick:.1f} s "
            f"(grid {time.time() - started:.0f} s)")
    log(f"grid done in {time.time() - started:.0f} s: {counts.pretrained} pretraining(s) and {counts.trained} "
        f"run(s) trained, {counts.copied} record(s) copied, {counts.cached} cached")
    return counts


def describe(plan: Plan) -> str:
    """The --dry-run text: what runs with which overrides, and what is cached."""
    lines = [f"params {plan.params_file}, budget {plan.budget}, seeds {plan.seeds}",
             f"common overrides: {' '.join(plan.common) or '(none)'}", "", "pretraining (shared per kind and seed):"]
    for job in plan.pretrainings:
        state = "cached" if pretrain_cached(job) else "to run"
        extra = job.overrides[len(plan.common):]
        lines.append(f"  {job.kind:<6} seed{job.seed}  {state:<7} {job.dir}  {' '.join(extra)}")
    lines += ["", "runs (fine-tune + evaluate):"]
    for run in plan.runs:
        name = f"{run.arm.name} seed{run.seed}"
        if run.same_as is not None:
            lines.append(f"  {name:<18} same run as {run.same_as.arm.name} seed{run.seed}  [{run_state(run)}]")
            continue
        extra = run.overrides[len(plan.common):]
        note = "" if run.requested else "  (needed by an arm that is the same run)"
        lines.append(f"  {name:<18} {run_state(run):<7} {' '.join(extra)}{note}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ cli
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m s4d.experiments.grid", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="+", metavar="ARM", choices=list(ARM_BY_NAME),
                   help="run only these arms (default: all): " + ", ".join(ARM_BY_NAME))
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, metavar="N",
                   help=f"seeds per arm, 0..N-1 (default: {DEFAULT_SEEDS})")
    p.add_argument("--budget", default="default", choices=list(BUDGETS),
                   help="named training budget: " + "; ".join(f"{k}: {' '.join(v) or 'params.yaml'}"
                                                              for k, v in BUDGETS.items()))
    p.add_argument("--shard", default="1/1", metavar="K/N",
                   help="run the K-th of N shares of the grid (start N processes, K = 1..N; default: 1/1)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (overrides, cached runs) and exit")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="params overrides applied to every run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        print(f"error: overrides must look like key=value, got {bad}", file=sys.stderr)
        return 2
    try:
        shard = parse_shard(args.shard)
        plan = build_plan(args.params, args.arms, args.seeds, args.budget, args.overrides)
    except GridError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(describe(plan))
        return 0
    try:
        if plan.pool == EMBEDDED_POOL and not all(map(pretrain_cached, plan.pretrainings)):
            prepare_pool(load(args.params, plan.common), args.params, plan.common)
            plan = build_plan(args.params, args.arms, args.seeds, args.budget, args.overrides)  # keyed with the pool
        execute(plan, shard=shard)
    except JobFailed as e:  # the stage has said why; 143: stopped by a signal, resumable by the same command
        message, code = e.args
        print(f"error: {message}", file=sys.stderr)
        return 143 if code == 143 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
