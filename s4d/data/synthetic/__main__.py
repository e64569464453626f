"""python -m s4d.data.synthetic [--params params.yaml] [--root DIR] [--workers N]: write the synthetic dataset."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from s4d.config import ConfigError, SyntheticConfig, load_params
from s4d.data.synthetic.generate import generate


def load_config(params: Path) -> SyntheticConfig:
    """The `synthetic:` section of a params file, checked with the whole file by the typed schema (s4d.config)."""
    if not params.exists():
        print(f"{params} not found: using the default synthetic config")
        return SyntheticConfig()
    try:
        return load_params(params).synthetic
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m s4d.data.synthetic",
        description="Render the procedural facial-expression dataset (DFEW-style videos, RAF-DB-style images).")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="YAML file whose `synthetic:` section overrides the defaults (default: params.yaml; "
                             "the defaults are used if it does not exist)")
    parser.add_argument("--root", type=Path, default=None,
                        help="output folder (default: `synthetic.root` from the params, data/synthetic)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: all CPU cores); the output does not depend on it")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    cfg = load_config(args.params)
    meta = generate(cfg, root=args.root, workers=args.workers, progress=not args.no_progress)
    videos, images = meta["videos"], meta["images"]
    print(f"{meta['config']['root']}: {videos['total']} clips x {videos['frames_per_clip']} frames "
          f"(split {json.dumps(videos['per_split'])}), {images['total']} images "
          f"(split {json.dumps(images['per_split'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
