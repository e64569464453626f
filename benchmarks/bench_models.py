"""Model throughput: forward and train-step clips/s in fp32 and bf16, MoAE overhead, attention kernels, MFU.

    python -m benchmarks.bench_models [--profiles tiny base] [--batch N] [--rounds N]

Method (benchmarks/common.py): every variant of a profile (MoAE / plain model, fp32 / bf16 autocast, fused /
manual attention) runs in one process, interleaved, the order reversed every other round; figures are
medians with their IQR; ratios are per-round (paired). The machine load and the fp32/bf16 matmul peaks of the
same run are recorded beside them. MFU = model FLOP/s (torch's FlopCounterMode) / matmul peak of the same
dtype. Targets at `base`: MoAE step <= 1.15x plain step (met only when the IQR is below 1.15); bf16 train
step no slower than the fp32 one with manual attention; bf16 inference MFU >= 50%.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import interleaved, load, peaks, quartiles, ratio, save, target_met
from s4d.config import load_params
from s4d.models import S4DClassifier
from s4d.models.vit import set_fused_attention

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def autocast(dtype: torch.dtype, device: str):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=dtype)


class Bench:
    """One model with its batch and optimizer: a train step and a forward in a given precision and kernel."""

    def __init__(self, cfg, batch: int, device: str):
        torch.manual_seed(0)
        self.model = S4DClassifier(cfg, 7, 7).to(device)
        for layer in self.model.moae_layers():  # trained experts are non-zero; zero weights could flatter timing
            torch.nn.init.normal_(layer.experts.fc2.weight, std=0.02)
        self.clips = torch.randn(batch, 3, cfg.num_frames, cfg.img_size, cfg.img_size, device=device)
        self.labels = torch.randint(0, 7, (batch,), device=device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.device = device

    def train_step(self, precision: str, fused: bool = True):
        def step():
            set_fused_attention(self.model, fused)
            self.model.train()
            with autocast(DTYPES[precision], self.device):
                loss = torch.nn.functional.cross_entropy(self.model(self.clips), self.labels)
                loss = loss + 0.01 * self.model.balance_loss()
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return step

    def forward(self, precision: str, fused: bool = True):
        @torch.no_grad()
        def run():
            set_fused_attention(self.model, fused)
            self.model.eval()
            with autocast(DTYPES[precision], self.device):
                self.model(self.clips)
        return run


def measure(cfg, batch: int, precisions: list[str], device: str, rounds: int, peak: dict) -> dict:
    plain_cfg = dataclasses.replace(cfg, moae=dataclasses.replace(cfg.moae, layers=0))
    moae, plain = Bench(cfg, batch, device), Bench(plain_cfg, batch, device)
    train_fns, forward_fns = {}, {}
    for p in precisions:
        train_fns |= {f"moae_{p}": moae.train_step(p), f"plain_{p}": plain.train_step(p),
                      f"plain_{p}_manual": plain.train_step(p, fused=False)}
        forward_fns |= {f"moae_{p}": moae.forward(p), f"plain_{p}": plain.forward(p),
                        f"plain_{p}_manual": plain.forward(p, fused=False)}
    load_before = load()
    train = interleaved(train_fns, rounds=rounds)
    forward = interleaved(forward_fns, rounds=rounds)
    row: dict = {"batch": batch, "rounds": rounds, "load_before": load_before, "load_after": load()}
    for p in precisions:
        fwd, step = quartiles(forward[f"moae_{p}"]), quartiles(train[f"moae_{p}"])
        flops = count_flops(forward_fns[f"moae_{p}"])
        row[p] = {
            # the keys the summary (run_all.py) reads: medians
            "forward_clips_s": batch / fwd["median"], "train_clips_s": batch / step["median"],
            "plain_train_clips_s": batch / quartiles(train[f"plain_{p}"])["median"],
            "moae_step_over_plain": ratio(train, f"moae_{p}", f"plain_{p}")["median"],
            "inference_mfu": flops / fwd["median"] / (peak[p]["gflop_s"] * 1e9),
            "forward_gflop_per_clip": flops / batch / 1e9,
            # the distributions behind them
            "forward_s": fwd, "train_step_s": step,
            "plain_forward_s": quartiles(forward[f"plain_{p}"]), "plain_train_step_s": quartiles(train[f"plain_{p}"]),
            "ratios": {
                "moae_over_plain_step": ratio(train, f"moae_{p}", f"plain_{p}"),
                "moae_over_plain_forward": ratio(forward, f"moae_{p}", f"plain_{p}"),
                "fused_over_manual_step": ratio(train, f"plain_{p}", f"plain_{p}_manual"),
                "fused_over_manual_forward": ratio(forward, f"plain_{p}", f"plain_{p}_manual"),
            },
        }
    if set(precisions) == {"fp32", "bf16"}:
        row["bf16_over_fp32"] = {
            "plain_step": ratio(train, "plain_bf16", "plain_fp32"),
            "plain_step_vs_fp32_manual": ratio(train, "plain_bf16", "plain_fp32_manual"),
            "moae_step": ratio(train, "moae_bf16", "moae_fp32"),
            "moae_forward": ratio(forward, "moae_bf16", "moae_fp32"),
        }
    return row


def targets(row: dict) -> dict:
    """The targets at `base` (MoAE step time over the plain ViT's), each met only when the IQR clears it."""
    out = {}
    for p in ("fp32", "bf16"):
        if p in row:
            stats = row[p]["ratios"]["moae_over_plain_step"]
            out[f"moae_over_plain_step_{p}<=1.15"] = target_met(stats, "<=", 1.15)
    if "bf16_over_fp32" in row:
        out["bf16_step<=fp32_manual_step"] = target_met(row["bf16_over_fp32"]["plain_step_vs_fp32_manual"], "<=", 1.0)
        out["bf16_inference_mfu>=0.5"] = row["bf16"]["inference_mfu"] >= 0.5
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", nargs="+", default=["tiny", "base"])
    parser.add_argument("--batch", type=int, default=0, help="clips per batch (default: 8 tiny, 2 base on CPU)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per variant (default 7)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--name", default="models", help="results file: benchmarks/results/<name>.json")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    params = load_params(args.params)
    peak = peaks(device)
    print(f"matmul peak on {device}: fp32 {peak['fp32']['gflop_s']:.0f} GFLOP/s, bf16 {peak['bf16']['gflop_s']:.0f} "
          f"GFLOP/s; load {load()}")
    results = {"method": "interleaved A/B, order reversed each round, median and IQR (benchmarks/common.py)",
               "matmul_peak_gflop_s": {p: v["gflop_s"] for p, v in peak.items()}, "matmul_peaks": peak,
               "profiles": {}}
    for profile in args.profiles:
        cfg = params.models[profile]
        batch = args.batch or (8 if profile == "tiny" else 2) * (8 if device == "cuda" else 1)
        row = measure(cfg, batch, args.precisions, device, args.rounds, peak)
        row["targets"] = targets(row) if profile == "base" else {}
        results["profiles"][profile] = row
        for p in args.precisions:
            r, q = row[p], row[p]["ratios"]["moae_over_plain_step"]
            a = row[p]["ratios"]["fused_over_manual_step"]
            print(f"{profile:5s} {p}: forward {r['forward_clips_s']:8.2f} clips/s  train {r['train_clips_s']:7.2f} "
                  f"clips/s  MoAE/plain step {q['median']:.3f}x [IQR {q['q1']:.3f}-{q['q3']:.3f}]  fused/manual "
                  f"attention step {a['median']:.3f}x [{a['q1']:.3f}-{a['q3']:.3f}]  inference MFU "
                  f"{100 * r['inference_mfu']:.1f}%  (batch {batch}, load {row['load_before']} -> {row['load_after']})")
        if "bf16_over_fp32" in row:
            b = row["bf16_over_fp32"]["plain_step"]
            print(f"{profile:5s} bf16/fp32 plain step {b['median']:.3f}x [IQR {b['q1']:.3f}-{b['q3']:.3f}]")
    print(f"written {save(args.name, results)}")


if __name__ == "__main__":
    main()
