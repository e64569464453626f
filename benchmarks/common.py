"""Shared benchmark method and records.

The machines are shared and their load drifts by minutes, so a figure taken as "run A, then run B" measures
the drift as much as A vs B. The method here:
- every variant runs in one process, interleaved: one call of each per round, the order reversed every
  other round (A B, B A, A B ...), so a slow spell costs both sides alike;
- a comparison is the per-round ratio (paired), reported as median with its quartiles (IQR);
- a target counts as met only when the whole IQR clears it;
- the machine load (os.getloadavg) and the fp32/bf16 matmul peaks measured in the same run sit beside
  every figure, so a figure from another machine or a busy minute can be told apart.
"""
from __future__ import annotations

import operator
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from s4d.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def quartiles(values: list[float]) -> dict:
    """Median and inter-quartile range of values (one value: an IQR of zero width)."""
    if len(values) == 1:
        q1 = med = q3 = values[0]
    else:
        q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": med, "q1": q1, "q3": q3, "iqr": q3 - q1, "n": len(values)}


def interleaved(fns: dict[str, Callable[[], object]], rounds: int = 7, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each fn, one call of each per round, the order reversed every other round."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    _sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            start = time.perf_counter()
            fns[name]()
            _sync()
            times[name].append(time.perf_counter() - start)
    return times


def timed(fn: Callable[[], object], warmup: int = 1, repeat: int = 3) -> float:
    """Median seconds per call of one fn (a single figure with nothing to compare it with in the same run)."""
    return statistics.median(interleaved({"fn": fn}, rounds=repeat, warmup=warmup)["fn"])


def ratio(times: dict[str, list[float]], a: str, b: str) -> dict:
    """Per-round ratio a / b of interleaved times (paired), as quartiles."""
    return quartiles([x / y for x, y in zip(times[a], times[b])])


OPS = {"<=": operator.le, ">=": operator.ge}


def target_met(stats: dict, op: str, value: float) -> bool:
    """Met only when the whole IQR is on the right side of the target: q3 for an upper bound, q1 for a lower."""
    return OPS[op](stats["q3"] if op == "<=" else stats["q1"], value)


def load() -> list[float]:
    """1, 5 and 15 minute load averages of the machine."""
    return [round(v, 2) for v in os.getloadavg()]


def matmul_peak(dtype: torch.dtype, n: int = 2048, device: str = "cpu", rounds: int = 5) -> dict:
    """Achieved FLOP/s of an n^3 matmul (median and IQR over rounds): the peak MFU is measured against,
    taken in the same run. The size grows from 256 by doubling up to n while one call takes under 0.25 s, so
    a dtype the machine runs slowly (bf16 without AMX: ~25x slower here) is measured in seconds, not minutes."""
    size = 256
    while True:
        a = torch.randn(size, size, dtype=dtype, device=device)
        b = torch.randn(size, size, dtype=dtype, device=device)
        start = time.perf_counter()
        a @ b
        _sync()
        if time.perf_counter() - start > 0.25 or size >= n:
            break
        size *= 2
    seconds = interleaved({"mm": lambda: a @ b}, rounds=rounds, warmup=1)["mm"]
    stats = quartiles([2 * size ** 3 / s / 1e9 for s in seconds])
    return {"gflop_s": stats["median"], "q1": stats["q1"], "q3": stats["q3"], "n": size}


def peaks(device: str = "cpu") -> dict:
    return {"fp32": matmul_peak(torch.float32, device=device), "bf16": matmul_peak(torch.bfloat16, device=device)}


def machine() -> dict:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_model()
    return {"device": device, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "torch": torch.__version__}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def save(name: str, figures: dict) -> Path:
    """Write benchmarks/results/<name>.json atomically and return its path."""
    return write_json(RESULTS / f"{name}.json", {"machine": machine(), **figures})
