"""`package` stage: promote the gated candidate and build the bento, or do nothing at all.

    python -m s4d.package [--params params.yaml] [--no-build] [key=value ...]

Reads artifacts/gate/decision.json (the `gate` stage). When the gate passed:

    1. checks that artifacts/finetune/model.pt and artifacts/eval/metrics.json are exactly the files the
       gate judged (sha256 in the decision); otherwise refuses (re-run the gate),
    2. saves the checkpoint to the BentoML store as a candidate `s4d-dfer` (metrics, params, data version,
       gate decision as metadata),
    3. promotes it to champion (`s4d-champion`, a new version),
    4. `bentoml build -f serving/bentofile.yaml` with S4D_MODEL_TAG=<champion tag>; if the build fails the
       promotion is undone (that champion version is removed: nothing served it), and the stage fails,
    5. writes artifacts/package/bento.json (bento tag, model tags, build time).

When the gate failed, it writes bento.json with `skipped: true` and the reasons, touches nothing in the
store, and exits 0: the champion keeps serving. When the candidate already is the champion (same
checkpoint), nothing is promoted again; the bento is rebuilt (the serving code may have changed).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from s4d import registry
from s4d.bento import BentoBuildError, build_bento
from s4d.config import Params, to_dict
from s4d.io import read_json, sha256_file, to_json, write_json

DECISION = Path("artifacts/gate/decision.json")
CHECKPOINT = Path("artifacts/finetune/model.pt")
METRICS = Path("artifacts/eval/metrics.json")
OUT = Path("artifacts/package")
BENTOFILE = Path("serving/bentofile.yaml")


class PackageError(RuntimeError):
    """The stage cannot package what the gate judged (missing or changed files, failed build)."""


def read_decision(path: Path) -> dict:
    if not path.is_file():
        raise PackageError(f"{path} does not exist: run the gate stage first")
    try:
        return read_json(path)
    except ValueError as e:
        raise PackageError(str(e)) from None


def _build(champion_tag: str, bentofile: Path, build_ctx: Path, log) -> dict:
    """build_bento, its failure as this stage's error."""
    try:
        return build_bento(champion_tag, bentofile, build_ctx, log=log)
    except BentoBuildError as e:
        raise PackageError(str(e)) from None


def package(params: Params, *, decision_path: Path = DECISION, checkpoint: Path = CHECKPOINT,
            metrics_path: Path = METRICS, out_dir: Path = OUT, bentofile: Path = BENTOFILE, build: bool = True,
            build_ctx: Path = Path("."), run_info: Optional[dict] = None, log=print) -> dict:
    """The stage; returns what it wrote to out_dir/bento.json."""
    decision_path, checkpoint, metrics_path, out_dir = map(Path, (decision_path, checkpoint, metrics_path, out_dir))
    decision = read_decision(decision_path)
    if not decision.get("passed"):
        champ = registry.current_champion()
        result = {"skipped": True, "reason": "gate failed: " + "; ".join(decision.get("reasons") or ["(no reason)"]),
                  "champion": champ.tag if champ else None, "decision": str(decision_path)}
        log(f"package skipped: {result['reason']}. The champion {result['champion'] or '(none)'} keeps serving.")
        write_json(out_dir / "bento.json", result)
        return result

    # Exactly the files the gate judged, or nothing.
    cand = decision.get("candidate") or {}
    for path, key in ((checkpoint, "sha256"), (metrics_path, "metrics_sha256")):
        if not path.is_file():
            raise PackageError(f"{path} does not exist")
        if cand.get(key) and sha256_file(path) != cand[key]:
            raise PackageError(f"{path} changed after the gate judged it (sha256 differs from {decision_path}); "
                               f"re-run the gate")
    if build and not Path(bentofile).is_file():
        raise PackageError(f"{bentofile} does not exist: cannot build the bento (nothing was promoted)")

    sha = sha256_file(checkpoint)
    current = registry.current_champion()
    if current is not None and current.checkpoint_sha256 == sha:
        log(f"the candidate is already the champion {current.tag}: nothing to promote")
        result = {"skipped": False, "promoted": False, "champion": current.tag, "candidate": current.source}
        if build:
            result.update(_build(current.tag, bentofile, build_ctx, log))
        write_json(out_dir / "bento.json", result)
        return result

    metrics = read_json(metrics_path)
    meta = {"metrics": metrics, "params": to_dict(params), "data_version": registry.data_version(params),
            "gate": {"passed": True, "notes": decision.get("notes") or [],
                     "champion": (decision.get("champion") or {}).get("tag"),
                     "comparison": [r for r in decision.get("comparison", []) if r["metric"] in ("uar", "war")]},
            "run": run_info or {"via": "dvc package stage"}}
    candidate_tag = registry.save_to_store(checkpoint, registry.CANDIDATE, meta)
    log(f"saved candidate {candidate_tag}")
    champion = registry.promote(candidate_tag, reason="passed the evaluation gate")
    log(f"promoted {candidate_tag} to champion {champion.tag}")
    result = {"skipped": False, "promoted": True, "candidate": candidate_tag, "champion": champion.tag,
              "previous_champion": current.tag if current else None}
    if build:
        try:
            result.update(_build(champion.tag, bentofile, build_ctx, log))
        except Exception:
            registry.undo_promotion(champion.tag)
            log(f"bento build failed: promotion of {champion.tag} undone; "
                f"{current.tag if current else '(no champion)'} stays champion")
            raise
        log(f"built bento {result['bento_tag']} with {result['model_tags']}")
    write_json(out_dir / "bento.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    from s4d.stage import load_stage_params, stage_parser

    parser = stage_parser(__doc__)
    parser.add_argument("--decision", default=str(DECISION))
    parser.add_argument("--checkpoint", default=str(CHECKPOINT))
    parser.add_argument("--metrics", default=str(METRICS))
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--bentofile", default=str(BENTOFILE))
    parser.add_argument("--no-build", action="store_true", help="promote without building a bento")
    args = parser.parse_args(argv)
    params = load_stage_params(args)
    try:
        result = package(params, decision_path=Path(args.decision), checkpoint=Path(args.checkpoint),
                         metrics_path=Path(args.metrics), out_dir=Path(args.out), bentofile=Path(args.bentofile),
                         build=not args.no_build)
    except (PackageError, registry.RegistryError) as e:
        print(f"package: error: {e}", file=sys.stderr)
        return 1
    print(to_json(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
