"""Shared benchmark helpers: timing, the machine's matmul peak, and a JSON record of every figure."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from s4d.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, warmup: int = 1, repeat: int = 3) -> float:
    """Median seconds per call of fn() after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def matmul_peak(dtype: torch.dtype, n: int = 2048, device: str = "cpu") -> float:
    """Achieved FLOP/s of an n^3 matmul: the peak that MFU is measured against, taken in the same run."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    seconds = timed(lambda: a @ b, warmup=2, repeat=5)
    return 2 * n ** 3 / seconds


def machine() -> dict:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"device": device, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "torch": torch.__version__}


def save(name: str, figures: dict) -> Path:
    """Write benchmarks/results/<name>.json atomically and return its path."""
    return write_json(RESULTS / f"{name}.json", {"machine": machine(), **figures})
