"""`s4d import SRC DST`: convert a published VideoMAE / MAE-DFER plain-ViT / S4D checkpoint into ours.

The written model computes what the official model computes in eval (S4D's router noise aside: ours is
off in eval). Evaluate it with `python -m s4d.train.evaluate --checkpoint DST`, serve it after
`s4d registry promote DST`, or fine-tune from it with `finetune.init=DST`.
"""
from __future__ import annotations

import argparse
import sys

from s4d.models.checkpoint import CheckpointError, import_published
from s4d.models.official import SUPPORTED


def parse_labels(text: str | None, what: str) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")]
    if len(names) < 2 or not all(names):
        raise CheckpointError(f"--{what}-labels: expected a comma-separated list of class names, got {text!r}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s4d import", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"Supported: {SUPPORTED}. Layer scale, cls tokens and first-token "
                                            "pooling are refused.")
    parser.add_argument("src", help="published checkpoint (.pth/.pt as the official training code writes it)")
    parser.add_argument("dst", help="where to write the s4d-ops checkpoint")
    parser.add_argument("--dynamic-labels", help="class names of the video head in order, comma-separated "
                                                 "(e.g. DFEW: happy,sad,neutral,angry,surprise,disgust,fear)")
    parser.add_argument("--static-labels", help="class names of the image head (S4D files) in order")
    args = parser.parse_args(argv)
    try:
        labels = {task: names for task, names in (("dynamic", parse_labels(args.dynamic_labels, "dynamic")),
                                                  ("static", parse_labels(args.static_labels, "static"))) if names}
        converted, report = import_published(args.src, args.dst, labels or None)
    except CheckpointError as e:
        print("s4d import: " + " ".join(line.strip() for line in str(e).splitlines()), file=sys.stderr)
        return 2
    cfg = converted.cfg
    print(f"{args.src}: {converted.architecture} ({converted.kind}), {cfg.embed_dim} wide, depth {cfg.depth}, "
          f"{cfg.num_heads} heads, {cfg.img_size} px, {cfg.num_frames} frames, tubelet {cfg.tubelet_size}, "
          f"pos_embed {cfg.pos_embed}" + (f", MoAE {cfg.moae.experts} experts top-{cfg.moae.top_k} on the last "
                                          f"{cfg.moae.layers} blocks" if cfg.moae.layers else ""))
    for key, source in converted.sources.items():
        print(f"  {key}: {source}")
    print(report.summary())
    for key in report.loaded:
        print(f"  loaded {key}")
    for key in report.fresh:
        print(f"  fresh {key}")
    for entry in report.ignored:
        print(f"  ignored {entry}")
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
