"""Run the benchmark suite, then write benchmarks/results/summary.json: every figure the project targets.

    python -m benchmarks.run_all [--quick] [--only NAME ... | --skip NAME ...]
    python -m benchmarks.run_all --summary-only

Each module runs as its own process, one after the other (they time themselves: running two at once would
halve both), and writes benchmarks/results/<file>.json. A failing module does not stop the others; its
exit code and stderr tail go into the summary and the command exits 1 at the end.

The summary has one entry per asked-for figure: topic, name, value, unit, target ("<= 1.15"), met, the
IQR [q1, q3] where the benchmark records one (then `met` needs the whole IQR to clear the target), the
source file and key path it came from, and the machine it was measured on. A figure that cannot be read
(module not run, a GPU-only or unmeasured figure) has value null and a `missing` reason. The pipeline
figures (UAR/WAR, stage times) are read from artifacts/, written by `make repro`.
"""
from __future__ import annotations

import argparse
import json
import operator
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from s4d.io import write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ARTIFACTS = ROOT / "artifacts"

# Module -> its own short-run options, used with --quick. Quick runs overwrite the results files with
# partial figures (bench_models then measures no `base` and no bf16), which the summary shows as missing.
MODULES: dict[str, list[str]] = {
    "bench_models": ["--profiles", "tiny", "--precisions", "fp32"],
    "bench_train": ["--quick"],
    "bench_data": ["--batches", "3"],
    "bench_faces": ["--repeat", "1"],
    "bench_synthetic": ["--clips", "8"],
    "bench_serving": ["--quick"],
    "bench_mae": ["--steps", "1", "--rounds", "3"],
}
STDERR_TAIL_BYTES = 4000
# The children never reach the network, whether started by `make bench` (which exports these) or directly.
NO_TELEMETRY = {"DO_NOT_TRACK": "1", "BENTOML_DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1"}

# Source name -> (what writes it, base folder, path inside it).
SOURCES: dict[str, tuple[str, str, str]] = {
    "models": ("bench_models", "results", "models.json"),
    "faces": ("bench_faces", "results", "faces.json"),
    "train": ("bench_train", "results", "train.json"),
    "data": ("bench_data", "results", "data.json"),
    "synthetic": ("bench_synthetic", "results", "synthetic.json"),
    "serving": ("bench_serving", "results", "serving.json"),
    "mae": ("bench_mae", "results", "mae.json"),
    "pretrain": ("make repro", "artifacts", "pretrain/summary.json"),
    "finetune": ("make repro", "artifacts", "finetune/summary.json"),
    "eval": ("make repro", "artifacts", "eval/metrics.json"),
}
OPERATORS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq}


@dataclass(frozen=True)
class Figure:
    topic: str  # what the figure measures: models, data, training, serving, mae
    name: str
    unit: str
    source: str | None  # a SOURCES name; None when no benchmark measures it (then `missing` says why)
    key: str = ""  # path in the source JSON: a.b.c, list[field=value,...] picks a row, list[0] an item
    target: tuple[str, float] | None = None
    missing: str = ""
    note: str = ""
    iqr_key: str = ""  # path to the figure's quartiles {q1, q3} in the same source: the target must clear them


