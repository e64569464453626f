"""scripts/gpu-check.sh --dry-run: every step of the GPU check runs at micro sizes on the CPU."""
import json
import subprocess

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # multi-process runs of minutes each: `make test-heavy`


def test_gpu_check_dry_run_runs_every_step(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([str(ROOT / "scripts" / "gpu-check.sh"), "--dry-run", "--out", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads(out.read_text())
    assert record["dry_run"] is True and record["precision"] == "fp32"
    steps = record["steps"]
    assert list(steps) == ["peak", "pretrain", "finetune", "evaluate", "serve", "throughput"]
    assert all(step["ok"] for step in steps.values())
    assert steps["pretrain"]["steps"] > 0 and steps["pretrain"]["zero_stage"] == 2
    assert steps["finetune"]["device"] == "cpu" and steps["finetune"]["steps"] > 0
    assert steps["serve"]["label"] in ("c0", "c1", "c2")
    for kind in ("finetune", "mae"):
        figures = steps["throughput"][kind]
        assert figures["gflop_per_step"] > 0 and 0 < figures["mfu"]


def test_gpu_check_refuses_without_cuda_unless_dry_run(tmp_path):
    proc = subprocess.run([str(ROOT / "scripts" / "gpu-check.sh")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "no CUDA device; use --dry-run" in proc.stderr
