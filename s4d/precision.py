"""Precision and attention kernel, chosen by measurement on the machine that runs.

`precision: auto` means bf16 autocast where it is faster: always on CUDA with bf16 support; on a CPU only when
a short probe (bf16 vs fp32 matmul) shows bf16 clearly faster. CPUs with AMX run bf16 matmuls several times
faster than fp32; CPUs without it (AVX2, most AVX-512) run them slower, so nothing is assumed.
The attention kernel (fused SDPA or the manual softmax(q k^T) v) is chosen the same way, per device, precision
and shape, forward and backward timed together for training, forward alone for inference; the model reads
it through one switch (s4d.models.vit.set_fused_attention).
CPU probes are cached per machine (CPU model and flags, torch version, threads) in a small JSON file under
$S4D_CACHE_DIR (default ~/.cache/s4d), so a stage pays for them once. Each choice is printed once per process.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from s4d.io import read_json, write_json
from s4d.models.vit import grid_tokens, set_fused_attention

BF16_MARGIN = 1.2  # auto picks bf16 on a CPU only when its matmul is at least this much faster than fp32
_printed: set[str] = set()


def cache_path() -> Path:
    return Path(os.environ.get("S4D_CACHE_DIR") or Path.home() / ".cache" / "s4d") / "precision.json"


def machine_key() -> str:
    """What a CPU probe's answer depends on: CPU model and flags, torch version, threads."""
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        info = Path("/proc/cpuinfo").read_text()
        model = next((line for line in info.splitlines() if line.startswith("model name")), "")
        flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
        cpu = model + hashlib.sha256(flags.encode()).hexdigest()[:12]
    return f"{cpu}|torch {torch.__version__}|threads {torch.get_num_threads()}"


def _cached(name: str, probe: Callable[[], dict]) -> dict:
    """probe()'s result for this machine, measured once and kept in the cache file."""
    path = cache_path()
    try:
        cache = read_json(path)
    except (OSError, ValueError):
        cache = {}
    if not isinstance(cache, dict):
        cache = {}
    key = f"{machine_key()}|{name}"
    if key not in cache:
        cache[key] = probe()
        with contextlib.suppress(OSError):  # a read-only home only costs the probe again next time
            write_json(path, cache)
    return cache[key]


def _best_seconds(fn: Callable[[], object], repeat: int, device: torch.device) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def probe_matmul(n: int = 256, repeat: int = 2) -> dict:
    """Seconds of an n^3 matmul on the CPU in fp32 and bf16 (best of `repeat`, after a warm-up)."""
    cpu = torch.device("cpu")
    times = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        times[name] = _best_seconds(lambda: a @ b, repeat, cpu)
    return {"fp32_s": times["fp32"], "bf16_s": times["bf16"], "bf16_speedup": times["fp32"] / times["bf16"]}


def _say_once(message: str) -> None:
    if message not in _printed:
        _printed.add(message)
        print(message, file=sys.stderr, flush=True)  # stderr: stages print JSON on stdout


def use_bf16(precision: str, device: torch.device | str = "cpu") -> bool:
    """params' precision -> bf16 autocast or not: "bf16" always, "fp32" never, "auto" as measured."""
    device = torch.device(device)
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision != "auto":
        choice, why = precision == "bf16", "set in params"
    elif device.type == "cuda":
        choice, why = torch.cuda.is_bf16_supported(), "CUDA"
    else:
        probe = _cached("matmul", probe_matmul)
        choice = probe["bf16_speedup"] >= BF16_MARGIN
        why = f"bf16 matmul {probe['bf16_speedup']:.2f}x fp32 on this CPU"
    _say_once(f"precision: {'bf16 autocast' if choice else 'fp32'} on {device.type} ({precision}: {why})")
    return choice


def manual_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, the way timm's Attention computes it when not fused."""
    return (q * q.shape[-1] ** -0.5 @ k.transpose(-2, -1)).softmax(dim=-1) @ v


def probe_attention(tokens: int, dim: int, heads: int, bf16: bool, train: bool, device: torch.device,
                    batch: int = 1, repeat: int = 2) -> dict:
    """Seconds of fused SDPA vs manual attention at one shape (forward, plus backward when train)."""
    # Capped at 512 tokens so the probe stays short (manual bf16 attention without AMX runs for seconds).
    shape = (batch, heads, min(tokens, 512), dim // heads)
    qkv = [torch.randn(shape, device=device, requires_grad=train) for _ in range(3)]
    times = {}
    for name, attend in (("fused", F.scaled_dot_product_attention), ("manual", manual_attention)):
        def run():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = attend(*qkv)
            if train:
                out.float().sum().backward()
        with contextlib.nullcontext() if train else torch.no_grad():
            times[name] = _best_seconds(run, repeat, device)
    return {"fused_s": times["fused"], "manual_s": times["manual"], "fused": times["fused"] <= times["manual"]}


def use_fused_attention(tokens: int, dim: int, heads: int, bf16: bool, train: bool,
                        device: torch.device | str = "cpu") -> bool:
    """Fused SDPA or manual attention for this device, precision, shape and mode, as measured (cached)."""
    device = torch.device(device)
    name = f"attention {device.type} {'bf16' if bf16 else 'fp32'} {'train' if train else 'infer'} " \
           f"{tokens}x{dim}/{heads}"
    if device.type == "cuda":  # not cached: the GPU model is not in the machine key
        probe = probe_attention(tokens, dim, heads, bf16, train, device)
    else:
        probe = _cached(name, lambda: probe_attention(tokens, dim, heads, bf16, train, device))
    _say_once(f"{name}: {'fused SDPA' if probe['fused'] else 'manual'} (fused {probe['fused_s'] * 1e3:.1f} ms, "
              f"manual {probe['manual_s'] * 1e3:.1f} ms)")
    return probe["fused"]


def configure(model: torch.nn.Module, cfg, bf16: bool, train: bool, device: torch.device | str = "cpu") -> bool:
    """Set model's attention kernel for a ModelConfig cfg (full clip tokens) in this precision and mode."""
    fused = use_fused_attention(grid_tokens(cfg), cfg.embed_dim, cfg.num_heads, bf16, train, device)
    set_fused_attention(model, fused)
    return fused
