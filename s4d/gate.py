"""`gate` stage: may the fine-tuned candidate replace the serving champion?

    python -m s4d.gate [--params params.yaml] [key=value ...]       # also a DVC stage (always exits 0)

The candidate (artifacts/eval/metrics.json, the dynamic task) must

    1. meet the absolute floors   gate.min_uar, gate.min_war, and
    2. not regress against the current champion (registry `s4d-champion`) by more than
       gate.max_uar_drop / gate.max_war_drop (absolute points, 0.01 = one point).

The champion's numbers come from re-evaluating its checkpoint on the SAME test split as the candidate
(`gate.reevaluate_champion: true`, the default), or from the metrics stored with it at promotion, which are
compared only when they were measured on the same dataset and fold. A champion that cannot be compared
(other classes, other dataset) is noted, not counted against the candidate; no champion at all -> floors only.

Writes `<out>/decision.json` (passed, reasons, the comparison table, the candidate's checkpoint hash so
`package` promotes exactly the gated file) and `<out>/report.md`. The stage exits 0 whether the gate passed
or not, so `dvc repro` goes on; `package` refuses to promote on a failed decision and the champion keeps
serving. `--strict` exits 1 on a failed gate (for CI). Broken inputs (no metrics file) exit 1, and so does
a bad params value or override (the message names the key).

`decide()` is the pure decision; `run_gate()` gathers its inputs.
"""
from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from s4d import registry
from s4d.config import GateConfig, Params
from s4d.io import read_json, sha256_file, write_json, write_text

GATED_METRICS = ("uar", "war")
EPS = 1e-9  # float noise at an exact floor / tolerance boundary counts as met


# ----------------------------------------------------------------------------------------- decision
@dataclass
class Decision:
    passed: bool
    reasons: list[str]  # why it failed (empty when passed)
    notes: list[str]  # what was not checked and why, and other context
    comparison: list[dict]  # one row per metric: candidate, champion, floor, tolerance, verdicts
    candidate: dict  # checkpoint + hashes + dataset of the candidate's metrics
    champion: Optional[dict]  # tag and where its numbers came from, or None
    config: dict

    def to_dict(self) -> dict:
        return asdict(self)


def _num(metrics: Optional[dict], key: str) -> Optional[float]:
    """metrics[key] as a finite float, or None (missing, not a number, NaN, infinite)."""
    if not metrics or metrics.get(key) is None:
        return None
    try:
        value = float(metrics[key])
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, float):
        return f"{x:.4f}"
    return str(x)


def decide(candidate: dict, champion: Optional[dict], cfg: GateConfig, *,
           champion_tag: Optional[str] = None, champion_note: Optional[str] = None,
           candidate_info: Optional[dict] = None, champion_source: str = "none") -> Decision:
    """The gate as a pure function.

    candidate, champion: the `dynamic` sections of metrics.json ({"uar", "war", "per_class_recall", ...});
    champion None = nothing to compare with (no champion, or not comparable: say why in champion_note).
    """
    reasons, notes, rows = [], [], []
    floors = {"uar": cfg.min_uar, "war": cfg.min_war}
    drops = {"uar": cfg.max_uar_drop, "war": cfg.max_war_drop}
    for metric in GATED_METRICS:
        cand, champ = _num(candidate, metric), _num(champion, metric)
        row = {"metric": metric, "candidate": cand, "champion": champ, "floor": floors[metric],
               "max_drop": drops[metric], "delta": None, "meets_floor": False, "no_regression": None}
        if cand is None:
            reasons.append(f"candidate {metric.upper()} is missing or not a number ({candidate.get(metric)!r})")
            rows.append(row)
            continue
        row["meets_floor"] = cand + EPS >= floors[metric]
        if not row["meets_floor"]:
            reasons.append(f"{metric.upper()} {cand:.4f} is below the floor {floors[metric]:.4f}")
        if champ is not None:
            row["delta"] = cand - champ
            row["no_regression"] = cand + EPS >= champ - drops[metric]
            if not row["no_regression"]:
                reasons.append(f"{metric.upper()} {cand:.4f} regresses against the champion's {champ:.4f} by "
                               f"{champ - cand:.4f} (tolerance {drops[metric]:.4f})")
        rows.append(row)
    # Per-class recall side by side: context for the report, not gated.
    cand_pc = (candidate or {}).get("per_class_recall") or {}
    champ_pc = (champion or {}).get("per_class_recall") or {}
    for name in list(cand_pc) + [n for n in champ_pc if n not in cand_pc]:
        c, h = _num(cand_pc, name), _num(champ_pc, name)
        rows.append({"metric": f"recall[{name}]", "candidate": c, "champion": h, "floor": None, "max_drop": None,
                     "delta": None if c is None or h is None else c - h, "meets_floor": None,
                     "no_regression": None})
    if champion is None:
        notes.append(champion_note or "no champion yet: floors only")
    elif champion_note:
        notes.append(champion_note)
    return Decision(passed=not reasons, reasons=reasons, notes=notes, comparison=rows,
                    candidate=dict(candidate_info or {}),
                    champion=None if champion_tag is None else {"tag": champion_tag, "metrics_source": champion_source,
                                                                "compared": champion is not None},
                    config=asdict(cfg))


