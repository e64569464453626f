"""Pretraining throughput under DeepSpeed and ZeRO optimizer-state memory per rank; fine-tuning step
throughput on 1 vs 2 ranks and the cost of a resumable checkpoint.

    python -m benchmarks.bench_train [--quick]            # pretraining (MAE) engine figures
    python -m benchmarks.bench_train --finetune [--quick]  # fine-tuning: the real command, 1 and 2 ranks

Each configuration runs as real processes (torchrun for 2 ranks) on synthetic tensors, so the figures are
the engine's, not the loader's (benchmarks/bench_data.py measures loading). Per configuration it prints
MAE train-step clips/s (global) and the Adam state bytes held by each rank: ZeRO-1/2/3 partition them,
so 2 ranks should hold about half each. Fine-tuning step throughput is in bench_models (train_clips_s).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.common import save


def worker(profile: str, zero: int, precision: str, steps: int, batch: int) -> None:
    """One rank: DeepSpeed MAE steps on random clips; rank 0 prints a JSON line."""
    import torch

    from s4d.config import load_params
    from s4d.models import MaskedAutoencoder
    from s4d.train.distributed import init_distributed, shutdown, use_bf16

    import deepspeed

    dist = init_distributed()
    cfg = load_params("params.yaml").models[profile]
    bf16 = use_bf16(precision)
    model = MaskedAutoencoder(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    engine, ds_opt, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config={
        "train_micro_batch_size_per_gpu": batch, "zero_optimization": {"stage": zero}, "bf16": {"enabled": bf16},
        "gradient_clipping": 1.0, "steps_per_print": 10 ** 9})
    dtype = torch.bfloat16 if bf16 else torch.float32
    clips = torch.randn(batch, 3, cfg.num_frames, cfg.img_size, cfg.img_size, device=dist.device, dtype=dtype)

    def step():
        out = engine(clips, 0.9)
        engine.backward(out.loss)
        engine.step()

    step()  # warm-up (and optimizer state allocation)
    torch.distributed.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.distributed.barrier()
    seconds = (time.perf_counter() - start) / steps

    inner = ds_opt
    while hasattr(inner, "optimizer"):
        inner = inner.optimizer
    state_bytes = sum(t.numel() * t.element_size() for s in inner.state.values() for t in s.values()
                      if torch.is_tensor(t) and t.ndim > 0)
    per_rank = [torch.zeros(1, dtype=torch.float64) for _ in range(dist.world_size)]
    torch.distributed.all_gather(per_rank, torch.tensor([float(state_bytes)], dtype=torch.float64))
    if dist.is_main:
        params = sum(p.numel() for p in model.parameters()) if zero < 3 else None
        print("RESULT " + json.dumps({"clips_s": batch * dist.world_size / seconds, "step_s": seconds,
                                      "optimizer_state_mib_per_rank": [round(b.item() / 2 ** 20, 2) for b in per_rank],
                                      "params": params}), flush=True)
    shutdown()


def run(profile: str, ranks: int, zero: int, precision: str, steps: int, batch: int) -> dict:
    args = ["-m", "benchmarks.bench_train", "--worker", profile, str(zero), precision, str(steps), str(batch)]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // ranks))}
    if ranks > 1:
        from s4d.io import free_port

        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
               str(free_port()), *args]
    else:
        cmd = [sys.executable, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{profile} ranks={ranks} zero={zero} {precision} failed:\n{out.stderr[-2000:]}")
    return json.loads(line[len("RESULT "):])


def finetune_run(profile: str, ranks: int, batch: int, micro: int) -> dict:
    """The documented fine-tuning command on a micro dataset (12 clips: 8 train, one epoch, video-only);
    clips/s is the median over the steps after the first, checkpoint seconds the mean per save."""
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import write_micro_dataset

    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        write_micro_dataset(Path(tmp), n_videos=12, n_images=24)
        args = [f"profile={profile}", "finetune.epochs=1", "finetune.static_share=0", f"finetune.batch_size={batch}",
                f"finetune.micro_batch={micro}", f"finetune.nproc_per_node={ranks}", "finetune.checkpoint_every=1",
                "data.workers=1", "data.val_fraction=0.2"]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        out = subprocess.run([sys.executable, "-m", "s4d.train.finetune", *args, "--out", "ft"], cwd=tmp, env=env,
                             capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"finetune {profile} ranks={ranks} failed:\n{out.stderr[-2000:]}")
        import pandas as pd

        steps = pd.read_csv(Path(tmp) / "ft" / "train_log.csv")
        summary = json.loads((Path(tmp) / "ft" / "summary.json").read_text())
    later = steps["clips_per_s"].iloc[1:] if len(steps) > 1 else steps["clips_per_s"]
    return {"profile": profile, "ranks": ranks, "global_batch": batch, "micro_batch": micro, "steps": len(steps),
            "clips_s": round(float(later.median()), 3), "checkpoint_s": round(summary["checkpoints"]["mean_s"], 3),
            "checkpoints": summary["checkpoints"]["saved"]}


def finetune_main(quick: bool) -> None:
    grid = [("tiny", 1, 4, 2), ("tiny", 2, 4, 2)]
    if not quick:
        grid += [("base", 1, 2, 1), ("base", 2, 2, 1)]
    results = [finetune_run(*config) for config in grid]
    for r in results:
        print(f"finetune {r['profile']:5s} ranks={r['ranks']} batch {r['global_batch']} (micro {r['micro_batch']}): "
              f"{r['clips_s']:7.3f} clips/s, checkpoint {r['checkpoint_s']:.3f} s per save", flush=True)
    ratios = {}
    for profile in {r["profile"] for r in results}:
        by_ranks = {r["ranks"]: r["clips_s"] for r in results if r["profile"] == profile}
        ratios[profile] = round(by_ranks[2] / by_ranks[1], 3)
        print(f"finetune {profile}: 2 ranks / 1 rank = {ratios[profile]:.2f}x")
    print(f"written {save('train_finetune', {'finetune': results, 'ratio_2_over_1': ratios})}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        profile, zero, precision, steps, batch = sys.argv[2:7]
        worker(profile, int(zero), precision, int(steps), int(batch))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny profile only")
    parser.add_argument("--finetune", action="store_true", help="fine-tuning figures instead of pretraining")
    args = parser.parse_args()
    if args.finetune:
        finetune_main(args.quick)
        return
    # (profile, ranks, zero stage, precision, timed steps, per-rank batch)
    grid = [("tiny", 1, 2, "fp32", 5, 16), ("tiny", 1, 2, "bf16", 5, 16), ("tiny", 2, 2, "fp32", 5, 8),
            ("tiny", 2, 2, "bf16", 5, 8)]
    if not args.quick:
        grid += [("base", 1, 2, "fp32", 2, 2), ("base", 1, 2, "bf16", 2, 2), ("base", 2, 2, "fp32", 2, 1)]
        grid += [("base", 2, zero, "fp32", 1, 1) for zero in (0, 1, 3)]
    results = []
    for profile, ranks, zero, precision, steps, batch in grid:
        r = run(profile, ranks, zero, precision, steps, batch)
        results.append({"profile": profile, "ranks": ranks, "zero": zero, "precision": precision,
                        "batch_per_rank": batch, **r})
        print(f"{profile:5s} ranks={ranks} ZeRO-{zero} {precision}: {r['clips_s']:7.2f} clips/s "
              f"({r['step_s']:.2f} s/step)  Adam state per rank {r['optimizer_state_mib_per_rank']} MiB", flush=True)
    print(f"written {save('train', {'pretrain_mae': results})}")


if __name__ == "__main__":
    main()
