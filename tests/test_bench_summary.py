"""benchmarks/run_all.py: the summary of every asked-for figure, built from the committed results files.

Fast: nothing is benchmarked; the summary is built from copies of benchmarks/results/*.json in a tmp dir.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/ is not an installed package

from benchmarks import run_all  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def read_key(data, key: str):
    """An independent reader of the few key paths the summary declares (not run_all.lookup)."""
    for part in key.split("."):
        name, _, selector = part.partition("[")
        data = data[name]
        if selector:
            selector = selector.rstrip("]")
            if selector.isdigit():
                data = data[int(selector)]
            else:
                wanted = dict(pair.split("=") for pair in selector.split(","))
                (data,) = [row for row in data if all(str(row[k]) == v for k, v in wanted.items())]
    return data


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    results, artifacts = tmp_path / "results", tmp_path / "artifacts"
    results.mkdir()
    for path in RESULTS.glob("*.json"):
        if path.name != "summary.json":
            shutil.copy(path, results / path.name)
    (artifacts / "eval").mkdir(parents=True)
    (artifacts / "eval" / "metrics.json").write_text(json.dumps({"dynamic": {"uar": 0.61, "war": 0.64}}))
    return results, artifacts


def by_name(summary: dict) -> dict[str, dict]:
    return {e["name"]: e for e in summary["figures"]}


def test_every_declared_figure_with_its_source_value(dirs):
    results, artifacts = dirs
    summary = run_all.build_summary(results, artifacts)
    figures = run_all.declared_figures()
    entries = by_name(summary)
    assert len(entries) == len(figures) == summary["counts"]["figures"]  # names unique, none dropped
    checked = 0
    for fig in figures:
        e = entries[fig.name]
        assert e["topic"] == fig.topic and e["unit"] == fig.unit
        if fig.source is None:
            assert e["value"] is None and e["missing"]
            continue
        _, base, rel = run_all.SOURCES[fig.source]
        path = (results if base == "results" else artifacts) / rel
        if not path.exists():
            assert e["value"] is None and "not found" in e["missing"]
            continue
        data = json.loads(path.read_text())
        try:
            expected = read_key(data, fig.key)
        except (KeyError, IndexError, ValueError):
            assert e["value"] is None and e["missing"], fig.name  # absent from the file: null with a reason
            continue
        assert e["value"] == expected and e["missing"] is None, fig.name
        assert e["source"] == str(path) and e["key"] == fig.key
        assert e["machine"] == data.get("machine")
        checked += 1
    assert checked >= 30  # the committed results really feed the summary

    # the figures the session notes quote, read by hand from the committed files
    models = json.loads((RESULTS / "models.json").read_text())
    serving = json.loads((RESULTS / "serving.json").read_text())
    train = json.loads((RESULTS / "train.json").read_text())
    base_fp32 = models["profiles"]["base"]["fp32"]
    assert entries["moae_over_plain_step_base_fp32"]["value"] == base_fp32["moae_step_over_plain"]
    assert entries["adaptive_batching_speedup"]["value"] == serving["clip_throughput"]["speedup"]
    (tiny_2rank,) = [r for r in train["pretrain_mae"]
                     if (r["profile"], r["ranks"], r["precision"]) == ("tiny", 2, "fp32")]
    assert entries["adam_state_tiny_zero2_2rank"]["value"] == tiny_2rank["optimizer_state_mib_per_rank"][0]
    assert entries["test_uar_dynamic"]["value"] == 0.61
    assert entries["moae_over_plain_step_base_fp32"]["machine"]["cpus"] == models["machine"]["cpus"]


def test_targets_are_evaluated(dirs):
    results, artifacts = dirs
    entries = by_name(run_all.build_summary(results, artifacts))
    speedup = entries["adaptive_batching_speedup"]
    assert speedup["target"] == ">= 1.5" and speedup["met"] is (speedup["value"] >= 1.5)
    assert entries["forward_tiny_fp32"]["target"] is None and entries["forward_tiny_fp32"]["met"] is None

    serving = json.loads((results / "serving.json").read_text())
    serving["video_latency"]["p50_s"] = 2.5  # misses <= 2 s
    serving["clip_throughput"]["speedup"] = 1.5  # exactly on the bound: met
    serving["soak"]["errors"] = 1  # misses == 0
    (results / "serving.json").write_text(json.dumps(serving))
    models = json.loads((results / "models.json").read_text())
    models["profiles"]["base"]["fp32"]["moae_step_over_plain"] = 1.16  # misses <= 1.15
    (results / "models.json").write_text(json.dumps(models))

    summary = run_all.build_summary(results, artifacts)
    entries = by_name(summary)
    assert entries["video_10s_p50"]["met"] is False and entries["video_10s_p50"]["value"] == 2.5
    assert entries["adaptive_batching_speedup"]["met"] is True
    assert entries["soak_errors"]["met"] is False
    assert entries["moae_over_plain_step_base_fp32"]["met"] is False
    assert summary["counts"]["not_met"] == sum(e["met"] is False for e in summary["figures"]) >= 3


def test_a_target_is_met_only_when_the_whole_iqr_clears_it(dirs):
    results, artifacts = dirs
    models = json.loads((results / "models.json").read_text())
    row = models["profiles"]["base"]["fp32"]
    row["moae_step_over_plain"] = 1.10  # the median clears <= 1.15 ...
    row["ratios"]["moae_over_plain_step"].update(median=1.10, q1=1.05, q3=1.16)  # ... the IQR does not
    (results / "models.json").write_text(json.dumps(models))
    (results / "mae.json").write_text(json.dumps({"ratios": {"pretrain_over_finetune_clips_s": {
        "median": 5.2, "q1": 5.01, "q3": 5.6}}}))
    entries = by_name(run_all.build_summary(results, artifacts))
    moae = entries["moae_over_plain_step_base_fp32"]
    assert moae["value"] == 1.10 and moae["iqr"] == [1.05, 1.16] and moae["met"] is False
    mae = entries["mae_over_finetune_clips_s"]
    assert mae["value"] == 5.2 and mae["iqr"] == [5.01, 5.6] and mae["met"] is True  # q1 >= 5: cleared

    row["ratios"]["moae_over_plain_step"]["q3"] = 1.15  # on the bound: cleared
    (results / "models.json").write_text(json.dumps(models))
    (results / "mae.json").write_text(json.dumps({"ratios": {"pretrain_over_finetune_clips_s": {
        "median": 5.2, "q1": 4.9, "q3": 5.6}}}))
    entries = by_name(run_all.build_summary(results, artifacts))
    assert entries["moae_over_plain_step_base_fp32"]["met"] is True
    assert entries["mae_over_finetune_clips_s"]["met"] is False  # median 5.2 but q1 4.9 < 5

    del row["ratios"]  # no quartiles recorded: judged on the value, and the entry says so
    (results / "models.json").write_text(json.dumps(models))
    moae = by_name(run_all.build_summary(results, artifacts))["moae_over_plain_step_base_fp32"]
    assert moae["met"] is True and moae["iqr"] is None and "judged on the value alone" in moae["note"]


def test_missing_sources_give_null_and_a_reason(dirs):
    results, artifacts = dirs
    (results / "serving.json").unlink()
    (results / "data.json").write_text("{not json")
    shutil.rmtree(artifacts)
    entries = by_name(run_all.build_summary(results, artifacts))
    for name in ("video_10s_p50", "soak_errors"):
        assert entries[name]["value"] is None and entries[name]["met"] is None
        assert "serving.json not found" in entries[name]["missing"] and "bench_serving" in entries[name]["missing"]
    assert entries["loader_clips_s_workers0"]["value"] is None
    assert "not valid JSON" in entries["loader_clips_s_workers0"]["missing"]
    assert "metrics.json not found" in entries["test_uar_dynamic"]["missing"]
    # a key absent from a file that exists (the committed models.json has no bf16 rows)
    mfu = entries["inference_mfu_base_bf16"]
    assert mfu["value"] is None and mfu["met"] is None and "no profiles.base.bf16" in mfu["missing"]


def test_summary_written_atomically(dirs):
    results, artifacts = dirs
    summary = run_all.build_summary(results, artifacts)
    path = run_all.write_json(results / "summary.json", summary)
    assert json.loads(path.read_text())["figures"] == summary["figures"]
    assert not [p for p in results.iterdir() if ".tmp" in p.name]
    # a write that fails half-way leaves the previous summary whole and no temp file behind
    before = path.read_bytes()
    with pytest.raises(TypeError):
        run_all.write_json(path, {**summary, "figures": [object()]})
    assert path.read_bytes() == before
    assert not [p for p in results.iterdir() if ".tmp" in p.name]


def test_failing_modules_are_recorded_and_exit_nonzero(dirs, monkeypatch, capsys):
    results, artifacts = dirs
    monkeypatch.setattr(run_all, "RESULTS", results)
    monkeypatch.setattr(run_all, "ARTIFACTS", artifacts)
    # two modules that do not exist: real child processes that fail; the first must not stop the second
    monkeypatch.setattr(run_all, "MODULES", {"bench_absent_a": [], "bench_absent_b": []})
    monkeypatch.setitem(run_all.SOURCES, "serving", ("bench_absent_a", "results", "serving.json"))
    assert run_all.main([]) == 1
    summary = json.loads((results / "summary.json").read_text())
    for name in ("bench_absent_a", "bench_absent_b"):
        assert summary["runs"][name]["returncode"] == 1
        assert f"No module named benchmarks.{name}" in summary["runs"][name]["stderr_tail"]
    p50 = by_name(summary)["video_10s_p50"]
    assert p50["value"] is not None and "bench_absent_a failed in this run" in p50["note"]  # earlier value, flagged
    out = capsys.readouterr().out
    assert "bench_absent_a: FAILED (exit 1)" in out and "bench_absent_b: FAILED (exit 1)" in out


@pytest.mark.parametrize("args, message", [(["--steps", "0"], "--steps: 0 is below 1"),
                                           (["--rounds", "1"], "--rounds: 1 is below 2"),
                                           (["--steps", "x"], "invalid int value: 'x'")])
def test_bench_mae_rejects_counts_it_cannot_time(args, message, capsys):
    from benchmarks import bench_mae

    with pytest.raises(SystemExit) as exit_info:
        bench_mae.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
