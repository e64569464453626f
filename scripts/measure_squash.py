"""How much the official squash (data.transforms: official) moves a model's answer against ours (short side +
centre crop) on real non-square frames: max and mean |logit difference| and the share of clips whose argmax
changes, per video of ../shared/media (docs/recipe.md quotes the figures).

    python scripts/measure_squash.py [--checkpoint artifacts/finetune/model.pt] [--media ../shared/media]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from s4d.data.loaders import normalise, spatial_crops, squash
from s4d.models import load_model

VIDEOS = ("single_face.mp4", "WolfgangLanger_Pexels.mp4", "face_noface.mov")
STILLS = ("0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg")


def read_video(path: Path) -> np.ndarray:
    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    if not frames:
        raise SystemExit(f"{path}: no frames decoded")
    return np.stack(frames)


def compare(model, clips: list[torch.Tensor], size: int, still: bool = False) -> dict:
    """clips: (T, C, H, W) uint8 each (T = 1 for a still: the image head) -> logits under both transforms,
    and how far apart they are."""
    pick = (lambda x: x[:, 0]) if still else (lambda x: x)
    with torch.no_grad():
        squashed = model(torch.stack([pick(normalise(squash(c, size))) for c in clips]))
        cropped = model(torch.stack([pick(normalise(spatial_crops(c, size, 1)[0])) for c in clips]))
    gap = (squashed - cropped).abs()
    return {"clips": len(clips), "logit_range": float(torch.cat([squashed, cropped]).abs().max()),
            "max_abs_logit_diff": float(gap.max()), "mean_abs_logit_diff": float(gap.mean()),
            "max_abs_prob_diff": float((squashed.softmax(-1) - cropped.softmax(-1)).abs().max()),
            "argmax_changed": int((squashed.argmax(-1) != cropped.argmax(-1)).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="artifacts/finetune/model.pt", help="a classifier checkpoint")
    parser.add_argument("--media", default="../shared/media", help="folder with the real footage")
    parser.add_argument("--stride", type=int, default=2, help="frames between the frames of a clip")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model(args.checkpoint)
    size, frames = model.cfg.img_size, model.cfg.num_frames
    span = (frames - 1) * args.stride + 1
    report = {"checkpoint": args.checkpoint, "img_size": size, "num_frames": frames, "stride": args.stride}
    for name in VIDEOS:
        video = torch.from_numpy(read_video(Path(args.media) / name)).permute(0, 3, 1, 2)
        starts = range(0, len(video) - span + 1, span)  # back-to-back clips over the whole video
        clips = [video[s:s + span:args.stride] for s in starts]
        report[name] = {"frame": f"{video.shape[-1]}x{video.shape[-2]}", **compare(model, clips, size)}
    stills = [torch.from_numpy(cv2.cvtColor(cv2.imread(str(Path(args.media) / n)), cv2.COLOR_BGR2RGB))
              .permute(2, 0, 1)[None] for n in STILLS]  # square 512 x 512
    if model.num_static_classes:
        report["stills (square, 512x512)"] = compare(model, stills, size, still=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
