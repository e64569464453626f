"""Synthetic-data generator throughput: frames/s rendered (JPEG bytes in memory) and end to end (files).

1. Clip frames/s and image/s in one process (the renderer's own speed, no process or disk overhead).
2. End-to-end `generate()` of a small dataset with --workers processes (spawn, write, rename), frames/s.

    python -m benchmarks.bench_synthetic [--workers 2] [--clips 24]

Generation is CPU-bound Python + OpenCV drawing. Measured on the 2-core machine with a load average of
~4.5 from other jobs: 2.2 ms per 96-px clip frame in one process (453 frames/s), ~340 frames/s end to end
with 2 workers; the default dataset (480 clips x 16 frames + 1600 images) took 28 s. The machine may be
shared: the load average before and after is recorded. Figures go to benchmarks/results/synthetic.json.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import save
from s4d.config import SyntheticConfig
from s4d.data.synthetic.generate import generate
from s4d.data.synthetic.plan import image_plan, video_plan
from s4d.data.synthetic.sample import clip_jpegs, image_jpeg


def in_process(cfg: SyntheticConfig, clips: int, images: int) -> dict:
    clip_jpegs(cfg, 0)  # warm-up: imports, plan, caches
    start = time.perf_counter()
    for index in range(clips):
        clip_jpegs(cfg, index)
    clip_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for index in range(images):
        image_jpeg(cfg, index)
    image_seconds = time.perf_counter() - start
    return {"clip_frames_per_s": round(clips * cfg.num_frames / clip_seconds, 1),
            "ms_per_frame": round(1000 * clip_seconds / (clips * cfg.num_frames), 2),
            "images_per_s": round(images / image_seconds, 1)}


def end_to_end(cfg: SyntheticConfig, workers: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="bench_synthetic_"))
    try:
        start = time.perf_counter()
        meta = generate(cfg, root=folder / "synthetic", workers=workers, progress=False)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    frames = meta["videos"]["total"] * cfg.num_frames + meta["images"]["total"]
    return {"workers": workers, "clips": meta["videos"]["total"], "images": meta["images"]["total"],
            "seconds": round(seconds, 2), "frames_per_s": round(frames / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes for the end-to-end run")
    parser.add_argument("--clips", type=int, default=24, help="clips timed in one process")
    args = parser.parse_args()

    cfg = SyntheticConfig()
    load_before = os.getloadavg()[0]
    single = in_process(cfg, min(args.clips, len(video_plan(cfg))), min(4 * args.clips, len(image_plan(cfg))))
    small = SyntheticConfig(video_identities=10, clips_per_identity=6)  # 60 clips, 200 images
    parallel = end_to_end(small, args.workers)
    figures = {"default_frame_size": cfg.frame_size, "one_process": single, "generate": parallel,
               "load_average": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}}
    print(f"one process: {single['clip_frames_per_s']} clip frames/s ({single['ms_per_frame']} ms/frame), "
          f"{single['images_per_s']} images/s")
    print(f"generate() with {parallel['workers']} workers: {parallel['frames_per_s']} frames/s "
          f"({parallel['clips']} clips + {parallel['images']} images in {parallel['seconds']} s)")
    print(f"load average before/after: {figures['load_average']}")
    print(f"-> {save('synthetic', figures)}")


if __name__ == "__main__":
    main()