def report_markdown(decision: dict) -> str:
    """The decision as a markdown report (Prefect artifact, artifacts/gate/report.md)."""
    verdict = "PASSED" if decision["passed"] else "FAILED"
    champ = decision.get("champion") or {}
    lines = [f"# Evaluation gate: {verdict}", ""]
    if decision["passed"]:
        lines.append("The candidate meets the floors and does not regress against the champion; "
                     "it may be packaged and promoted.")
    else:
        lines.append("The candidate is **not** promoted; the current champion keeps serving.")
        lines += ["", "**Reasons:**"] + [f"- {r}" for r in decision["reasons"]]
    if decision.get("notes"):
        lines += ["", "**Notes:**"] + [f"- {n}" for n in decision["notes"]]
    cand = decision.get("candidate") or {}
    lines += ["", f"- candidate: `{cand.get('checkpoint', '?')}` (sha256 {str(cand.get('sha256', '?'))[:12]}), "
                  f"dataset {cand.get('dataset', '?')} fold {cand.get('fold', '?')}",
              f"- champion: `{champ.get('tag', 'none')}` (numbers: {champ.get('metrics_source', 'none')})", "",
              "| metric | candidate | champion | delta | floor | max drop | meets floor | no regression |",
              "|---|---|---|---|---|---|---|---|"]
    for r in decision["comparison"]:
        delta = "-" if r["delta"] is None else f"{r['delta']:+.4f}"
        lines.append(f"| {r['metric']} | {_fmt(r['candidate'])} | {_fmt(r['champion'])} | {delta} | "
                     f"{_fmt(r['floor'])} | {_fmt(r['max_drop'])} | {_fmt(r['meets_floor'])} | "
                     f"{_fmt(r['no_regression'])} |")
    return "\n".join(lines) + "\n"


def comparison_table(decision: dict) -> list[dict]:
    """The comparison rows as a table (Prefect table artifact): plain values, None -> ''."""
    return [{k: ("" if v is None else v) for k, v in row.items()} for row in decision["comparison"]]


