"""s4d.precision: precision and attention kernel chosen by measurement, cached per machine, printed once;
s4d.models.vit.set_fused_attention: the one attention switch."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from s4d import precision
from s4d.config import Params
from s4d.io import read_json, write_json
from s4d.models import S4DClassifier
from s4d.models.vit import set_fused_attention


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("S4D_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "_printed", set())
    return tmp_path / "cache"


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_explicit_settings_and_a_bad_one():
    assert precision.use_bf16("bf16", "cpu") is True
    assert precision.use_bf16("fp32", "cpu") is False
    with pytest.raises(ValueError, match="auto, bf16 or fp32.*'half'"):
        precision.use_bf16("half", "cpu")


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs /proc/cpuinfo for the CPU's flags")
def test_auto_on_cpu_follows_the_hardware_and_is_cached_and_printed_once(cache_dir, capsys):
    choice = precision.use_bf16("auto", "cpu")
    flags = cpu_flags()
    # The independent reference: without native bf16 instructions torch emulates bf16 matmuls (slower than fp32,
    # ~25x on the AVX2 machines here); with AMX they run several times faster.
    if not {"amx_bf16", "avx512_bf16"} & flags:
        assert choice is False
    if "amx_bf16" in flags:
        assert choice is True
    cache = read_json(cache_dir / "precision.json")
    (key,) = cache
    assert torch.__version__ in key and key.endswith("|matmul")
    assert cache[key]["bf16_speedup"] == pytest.approx(cache[key]["fp32_s"] / cache[key]["bf16_s"])
    assert choice == (cache[key]["bf16_speedup"] >= precision.BF16_MARGIN)
    assert precision.use_bf16("auto", "cpu") is choice
    printed = capsys.readouterr().err.splitlines()
    assert len([line for line in printed if line.startswith("precision:")]) == 1
    assert ("bf16 autocast" if choice else "fp32") in printed[0] and "bf16 matmul" in printed[0]


def test_auto_reads_the_cached_measurement(cache_dir):
    # A later process on the same machine does not probe again: what the cache holds decides.
    key = f"{precision.machine_key()}|matmul"
    write_json(cache_dir / "precision.json", {key: {"fp32_s": 1.0, "bf16_s": 0.25, "bf16_speedup": 4.0}})
    assert precision.use_bf16("auto", "cpu") is True
    write_json(cache_dir / "precision.json", {key: {"fp32_s": 1.0, "bf16_s": 0.9, "bf16_speedup": 1.11}})
    assert precision.use_bf16("auto", "cpu") is False  # faster, but not clearly (margin 1.2)


def test_manual_attention_is_the_attention_formula():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, dtype=torch.float64) for _ in range(3))
    # by hand: softmax over keys of q.k / sqrt(4), then the weighted sum of values
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / 2.0
    weights = scores.exp() / scores.exp().sum(-1, keepdim=True)
    expected = torch.einsum("bhqk,bhkd->bhqd", weights, v)
    torch.testing.assert_close(precision.manual_attention(q, k, v), expected)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v), expected)


def test_attention_choice_is_measured_and_cached(cache_dir, capsys):
    fused = precision.use_fused_attention(64, 64, 2, bf16=False, train=True, device="cpu")
    cache = read_json(cache_dir / "precision.json")
    (key,) = cache
    assert "attention cpu fp32 train 64x64/2" in key
    assert fused == (cache[key]["fused_s"] <= cache[key]["manual_s"])
    assert precision.use_fused_attention(64, 64, 2, bf16=False, train=True, device="cpu") is fused
    assert capsys.readouterr().err.count("attention cpu fp32 train") == 1


def test_one_switch_selects_the_kernel_and_both_compute_the_same(monkeypatch):
    cfg = Params().models["tiny"]
    cfg = dataclasses.replace(cfg, depth=2, img_size=32, num_frames=4)
    torch.manual_seed(0)
    model = S4DClassifier(cfg, 7, 7).eval()
    clips = torch.randn(2, 3, cfg.num_frames, cfg.img_size, cfg.img_size)
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    with torch.no_grad():
        assert set_fused_attention(model, True) == cfg.depth
        fused = model(clips)
        assert len(calls) == cfg.depth
        assert set_fused_attention(model, False) == cfg.depth
        manual = model(clips)
    assert len(calls) == cfg.depth  # the manual path does not call SDPA
    torch.testing.assert_close(fused, manual, rtol=1e-4, atol=1e-5)
    assert precision.configure(model, cfg, bf16=False, train=False) in (True, False)


@pytest.mark.slow
def test_finetune_and_evaluate_apply_the_measured_attention_kernel(micro_project, cache_dir):
    """The stages as users run them: each asks the probe (train for fine-tuning, inference for evaluation),
    prints the choice and caches it on this machine."""
    from conftest import MICRO_MODEL, run_module

    env = {"S4D_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    tuned = run_module("s4d.train.finetune", *MICRO_MODEL, "finetune.epochs=1", "finetune.precision=fp32",
                       cwd=micro_project, env=env)
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    assert "attention cpu fp32 train" in tuned.stderr
    evaluated = run_module("s4d.train.evaluate", *MICRO_MODEL, "finetune.precision=fp32", cwd=micro_project, env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "attention cpu fp32 infer" in evaluated.stderr
    keys = list(read_json(cache_dir / "precision.json"))
    assert any("attention cpu fp32 train" in k for k in keys) and any("attention cpu fp32 infer" in k for k in keys)
