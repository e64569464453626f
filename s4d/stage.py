"""Shared command line of the pipeline stages: `--params FILE` plus `key=value` overrides."""
from __future__ import annotations

import argparse
import sys

from s4d.config import ConfigError, Params, load_params


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Overrides use params.yaml keys, e.g. finetune.epochs=3 profile=base.")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="params overrides")
    return parser


def user_error(message: str) -> None:
    """A user mistake: one line on stderr naming the bad input, exit status 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def load_stage_params(args: argparse.Namespace) -> Params:
    """Load params or exit(2) with the error naming the file, line or key (no traceback for a user mistake)."""
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        user_error(f"overrides must look like key=value, got {bad}")
    try:
        return load_params(args.params, args.overrides)
    except ConfigError as e:
        user_error(str(e))