# ------------------------------------------------------------------------------------------- inputs
def read_metrics(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (run the evaluate stage first)")
    metrics = read_json(path)
    if not isinstance(metrics, dict) or not isinstance(metrics.get("dynamic"), dict):
        raise ValueError(f"{path} has no `dynamic` section (not an evaluate stage metrics.json?)")
    return metrics


def same_test_set(a: dict, b: dict) -> bool:
    """Two metrics.json reports measured on the same dataset/fold/classes (stored-metrics comparison)."""
    def key(m: dict) -> tuple:
        return (m.get("dataset"), m.get("fold"), tuple(sorted((m.get("dynamic") or {}).get("per_class_recall") or {})))
    return key(a) == key(b)


def champion_metrics(params: Params, cfg: GateConfig, candidate_metrics: dict, candidate_sha: str,
                     out_dir: Path) -> tuple[Optional[str], Optional[dict], str, Optional[str]]:
    """(champion tag, champion's dynamic metrics or None, source, note) for the comparison."""
    champ = registry.current_champion()
    if champ is None:
        return None, None, "none", "no champion yet: floors only"
    if champ.checkpoint_sha256 and champ.checkpoint_sha256 == candidate_sha:
        return champ.tag, candidate_metrics["dynamic"], "same checkpoint", \
            "the candidate is the champion's own checkpoint"
    if cfg.reevaluate_champion:
        from s4d.models.checkpoint import CheckpointError
        from s4d.train.evaluate import EvaluateError, evaluate

        if champ.checkpoint is None:
            return champ.tag, None, "none", f"champion {champ.tag} holds no checkpoint file: not compared"
        try:
            report = evaluate(params, champ.checkpoint, out_dir / "champion_eval")
        except (EvaluateError, CheckpointError) as e:
            return champ.tag, None, "none", f"champion {champ.tag} cannot be scored on this test set ({e}): not compared"
        return champ.tag, report["dynamic"], "re-evaluated on the candidate's test split", None
    stored = champ.metrics or {}
    if not stored.get("dynamic"):
        return champ.tag, None, "none", f"champion {champ.tag} has no stored metrics: not compared"
    if not same_test_set(stored, candidate_metrics):
        return champ.tag, None, "none", (f"champion {champ.tag} was measured on {stored.get('dataset')} fold "
                                         f"{stored.get('fold')}, the candidate on {candidate_metrics.get('dataset')} "
                                         f"fold {candidate_metrics.get('fold')}: not compared")
    return champ.tag, stored["dynamic"], "stored at promotion", None


def run_gate(params: Params, cfg: GateConfig, metrics_path: str | Path = "artifacts/eval/metrics.json",
             checkpoint: str | Path = "artifacts/finetune/model.pt", out_dir: str | Path = "artifacts/gate") -> dict:
    """Gather the inputs, decide, write decision.json and report.md; return the decision dict."""
    out_dir, checkpoint, metrics_path = Path(out_dir), Path(checkpoint), Path(metrics_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("decision.json", "report.md"):
        (out_dir / stale).unlink(missing_ok=True)  # a crash below never leaves a previous decision behind
    metrics = read_metrics(metrics_path)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint} does not exist (run the finetune stage first)")
    sha = sha256_file(checkpoint)
    info = {"checkpoint": str(checkpoint), "sha256": sha, "metrics_file": str(metrics_path),
            "metrics_sha256": sha256_file(metrics_path), "dataset": metrics.get("dataset"),
            "fold": metrics.get("fold")}
    tag, champ, source, note = champion_metrics(params, cfg, metrics, sha, out_dir)
    decision = decide(metrics["dynamic"], champ, cfg, champion_tag=tag, champion_note=note, candidate_info=info,
                      champion_source=source).to_dict()
    write_json(out_dir / "decision.json", decision)
    write_text(out_dir / "report.md", report_markdown(decision))
    return decision


def main(argv: list[str] | None = None) -> int:
    from s4d.stage import load_stage_params, stage_parser

    parser = stage_parser(__doc__)
    parser.add_argument("--metrics", default="artifacts/eval/metrics.json", help="candidate metrics")
    parser.add_argument("--checkpoint", default="artifacts/finetune/model.pt", help="candidate checkpoint")
    parser.add_argument("--out", default="artifacts/gate", help="output folder (default: artifacts/gate)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the gate fails (CI)")
    args = parser.parse_args(argv)
    params = load_stage_params(args)
    try:
        decision = run_gate(params, params.gate, args.metrics, args.checkpoint, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"gate: error: {e}", file=sys.stderr)
        return 1
    print(report_markdown(decision))
    print(f"decision: {Path(args.out) / 'decision.json'}")
    return 1 if args.strict and not decision["passed"] else 0


if __name__ == "__main__":
    sys.exit(main())