def declared_figures() -> list[Figure]:
    """Every figure, by topic. A target with an `iqr_key` is met only
    when the value and the whole inter-quartile range clear it (q3 for an upper bound, q1 for a lower)."""
    figs = [Figure("models", f"matmul_peak_{p}", "GFLOP/s", "models", f"matmul_peak_gflop_s.{p}") for p in ("fp32", "bf16")]
    for profile in ("tiny", "base"):
        for prec in ("fp32", "bf16"):
            row = f"profiles.{profile}.{prec}"
            figs += [
                Figure("models", f"forward_{profile}_{prec}", "clips/s", "models", f"{row}.forward_clips_s"),
                Figure("models", f"train_step_{profile}_{prec}", "clips/s", "models", f"{row}.train_clips_s"),
                Figure("models", f"moae_over_plain_step_{profile}_{prec}", "x", "models", f"{row}.moae_step_over_plain",
                       target=("<=", 1.15) if profile == "base" else None,
                       iqr_key=f"{row}.ratios.moae_over_plain_step"),
                Figure("models", f"inference_mfu_{profile}_{prec}", "fraction", "models", f"{row}.inference_mfu",
                       target=(">=", 0.5) if (profile, prec) == ("base", "bf16") else None,
                       note="against the matmul peak of the same dtype on the same device"),
            ]

    for backend in ("mtcnn", "yunet"):
        row = f"backends.{backend}"
        figs += [Figure("data", f"faces_{backend}_frames_s", "frames/s", "faces", f"{row}.frames_s"),
                 Figure("data", f"faces_{backend}_realtime_factor", "x", "faces", f"{row}.realtime_factor",
                        target=(">=", 4.0))]
    figs += [Figure("data", "generator_frames_s_one_process", "frames/s", "synthetic", "one_process.clip_frames_per_s"),
             Figure("data", "generator_images_s_one_process", "images/s", "synthetic", "one_process.images_per_s"),
             Figure("data", "generator_frames_s_end_to_end", "frames/s", "synthetic", "generate.frames_per_s")]
    for workers in (0, 2):
        figs += [Figure("data", f"loader_clips_s_workers{workers}", "clips/s", "data", f"clips_s_workers{workers}"),
                 Figure("data", f"loader_images_s_workers{workers}", "images/s", "data", f"images_s_workers{workers}")]

    for profile in ("tiny", "base"):
        for prec in ("fp32", "bf16"):
            for ranks in (1, 2):
                row = f"pretrain_mae[profile={profile},ranks={ranks},zero=2,precision={prec}]"
                figs.append(Figure("training", f"pretrain_{profile}_{prec}_{ranks}rank", "clips/s", "train", f"{row}.clips_s"))
    for profile, ranks, zero in [("tiny", 1, 2), ("tiny", 2, 2)] + [("base", 2, z) for z in (0, 1, 2, 3)]:
        row = f"pretrain_mae[profile={profile},ranks={ranks},zero={zero},precision=fp32]"
        figs.append(Figure("training", f"adam_state_{profile}_zero{zero}_{ranks}rank", "MiB/rank", "train",
                           f"{row}.optimizer_state_mib_per_rank[0]", note="rank 0's share"))
    for profile in ("tiny", "base"):
        for prec in ("fp32", "bf16"):
            figs += [Figure("training", f"finetune_{profile}_{prec}_1rank", "clips/s", "models",
                            f"profiles.{profile}.{prec}.train_clips_s", note="bench_models' train step"),
                     Figure("training", f"finetune_{profile}_{prec}_2rank", "clips/s", None,
                            missing="no benchmark measures fine-tuning on 2 ranks (bench_models runs one process)")]
    above_chance = "asked: well above chance, without a number; chance is 1/7 = 0.143"
    figs += [Figure("training", "repro_minutes", "min", None, target=("<=", 15.0),
                    missing="make repro's wall time is not written to any file"),
             Figure("training", "pretrain_stage_s", "s", "pretrain", "seconds"),
             Figure("training", "finetune_stage_s", "s", "finetune", "wall_time_s"),
             Figure("training", "test_uar_dynamic", "fraction", "eval", "dynamic.uar", note=above_chance),
             Figure("training", "test_war_dynamic", "fraction", "eval", "dynamic.war", note=above_chance)]

    figs += [Figure("serving", "video_10s_p50", "s", "serving", "video_latency.p50_s", target=("<=", 1.0)),
             Figure("serving", "video_10s_p95", "s", "serving", "video_latency.p95_s"),
             Figure("serving", "clips_s_adaptive_batching", "clips/s", "serving", "clip_throughput.batched_clips_per_s"),
             Figure("serving", "clips_s_batch1", "clips/s", "serving", "clip_throughput.unbatched_clips_per_s"),
             Figure("serving", "adaptive_batching_speedup", "x", "serving", "clip_throughput.speedup", target=(">=", 1.5)),
             Figure("serving", "model_batch8_over_batch1", "x", "serving", "model_batch_ceiling.ratio",
                    note="the model alone, 8 vs 1 clips per call: the ceiling of the batching speedup"),
             Figure("serving", "soak_seconds", "s", "serving", "soak.seconds", target=(">=", 60.0)),
             Figure("serving", "soak_errors", "errors", "serving", "soak.errors", target=("==", 0.0))]

    figs += [Figure("mae", "mae_over_finetune_clips_s", "x", "mae", "ratios.pretrain_over_finetune_clips_s.median",
                    target=(">=", 5.0), iqr_key="ratios.pretrain_over_finetune_clips_s",
                    note="MAE pretraining vs fine-tuning clips/s at the params' profile, end to end, one run")]
    return figs


