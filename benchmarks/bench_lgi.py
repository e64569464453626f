"""LGI-Former vs ViT: forward FLOPs per clip and train-step time, with their ratios, in one run.

    python -m benchmarks.bench_lgi [--profiles tiny base] [--batch N] [--repeat N]

Arms per profile (plain encoders, no MoAE, so the encoders alone are compared):
  vit           the profile's ViT
  lgi           the same width/depth as an LGI-Former with the profile's `lgi` region and token count
  lgi_released  (base only) MAE-DFER's released LGI-Former: 512 wide, 16 blocks, 8 heads, regions 2 x 5 x 10
The paper's anchor: LGI-Former fine-tuning costs about 38% fewer FLOPs than VideoMAE's ViT-B
(lgi_released / vit at base). FLOPs are counted by torch's FlopCounterMode with attention on the math
kernel (the fused CPU kernel is not counted by it); multiply-add = 2 FLOPs.
"""
from __future__ import annotations

import argparse
import dataclasses

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import save, timed
from s4d.config import LGIConfig, ModelConfig, load_params
from s4d.models import S4DClassifier


def arms(profile: str, cfg: ModelConfig) -> dict[str, ModelConfig]:
    plain = dataclasses.replace(cfg, moae=dataclasses.replace(cfg.moae, layers=0))
    out = {"vit": dataclasses.replace(plain, encoder="vit"), "lgi": dataclasses.replace(plain, encoder="lgi")}
    if profile == "base":
        out["lgi_released"] = dataclasses.replace(out["lgi"], embed_dim=512, depth=16, num_heads=8,
                                                  lgi=LGIConfig(region=[2, 5, 10], tokens=1))
    return out


def measure(cfg: ModelConfig, batch: int, repeat: int, device: str) -> dict:
    torch.manual_seed(0)
    model = S4DClassifier(cfg, 7).to(device)
    clips = torch.randn(batch, 3, cfg.num_frames, cfg.img_size, cfg.img_size, device=device)
    labels = torch.randint(0, 7, (batch,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    @torch.no_grad()
    def forward():
        model.eval()
        model(clips)

    def train_step():
        model.train()
        F.cross_entropy(model(clips), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        forward()
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "forward_gflop_per_clip": counter.get_total_flops() / batch / 1e9,
            "forward_s_per_clip": timed(forward, repeat=repeat) / batch,
            "train_step_s_per_clip": timed(train_step, repeat=repeat) / batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", nargs="+", default=["tiny", "base"])
    parser.add_argument("--batch", type=int, default=0, help="clips per step (default: 8 tiny, 1 base on CPU)")
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats (median), after one warm-up")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    params = load_params(args.params)
    results: dict = {"profiles": {}}
    for profile in args.profiles:
        cfg = params.models[profile]
        batch = args.batch or (8 if profile == "tiny" else 1) * (8 if device == "cuda" else 1)
        row: dict = {"batch": batch, "lgi": {"region": list(cfg.lgi.region), "tokens": cfg.lgi.tokens}}
        for name, arm in arms(profile, cfg).items():
            row[name] = measure(arm, batch, args.repeat, device)
            r = row[name]
            print(f"{profile:5s} {name:13s} {r['params_m']:6.1f} M params  {r['forward_gflop_per_clip']:8.2f} "
                  f"GFLOP/clip  forward {r['forward_s_per_clip']:7.3f} s/clip  train step "
                  f"{r['train_step_s_per_clip']:7.3f} s/clip")
        for name in [n for n in row if n.startswith("lgi") and isinstance(row[n], dict) and "params_m" in row[n]]:
            row[f"{name}_over_vit"] = {
                "flops": row[name]["forward_gflop_per_clip"] / row["vit"]["forward_gflop_per_clip"],
                "forward_time": row[name]["forward_s_per_clip"] / row["vit"]["forward_s_per_clip"],
                "train_step_time": row[name]["train_step_s_per_clip"] / row["vit"]["train_step_s_per_clip"]}
            print(f"{profile:5s} {name}/vit: FLOPs {row[f'{name}_over_vit']['flops']:.3f}  forward time "
                  f"{row[f'{name}_over_vit']['forward_time']:.3f}  train step time "
                  f"{row[f'{name}_over_vit']['train_step_time']:.3f}")
        results["profiles"][profile] = row
    print(f"written {save('lgi', results)}")


if __name__ == "__main__":
    main()
