"""python -m s4d.data.synthetic [--params params.yaml] [--root DIR] [--workers N] [key=value ...]: write the
synthetic dataset (overrides as in every stage, e.g. synthetic.seed=3)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from s4d.config import ConfigError, SyntheticConfig, load_params
from s4d.stage import user_error
from s4d.data.synthetic.generate import generate


def load_config(params: Path, overrides: list[str] | None = None) -> SyntheticConfig:
    """The `synthetic:` section of a params YAML (checked like every stage's params: YAML errors name file,
    line and column; an empty file is an error) with `key=value` overrides, merged onto the defaults."""
    overrides = list(overrides or [])
    if params.exists():
        return load_params(params, overrides).synthetic
    print(f"{params} not found: using the default synthetic config")
    other = [o for o in overrides if not o.startswith("synthetic.")]
    if other:
        raise ConfigError(f"without a params file only synthetic.* overrides apply, got {other}")
    try:
        section = OmegaConf.from_dotlist([o.removeprefix("synthetic.") for o in overrides])
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SyntheticConfig), section))
    except (OmegaConfBaseException, yaml.YAMLError) as e:
        raise ConfigError(f"overrides {overrides}: {str(e).splitlines()[0]}") from None


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m s4d.data.synthetic",
        description="Render the procedural facial-expression dataset (DFEW-style videos, RAF-DB-style images) and "
                    "its unlabelled pretraining pool (<root>/pool: clips and stills of new identities, no labels).")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="YAML file whose `synthetic:` section overrides the defaults (default: params.yaml; "
                             "the defaults are used if it does not exist)")
    parser.add_argument("--root", type=Path, default=None,
                        help="output folder (default: `synthetic.root` from the params, data/synthetic)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: all CPU cores); the output does not depend on it")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="params overrides as in every stage, e.g. synthetic.seed=3 synthetic.video_identities=8")
    args = parser.parse_args(argv)

    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        user_error(f"overrides must look like key=value, got {bad}")
    try:
        cfg = load_config(args.params, args.overrides)
    except ConfigError as e:
        user_error(str(e))
    meta = generate(cfg, root=args.root, workers=args.workers, progress=not args.no_progress)
    videos, images = meta["videos"], meta["images"]
    print(f"{meta['config']['root']}: {videos['total']} clips x {videos['frames_per_clip']} frames "
          f"(split {json.dumps(videos['per_split'])}), {images['total']} images "
          f"(split {json.dumps(images['per_split'])}); unlabelled pool: {meta['pool']['clips']} clips, "
          f"{meta['pool']['images']} images of {meta['pool']['identities']} new identities")
    return 0


if __name__ == "__main__":
    sys.exit(main())