SEGMENT = re.compile(r"(\w+)(?:\[([^\]]+)\])?")


def lookup(data: Any, key: str) -> Any:
    """The value at a key path (see Figure.key); KeyError naming the part of the path that is not there."""
    node, parts = data, key.split(".")
    for i, part in enumerate(parts):
        name, selector = SEGMENT.fullmatch(part).groups()
        where = ".".join(parts[:i + 1])
        if not isinstance(node, dict) or name not in node:
            raise KeyError(f"no {'.'.join(parts[:i] + [name])}")
        node = node[name]
        if selector is None:
            continue
        if selector.isdigit():
            if not isinstance(node, list) or int(selector) >= len(node):
                raise KeyError(f"no {where}")
            node = node[int(selector)]
        else:
            wanted = dict(pair.split("=", 1) for pair in selector.split(","))
            rows = [r for r in node if isinstance(r, dict) and all(str(r.get(k)) == v for k, v in wanted.items())]
            if not rows:
                raise KeyError(f"no row {where}")
            node = rows[0]
    return node


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def build_summary(results_dir: Path, artifacts_dir: Path, runs: dict[str, dict] | None = None) -> dict:
    """The summary of every declared figure, read from results_dir and artifacts_dir. `runs` are this
    invocation's module runs: a figure whose module failed keeps its earlier value, flagged in its note."""
    runs = runs or {}
    bases = {"results": results_dir, "artifacts": artifacts_dir}
    files: dict[str, tuple[Path, Any, str]] = {}  # source -> (path, parsed JSON or None, why not)
    for source, (writer, base, rel) in SOURCES.items():
        path = bases[base] / rel
        try:
            files[source] = (path, json.loads(path.read_text()), "")
        except FileNotFoundError:
            files[source] = (path, None, f"{shown(path)} not found (written by {writer})")
        except json.JSONDecodeError as e:
            files[source] = (path, None, f"{shown(path)} is not valid JSON: {e}")

    entries = []
    for fig in declared_figures():
        value, missing, note, path, machine = None, fig.missing or None, fig.note or None, None, None
        if fig.source is not None:
            path, data, why = files[fig.source]
            writer = SOURCES[fig.source][0]
            machine = data.get("machine") if isinstance(data, dict) else None
            if data is None:
                missing = why
            else:
                try:
                    value = lookup(data, fig.key)
                    if isinstance(value, bool) or not isinstance(value, (int, float)):  # null, a row, a list
                        value, missing = None, f"{fig.key} in {shown(path)} is not a number"
                except KeyError as e:
                    missing = f"{e.args[0]} in {shown(path)}"
            if writer in runs and runs[writer]["returncode"] != 0:
                failed = (f"{writer} failed in this run (exit {runs[writer]['returncode']}): "
                          "the value, if any, is from an earlier run")
                note = f"{note}; {failed}" if note else failed
        met, iqr = None, None
        if fig.target is not None and value is not None:
            op, bound = fig.target
            met = OPERATORS[op](value, bound)
            if fig.iqr_key:
                try:
                    quart = lookup(data, fig.iqr_key)
                    iqr = [quart["q1"], quart["q3"]]
                except (KeyError, TypeError):
                    quart = None
                    note = f"{note}; no IQR at {fig.iqr_key}: judged on the value alone" if note else \
                        f"no IQR at {fig.iqr_key}: judged on the value alone"
                if quart is not None and op in ("<=", ">="):  # the whole IQR must clear the target
                    met = met and OPERATORS[op](quart["q3"] if op == "<=" else quart["q1"], bound)
        entries.append({"topic": fig.topic, "name": fig.name, "value": value, "unit": fig.unit,
                        "target": f"{fig.target[0]} {fig.target[1]:g}" if fig.target else None, "met": met,
                        "iqr": iqr,
                        "source": shown(path) if path else None, "key": fig.key or None, "machine": machine,
                        "missing": missing, "note": note})
    with_target = [e for e in entries if e["target"]]
    return {"generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "counts": {"figures": len(entries), "missing": sum(e["value"] is None for e in entries),
                       "targets": len(with_target), "met": sum(e["met"] is True for e in with_target),
                       "not_met": sum(e["met"] is False for e in with_target)},
            "runs": runs, "figures": entries}


