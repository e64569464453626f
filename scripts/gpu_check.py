"""GPU check: the training engine and serving on a CUDA machine, in one run of a few minutes.

    scripts/gpu-check.sh              # on a CUDA machine: writes benchmarks/results/gpu.json
    scripts/gpu-check.sh --dry-run    # anywhere: the same steps at micro sizes on the CPU (fp32, gloo)

Steps (each timed, each result recorded; a failed step is recorded and the check goes on):
  peak       the measured bf16 matmul peak (fp32 on the dry run), what MFU is taken against
  pretrain   `python -m s4d.train.pretrain` bf16 ZeRO-2 steps, one rank per GPU (NCCL)
  finetune   `python -m s4d.train.finetune` bf16 steps from that pretraining, one rank per GPU
  evaluate   `python -m s4d.train.evaluate` on the fine-tuned model, views sharded over the ranks
  serve      one real face video through serving's Predictor on the GPU
  throughput base-profile fine-tuning and MAE train steps: clips/s and MFU (FLOPs counted by
             torch.utils.flop_counter for one step, divided by step time and the measured peak)
Never part of CI: it needs a GPU to mean anything.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

from benchmarks.common import machine, matmul_peak, timed  # noqa: E402
from s4d.io import write_json  # noqa: E402

MICRO = ["models.tiny.img_size=32", "models.tiny.patch_size=8", "models.tiny.num_frames=4",
         "models.tiny.embed_dim=64", "models.tiny.depth=2", "models.tiny.num_heads=2",
         "models.tiny.decoder_dim=32", "models.tiny.decoder_depth=1", "models.tiny.decoder_heads=2",
         "models.tiny.moae.layers=1", "models.tiny.moae.bottleneck=16"]
VIDEO_CANDIDATES = ("shared/media/single_face.mp4", "../shared/media/single_face.mp4")


def stage(module: str, args: list[str], cwd: Path, timeout: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{module} exited with {proc.returncode}: {proc.stderr[-1500:]}")
    return {"seconds": round(time.time() - start, 1)}


def step_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def throughput(profile: str, batch: int, steps: int, bf16: bool, device: torch.device, peak: float) -> dict:
    """Fine-tuning (classifier, AdamW) and MAE train steps on random clips at `profile`."""
    from s4d.config import Params
    from s4d.models import MaskedAutoencoder
    from s4d.models.classifier import S4DClassifier

    cfg = Params().models[profile]
    clips = torch.randn(batch, 3, cfg.num_frames, cfg.img_size, cfg.img_size, device=device)
    labels = torch.randint(0, 7, (batch,), device=device)
    out = {}
    for name, model in (("finetune", S4DClassifier(cfg, 7, 7)), ("mae", MaskedAutoencoder(cfg))):
        model.to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = (torch.nn.functional.cross_entropy(model(clips).float(), labels) if name == "finetune"
                        else model(clips, 0.9).loss.float())
            loss.backward()
            opt.step()

        flops = step_flops(step)
        seconds = timed(step, warmup=1, repeat=steps)
        out[name] = {"batch": batch, "step_s": round(seconds, 4), "clips_s": round(batch / seconds, 2),
                     "gflop_per_step": round(flops / 1e9, 2), "achieved_gflops": round(flops / seconds / 1e9, 1),
                     "mfu": round(flops / seconds / peak, 4)}
        del model, opt
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="micro sizes on the CPU: checks the script, not a GPU")
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/gpu.json; "
                                                     "dry run: gpu-dryrun.json in a temporary folder)")
    a = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not a.dry_run:
        parser.exit(2, "error: no CUDA device; use --dry-run to check the script on a CPU\n")
    out = Path(a.out) if a.out else (Path(tempfile.gettempdir()) / "gpu-dryrun.json" if a.dry_run
                                     else ROOT / "benchmarks" / "results" / "gpu.json")
    device = torch.device("cuda" if cuda and not a.dry_run else "cpu")
    gpus = torch.cuda.device_count() if device.type == "cuda" else 1
    precision = "bf16" if device.type == "cuda" else "fp32"
    record: dict = {"dry_run": a.dry_run, "machine": machine(), "gpus": gpus, "precision": precision, "steps": {}}
    started = time.time()

    def run(name, fn):
        tick = time.time()
        try:
            record["steps"][name] = {"ok": True, **(fn() or {})}
        except Exception as e:  # noqa: BLE001 - record the failure and go on with the other steps
            record["steps"][name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[-2000:],
                                     "traceback": traceback.format_exc()[-3000:]}
        record["steps"][name]["seconds"] = round(time.time() - tick, 1)
        print(f"{name}: {'ok' if record['steps'][name]['ok'] else 'FAILED'} "
              f"({record['steps'][name]['seconds']} s)", flush=True)

    peak = {}

    def measure_peak():
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        n = 8192 if device.type == "cuda" else 512
        measured = matmul_peak(dtype, n=n, device=device.type)  # median and IQR in GFLOP/s
        peak["flops"] = measured["gflop_s"] * 1e9
        return {"dtype": str(dtype), "n": measured["n"], "gflops": round(measured["gflop_s"], 1),
                "gflops_iqr": [round(measured["q1"], 1), round(measured["q3"], 1)]}

    run("peak", measure_peak)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        project = Path(tmp)
        from conftest import write_micro_dataset

        write_micro_dataset(project)
        common = [*MICRO, "data.workers=2"]
        run("pretrain", lambda: stage("s4d.train.pretrain", [
            *common, "pretrain.epochs=2", "pretrain.batch_size=4", "pretrain.image_batch_size=8",
            "pretrain.zero_stage=2", f"pretrain.precision={precision}", f"pretrain.nproc_per_node={gpus}"],
            project, 300) | json.loads((project / "artifacts/pretrain/summary.json").read_text()))
        run("finetune", lambda: stage("s4d.train.finetune", [
            *common, "finetune.epochs=2", "finetune.init=pretrain", f"finetune.precision={precision}",
            f"finetune.nproc_per_node={gpus}"], project, 300)
            | {k: v for k, v in json.loads((project / "artifacts/finetune/summary.json").read_text()).items()
               if k in ("steps", "world_size", "bf16", "device", "best_epoch", "wall_time_s")})
        run("evaluate", lambda: stage("s4d.train.evaluate", [
            *common, f"finetune.precision={precision}", f"finetune.nproc_per_node={gpus}"], project, 300)
            | {"dynamic": json.loads((project / "artifacts/eval/metrics.json").read_text())["dynamic"]["uar"]})

        def serve():
            from serving.inference import Predictor

            video = next((ROOT / c for c in VIDEO_CANDIDATES if (ROOT / c).is_file()), None)
            if video is None:
                raise FileNotFoundError(f"no test video at {', '.join(VIDEO_CANDIDATES)}")
            predictor = Predictor.from_checkpoint(project / "artifacts/finetune/model.pt")
            tick = time.time()
            result = predictor.predict_video(video, video.name)
            return {"device": str(predictor.device), "video": video.name, "label": result.get("label"),
                    "predict_s": round(time.time() - tick, 2)}

        run("serve", serve)
    if "flops" in peak:
        profile, batch, steps = ("base", 8, 5) if device.type == "cuda" else ("tiny", 2, 2)
        run("throughput", lambda: {"profile": profile,
                                   **throughput(profile, batch, steps, device.type == "cuda", device, peak["flops"])})
    record["seconds"] = round(time.time() - started, 1)
    write_json(out, record)
    failed = [name for name, step in record["steps"].items() if not step["ok"]]
    print(f"written {out} in {record['seconds']} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
