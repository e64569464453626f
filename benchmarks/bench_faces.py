"""Frames/s of decode + detect (tracked) + align/crop on a real clip, per detector backend.

    .venv/bin/python benchmarks/bench_faces.py [VIDEO] [--detect-every K] [--repeat N]

The real-time factor is clip duration / processing time (target >= 4x on 2 cores). The machine may be
shared: the load average is printed beside the figures, and the best of --repeat runs is kept.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from s4d.data.faces import FaceDetector, crop_track, track_faces  # noqa: E402
from s4d.data.media import read_video  # noqa: E402
from benchmarks.common import save  # noqa: E402

DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "shared" / "media" / "WolfgangLanger_Pexels.mp4"


def run_once(path: Path, detector: FaceDetector, detect_every: int, size: int) -> dict:
    t0 = time.perf_counter()
    video = read_video(path)
    t1 = time.perf_counter()
    track = track_faces(video.frames, detector, detect_every=detect_every)
    t2 = time.perf_counter()
    crops, _ = crop_track(video.frames, track, out_size=size)
    t3 = time.perf_counter()
    return {"frames": video.num_frames, "duration": video.duration, "decode": t1 - t0, "detect": t2 - t1,
            "align": t3 - t2, "total": t3 - t0, "detector_frames": track.detector_frames,
            "faces": track.num_present, "crops": len(crops)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", nargs="?", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--detect-every", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backends", default="mtcnn,yunet")
    args = parser.parse_args()

    print(f"{args.video.name}, detect every {args.detect_every} frames, crops {args.size}px, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    figures = {"video": args.video.name, "detect_every": args.detect_every, "size": args.size, "backends": {}}
    for backend in args.backends.split(","):
        t = time.perf_counter()
        detector = FaceDetector(backend)
        load = time.perf_counter() - t
        best = min((run_once(args.video, detector, args.detect_every, args.size) for _ in range(args.repeat)),
                   key=lambda r: r["total"])
        n = best["frames"]
        print(f"\n{backend} (model load {load:.1f} s, not counted): {n} frames, {best['detector_frames']} "
              f"sent to the detector, face in {best['faces']}")
        for stage in ("decode", "detect", "align", "total"):
            name = {"align": "align+crop", "total": "end to end"}.get(stage, stage)
            print(f"  {name:<11} {best[stage]:6.2f} s  {n / best[stage]:8.1f} frames/s")
        print(f"  real-time factor {best['duration'] / best['total']:.1f}x "
              f"({best['duration']:.1f} s of video); load average now {os.getloadavg()[0]:.1f}")
        figures["backends"][backend] = {"frames": n, "frames_s": round(n / best["total"], 1),
                                        "realtime_factor": round(best["duration"] / best["total"], 2),
                                        "faces": best["faces"], "model_load_s": round(load, 2)}
    print(f"\n{save('faces', figures)}")


if __name__ == "__main__":
    main()