def print_table(summary: dict) -> None:
    print(f"{'topic':<8}  {'figure':<34} {'value':>10} {'unit':<9} {'target':<8} result")
    for e in summary["figures"]:
        value = "-" if e["value"] is None else f"{e['value']:.4g}"
        result = {True: "met", False: "NOT MET", None: ""}[e["met"]]
        if e["missing"]:
            result = f"missing: {e['missing']}"
        print(f"{e['topic']:<8}  {e['name']:<34} {value:>10} {e['unit']:<9} {e['target'] or '':<8} {result}")
    c = summary["counts"]
    print(f"{c['figures']} figures, {c['missing']} missing; targets: {c['met']} met, {c['not_met']} not met, "
          f"{c['targets'] - c['met'] - c['not_met']} unknown")


def run_module(name: str, options: list[str]) -> dict:
    """Run one module as `python -m benchmarks.<name>`; its stderr is echoed live and its tail kept."""
    start = time.perf_counter()
    tail = b""
    env = {**os.environ, **{k: v for k, v in NO_TELEMETRY.items() if k not in os.environ}}
    with subprocess.Popen([sys.executable, "-m", f"benchmarks.{name}", *options], cwd=ROOT, env=env,
                          stderr=subprocess.PIPE) as proc:
        # bytes, not lines: progress bars redraw with \r and must pass through unchanged
        while chunk := proc.stderr.read1(65536):
            sys.stderr.buffer.write(chunk)
            sys.stderr.buffer.flush()
            tail = (tail + chunk)[-STDERR_TAIL_BYTES:]
    seconds = round(time.perf_counter() - start, 1)
    return {"options": options, "returncode": proc.returncode, "seconds": seconds,
            "stderr_tail": tail.decode(errors="replace") if proc.returncode else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="each module's short run: " + "; ".join(f"{m} {' '.join(o)}" for m, o in MODULES.items()))
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--only", nargs="+", choices=MODULES, metavar="NAME", help=f"run these: {', '.join(MODULES)}")
    group.add_argument("--skip", nargs="+", choices=MODULES, metavar="NAME", default=[], help="run all but these")
    parser.add_argument("--summary-only", action="store_true",
                        help="run nothing: rebuild summary.json from the results already there")
    args = parser.parse_args(argv)
    if args.summary_only and (args.quick or args.only or args.skip):
        parser.error("--summary-only runs nothing: it takes no --quick, --only or --skip")

    selected = [m for m in MODULES if (args.only is None or m in args.only) and m not in args.skip]
    runs: dict[str, dict] = {}
    if not args.summary_only:
        for i, name in enumerate(selected, 1):
            options = MODULES[name] if args.quick else []
            print(f"[bench {i}/{len(selected)}] {name} {' '.join(options)}".rstrip(), flush=True)
            runs[name] = run_module(name, options)
            r = runs[name]
            status = "ok" if r["returncode"] == 0 else f"FAILED (exit {r['returncode']})"
            print(f"[bench {i}/{len(selected)}] {name}: {status} in {r['seconds']:.1f} s", flush=True)

    RESULTS.mkdir(exist_ok=True)
    summary = build_summary(RESULTS, ARTIFACTS, runs)
    path = write_json(RESULTS / "summary.json", summary)
    print_table(summary)
    print(f"written {shown(path)}")
    failed = [name for name, r in runs.items() if r["returncode"] != 0]
    if failed:
        print(f"failed modules: {', '.join(failed)} (stderr tails in the summary's 'runs')", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
