"""Loader throughput: training clips/s and images/s from the prepared manifests (after `make repro` or
`python -m s4d.data.prepare`), for 0 and 2 workers, against the model's train-step rate.

    python -m benchmarks.bench_data [--batches N]
"""
from __future__ import annotations

import argparse
import time

from torch.utils.data import DataLoader

from benchmarks.common import save
from s4d.config import load_params
from s4d.data.loaders import Augment, ClipDataset, ImageDataset
from s4d.data.manifest import read_manifest


def rate(dataset, batch: int, workers: int, batches: int) -> float:
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        x, _ = next(it)
        n += x.shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()
    params = load_params("params.yaml")
    cfg, prepared = params.model, params.data.prepared_dir
    videos = read_manifest(f"{prepared}/dynamic.csv")
    images = read_manifest(f"{prepared}/static.csv")
    clips = ClipDataset(videos[videos.split == "train"], ".", cfg.img_size, cfg.num_frames, params.data.frame_stride,
                        Augment())
    stills = ImageDataset(images[images.split == "train"], ".", cfg.img_size, Augment())
    figures = {}
    for workers in (0, 2):
        figures[f"clips_s_workers{workers}"] = rate(clips, params.finetune.batch_size, workers, args.batches)
        figures[f"images_s_workers{workers}"] = rate(stills, params.finetune.image_batch_size, workers, args.batches)
        print(f"workers={workers}: {figures[f'clips_s_workers{workers}']:.1f} clips/s "
              f"({cfg.num_frames} frames, {cfg.img_size} px, full training augmentation), "
              f"{figures[f'images_s_workers{workers}']:.1f} images/s", flush=True)
    print(f"written {save('data', figures)}")


if __name__ == "__main__":
    main()
