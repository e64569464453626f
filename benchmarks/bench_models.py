"""Model throughput: forward and train-step clips/s in fp32 and bf16, MoAE overhead, MFU.

    python -m benchmarks.bench_models [--profiles tiny base] [--batch N]

MFU = model FLOP/s (counted by torch's FlopCounterMode) / matmul FLOP/s of the same dtype measured in
the same run. Targets at `base`: MoAE step <= 1.15x plain step; bf16 inference MFU >= 50%.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import matmul_peak, save, timed
from s4d.config import load_params
from s4d.models import S4DClassifier


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def autocast(dtype: torch.dtype, device: str):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=dtype)


def measure(cfg, batch: int, dtype: torch.dtype, device: str) -> dict:
    model = S4DClassifier(cfg, 7, 7).to(device)
    for layer in model.moae_layers():  # trained experts are non-zero; zero weights could flatter timing
        torch.nn.init.normal_(layer.experts.fc2.weight, std=0.02)
    clips = torch.randn(batch, 3, cfg.num_frames, cfg.img_size, cfg.img_size, device=device)
    labels = torch.randint(0, 7, (batch,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    @torch.no_grad()
    def forward():
        model.eval()
        with autocast(dtype, device):
            model(clips)

    def train_step():
        model.train()
        with autocast(dtype, device):
            loss = torch.nn.functional.cross_entropy(model(clips), labels) + 0.01 * model.balance_loss()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    fwd_s, step_s = timed(forward), timed(train_step)
    fwd_flops = count_flops(forward)
    return {"forward_clips_s": batch / fwd_s, "train_clips_s": batch / step_s,
            "forward_s": fwd_s, "train_step_s": step_s, "forward_gflop_per_clip": fwd_flops / batch / 1e9,
            "forward_flop_s": fwd_flops / fwd_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", nargs="+", default=["tiny", "base"])
    parser.add_argument("--batch", type=int, default=0, help="clips per batch (default: 8 tiny, 2 base on CPU)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    params = load_params(args.params)
    peaks = {"fp32": matmul_peak(torch.float32, device=device), "bf16": matmul_peak(torch.bfloat16, device=device)}
    print(f"matmul peak on {device}: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    results = {"matmul_peak_gflop_s": {k: v / 1e9 for k, v in peaks.items()}, "profiles": {}}
    for profile in args.profiles:
        cfg = params.models[profile]
        plain_cfg = dataclasses.replace(cfg, moae=dataclasses.replace(cfg.moae, layers=0))
        batch = args.batch or (8 if profile == "tiny" else 2) * (8 if device == "cuda" else 1)
        row = {}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            if name not in args.precisions:
                continue
            moae, plain = measure(cfg, batch, dtype, device), measure(plain_cfg, batch, dtype, device)
            row[name] = {**moae, "plain_train_clips_s": plain["train_clips_s"],
                         "moae_step_over_plain": moae["train_step_s"] / plain["train_step_s"],
                         "inference_mfu": moae["forward_flop_s"] / peaks[name]}
            r = row[name]
            print(f"{profile:5s} {name}: forward {r['forward_clips_s']:8.2f} clips/s  train "
                  f"{r['train_clips_s']:7.2f} clips/s (plain {r['plain_train_clips_s']:7.2f})  MoAE/plain step "
                  f"{r['moae_step_over_plain']:.3f}x  inference MFU {100 * r['inference_mfu']:.1f}%  "
                  f"({r['forward_gflop_per_clip']:.1f} GFLOP/clip, batch {batch})")
        results["profiles"][profile] = {"batch": batch, **row}
    print(f"written {save('models', results)}")


if __name__ == "__main__":
    main()
