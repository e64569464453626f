"""The k-fold protocol: DFEW and MAFW are reported as the mean over their 5 folds.

    python -m s4d.train.folds [--folds 1,2,3,4,5] [--out artifacts/folds] [--params params.yaml] [key=value ...]

For each fold k it runs the stage commands with `data.dynamic.fold=k` and the fold's own folders:
prepare (OUT/fold_k/prepared), finetune (OUT/fold_k/finetune: data-parallel through s4d.train.launch when
finetune.nproc_per_node > 1) and evaluate (OUT/fold_k/eval). A fold whose evaluation finished with the same
inputs is skipped (s4d.train.inputs: the one rule; knobs such as finetune.nproc_per_node or data.workers may
change); an interrupted fine-tune resumes from its checkpoints. At the end OUT/folds/fold_k.json
holds each fold's test metrics and OUT/summary.json their mean and std (UAR, WAR).
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path

from s4d.config import Params
from s4d.io import read_json, write_json
from s4d.stage import load_stage_params
from s4d.train.inputs import InputsError, changed_inputs, stage_inputs
from s4d.train.metrics import fold_file, summarise_folds


class FoldError(RuntimeError):
    pass


def fold_overrides(out: Path, fold: int) -> list[str]:
    return [f"data.dynamic.fold={fold}", f"data.prepared_dir={out / f'fold_{fold}' / 'prepared'}"]


def fold_inputs(params: Params) -> dict | None:
    """What a finished fold's metrics depend on: s4d.train.inputs' rule for fine-tuning + evaluation (the
    settings without the performance knobs, the fold's prepared data, the code, the init checkpoint); None
    while the fold's data is not prepared."""
    try:
        return stage_inputs(params, "evaluate")
    except InputsError:
        return None


def run_stage(cmd: list[str], what: str) -> None:
    """Run one stage command; a SIGTERM / SIGINT to this runner is passed to it (it checkpoints and stops)."""
    proc = subprocess.Popen(cmd)

    def forward(signum, _frame):
        proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code:
        raise FoldError(f"{what} exited with status {code}", code)


def run_folds(params_file: str, overrides: list[str], folds: list[int], out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    dataset, per_fold = None, {}
    for fold in folds:
        args = ["--params", params_file, *overrides, *fold_overrides(out, fold)]
        params = load_stage_params(argparse.Namespace(params=params_file, overrides=args[2:]))
        dataset = params.data.dynamic.reader
        fold_dir = out / f"fold_{fold}"
        stamp = fold_dir / "done.json"
        inputs = fold_inputs(params)
        now = None if inputs is None else json.loads(json.dumps(inputs))  # as the stamp holds it
        saved = read_json(stamp, None)
        if now is not None and saved == now:
            print(f"fold {fold}: done before with the same params, kept", flush=True)
        else:
            if now is not None and saved is not None:
                changed = changed_inputs(saved, now)
                print(f"fold {fold}: inputs changed since it was done ({'; '.join(changed[:4])}), running it again",
                      flush=True)
            stamp.unlink(missing_ok=True)
            py = [sys.executable, "-m"]
            run_stage([*py, "s4d.data.prepare", *args], f"fold {fold}: prepare")
            run_stage([*py, "s4d.train.finetune", *args, "--out", str(fold_dir / "finetune")],
                      f"fold {fold}: finetune")
            run_stage([*py, "s4d.train.evaluate", *args, "--checkpoint", str(fold_dir / "finetune" / "model.pt"),
                       "--out", str(fold_dir / "eval")], f"fold {fold}: evaluate")
            write_json(stamp, fold_inputs(params))
        metrics = read_json(fold_dir / "eval" / "metrics.json")
        write_json(fold_file(out / "folds", fold), metrics)
        per_fold[f"fold_{fold}"] = {t: {m: metrics[t][m] for m in ("uar", "war")}
                                    for t in ("dynamic", "static") if t in metrics}
    summary = summarise_folds(out / "folds", dataset)
    summary["per_fold"] = per_fold
    write_json(out / "summary.json", summary)
    return summary


def parse_folds(text: str) -> list[int]:
    try:
        folds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        folds = []
    if not folds or any(f < 1 or f > 5 for f in folds) or len(set(folds)) != len(folds):
        raise argparse.ArgumentTypeError(f"expected distinct fold numbers 1..5 separated by commas, got {text!r}")
    return folds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=parse_folds, default=[1, 2, 3, 4, 5], help="folds to run (default 1,2,3,4,5)")
    parser.add_argument("--out", default="artifacts/folds", help="output folder (default artifacts/folds)")
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="params overrides (every fold)")
    a = parser.parse_args(argv)
    load_stage_params(argparse.Namespace(params=a.params, overrides=a.overrides))  # a bad key stops here
    try:
        summary = run_folds(a.params, a.overrides, a.folds, Path(a.out))
    except FoldError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return e.args[1] if e.args[1] == 143 else (2 if e.args[1] == 2 else 1)
    for fold, metrics in summary["per_fold"].items():
        print(f"{fold}: UAR {metrics['dynamic']['uar']:.4f}  WAR {metrics['dynamic']['war']:.4f}")
    for metric in ("uar", "war"):
        stats = summary["dynamic"][metric]
        print(f"mean over {len(summary['folds'])} folds: {metric.upper()} {stats['mean']:.4f} +- {stats['std']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
