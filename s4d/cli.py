"""`s4d COMMAND [ARGS]`: one console script over the stage entry points (each is also `python -m MODULE`)."""
from __future__ import annotations

import importlib.util
import runpy
import sys

# command -> (module run as __main__, what it does)
COMMANDS = {
    "generate": ("s4d.data.synthetic", "render the embedded synthetic expression dataset (data/synthetic)"),
    "faces": ("s4d.data.preprocess", "detect, align and crop faces in a folder of videos/images"),
    "prepare": ("s4d.data.prepare", "stage: dataset roots -> prepared manifests (face crops for raw videos)"),
    "validate": ("s4d.data.validate", "stage: check the prepared manifests with Great Expectations"),
    "pretrain": ("s4d.train.pretrain", "stage: dual-modal MAE pretraining under DeepSpeed ZeRO"),
    "finetune": ("s4d.train.finetune", "stage: S4D joint fine-tuning (static + dynamic, MoAE)"),
    "evaluate": ("s4d.train.evaluate", "stage: multi-view test metrics, confusion matrix, routing"),
    "gate": ("s4d.gate", "stage: candidate vs floors and the champion (artifacts/gate/decision.json)"),
    "package": ("s4d.package", "stage: promote the gated candidate and build the bento (skips on a failed gate)"),
    "import": ("s4d.models.importer", "convert a published VideoMAE / S4D checkpoint into ours (SRC DST)"),
    "registry": ("s4d.registry", "champion registry: list, show, promote TAG, rollback"),
    "retrain": ("flows.retrain", "run the Prefect retraining flow once, here (no deployment needed)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())
    return (f"usage: s4d COMMAND [ARGS]\n\ncommands:\n{rows}\n\n"
            "`s4d COMMAND --help` explains a command's arguments. Hyperparameters come from params.yaml.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"s4d: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = COMMANDS[command][0]
    if importlib.util.find_spec(module) is None:
        print(f"s4d: command {command!r} needs {module}, which this installation lacks", file=sys.stderr)
        return 2
    sys.argv = [f"s4d {command}", *rest]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
