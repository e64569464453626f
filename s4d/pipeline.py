"""Two small steps of the DVC pipeline (dvc.yaml) that only DVC needs.

    python -m s4d.pipeline init      artifacts/finetune_init.json: where fine-tuning starts (finetune.init) and
                                     the sha256 of that checkpoint. The finetune stage depends on this file, not
                                     on the pretraining output, so a new pretraining re-runs fine-tuning only
                                     when finetune.init is `pretrain` (or the path of a file that changed).
    python -m s4d.pipeline metrics   metrics.json: the few numbers `dvc metrics show` / `dvc exp show` compare
                                     (test UAR/WAR per task, val UAR/WAR of the selected epoch).

Both take `--params FILE` and `key=value` overrides like every stage.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from s4d.config import Params
from s4d.io import read_json, sha256_file, write_json
from s4d.stage import load_stage_params

INIT_FILE = Path("artifacts/finetune_init.json")
METRICS_FILE = Path("metrics.json")
EVAL_METRICS = Path("artifacts/eval/metrics.json")
FINETUNE_SUMMARY = Path("artifacts/finetune/summary.json")


def finetune_init(params: Params, out: Path = INIT_FILE) -> dict:
    from s4d.train.finetune import PRETRAIN_CHECKPOINT  # here: `metrics` need not import torch

    init = params.finetune.init
    source: dict = {"init": init}
    if init != "scratch":
        path = PRETRAIN_CHECKPOINT if init == "pretrain" else Path(init)
        # A missing file is fine-tuning's error to report (it names the stage to run); here it only hashes.
        source.update(path=str(path), sha256=sha256_file(path) if path.is_file() else None)
    write_json(out, source)
    return source


def summarise(eval_metrics: Path = EVAL_METRICS, finetune_summary: Path = FINETUNE_SUMMARY,
              out: Path = METRICS_FILE) -> dict:
    """Four to eight numbers, rounded to what the test sets resolve (hundreds of samples)."""
    report = read_json(eval_metrics)
    best = read_json(finetune_summary).get("best", {})
    metrics: dict = {"test": {}, "val": {}}
    for task in ("dynamic", "static"):
        if task in report:
            metrics["test"][task] = {k: round(report[task][k], 4) for k in ("uar", "war")}
        if task in best:
            metrics["val"][task] = {k: round(best[task][k], 4) for k in ("uar", "war")}
    write_json(out, metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m s4d.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("init", "metrics"), help="init: artifacts/finetune_init.json; "
                                                                   "metrics: metrics.json")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="params overrides")
    args = parser.parse_args(argv)
    if args.step == "init":
        print(json.dumps(finetune_init(load_stage_params(args))))
        return 0
    missing = [str(p) for p in (EVAL_METRICS, FINETUNE_SUMMARY) if not p.is_file()]
    if missing:
        print(f"error: {', '.join(missing)} missing: run the finetune and evaluate stages first", file=sys.stderr)
        return 2
    print(json.dumps(summarise()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
