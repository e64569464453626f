"""Evaluation gate: the pure decision (pass, floors, regression, tolerance), its params, and the DVC stage."""
import json
import math
from pathlib import Path

import pytest

from conftest import ROOT, bentoml_home
from s4d import registry
from s4d.config import ConfigError, load_params
from s4d.gate import GateConfig, comparison_table, decide, main, report_markdown
from s4d.io import sha256_file
from test_registry import make_checkpoint


def dyn(uar, war, **recall):
    return {"uar": uar, "war": war, "per_class_recall": recall or {"happy": uar, "sad": war}, "n": 100}


CFG = GateConfig(min_uar=0.3, min_war=0.4, max_uar_drop=0.02, max_war_drop=0.01)


# ----------------------------------------------------------------------------------------- decide()
def test_passes_on_floors_without_a_champion():
    d = decide(dyn(0.5, 0.6), None, CFG)
    assert d.passed and d.reasons == []
    assert "no champion" in d.notes[0]
    rows = {r["metric"]: r for r in d.comparison}
    assert rows["uar"]["meets_floor"] and rows["uar"]["champion"] is None and rows["uar"]["no_regression"] is None
    assert rows["uar"]["floor"] == 0.3 and rows["war"]["floor"] == 0.4


def test_fails_below_an_absolute_floor():
    d = decide(dyn(0.29, 0.6), None, CFG)
    assert not d.passed
    assert len(d.reasons) == 1 and "UAR 0.2900 is below the floor 0.3000" in d.reasons[0]
    d = decide(dyn(0.1, 0.1), None, CFG)
    assert len(d.reasons) == 2


def test_fails_on_a_regression_beyond_the_tolerance():
    champion = dyn(0.60, 0.70)
    d = decide(dyn(0.57, 0.70), champion, CFG, champion_tag="s4d-champion:x", champion_source="stored")
    assert not d.passed
    assert "regresses against the champion's 0.6000 by 0.0300 (tolerance 0.0200)" in d.reasons[0]
    rows = {r["metric"]: r for r in d.comparison}
    assert rows["uar"]["no_regression"] is False and rows["war"]["no_regression"] is True
    assert math.isclose(rows["uar"]["delta"], -0.03)
    assert d.champion == {"tag": "s4d-champion:x", "metrics_source": "stored", "compared": True}


def test_a_drop_within_the_tolerance_passes_and_the_boundary_counts_as_met():
    champion = dyn(0.60, 0.70)
    assert decide(dyn(0.59, 0.695), champion, CFG).passed  # drops 0.01 / 0.005
    assert decide(dyn(0.58, 0.69), champion, CFG).passed  # exactly at both tolerances (float noise included)
    assert not decide(dyn(0.58, 0.689), champion, CFG).passed
    assert decide(dyn(0.70, 0.80), champion, CFG).passed  # an improvement


def test_missing_or_nan_metrics_fail():
    d = decide({"uar": float("nan"), "war": 0.9}, None, CFG)
    assert not d.passed and "not a number" in d.reasons[0]
    assert not decide({"war": 0.9}, None, CFG).passed


def test_an_incomparable_champion_is_noted_not_counted():
    d = decide(dyn(0.5, 0.6), None, CFG, champion_tag="s4d-champion:y",
               champion_note="champion s4d-champion:y was measured on dfew fold 1: not compared")
    assert d.passed and "not compared" in d.notes[0] and d.champion["compared"] is False


def test_report_and_table_carry_the_full_comparison():
    d = decide(dyn(0.57, 0.70, happy=0.9, sad=0.2), dyn(0.60, 0.70, happy=0.8, sad=0.4), CFG,
               champion_tag="s4d-champion:x").to_dict()
    md = report_markdown(d)
    assert "FAILED" in md and "keeps serving" in md and "| uar | 0.5700 | 0.6000 | -0.0300 |" in md
    assert "recall[sad]" in md
    table = comparison_table(d)
    assert [r["metric"] for r in table] == ["uar", "war", "recall[happy]", "recall[sad]"]
    assert all(v != None for row in table for v in row.values())  # noqa: E711 - artifacts want plain values
    json.dumps(table)


# ------------------------------------------------------------------------------------------- params
def test_gate_section_and_overrides_are_checked(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    if "\ngate:" not in text:
        text += "\ngate:\n  min_uar: 0.4\n  max_war_drop: 0.05\n"
    path = tmp_path / "params.yaml"
    path.write_text(text)
    params = load_params(path, ["gate.min_war=0.5", "finetune.epochs=3"])
    assert params.finetune.epochs == 3 and params.gate.min_war == 0.5
    with pytest.raises(ConfigError, match="gate.min_uarr"):
        load_params(path, ["gate.min_uarr=0.5"])
    with pytest.raises(ConfigError, match=r"gate.min_uar: 1.5 is outside"):
        load_params(path, ["gate.min_uar=1.5"])
    with pytest.raises(ConfigError, match="finetune.epochz"):
        load_params(path, ["finetune.epochz=3"])


# -------------------------------------------------------------------------------------------- stage
@pytest.fixture
def stage_dir(tmp_path, monkeypatch):
    """A project folder with params, a candidate's metrics and checkpoint, and an empty model store."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "artifacts/eval").mkdir(parents=True)
    (tmp_path / "artifacts/finetune").mkdir(parents=True)
    write_metrics(tmp_path, 0.5, 0.6)
    make_checkpoint(tmp_path / "artifacts/finetune/model.pt", seed=0)
    with bentoml_home(tmp_path / "bentoml"):
        yield tmp_path


def write_metrics(root: Path, uar, war, dataset="synthetic_video", fold=1):
    (root / "artifacts/eval/metrics.json").write_text(json.dumps(
        {"dynamic": dyn(uar, war), "fold": fold, "dataset": dataset}))


def decision(root):
    return json.loads((root / "artifacts/gate/decision.json").read_text())


def test_stage_writes_the_decision_and_exits_0_either_way(stage_dir):
    assert main(["gate.min_uar=0.3", "gate.min_war=0.3"]) == 0
    d = decision(stage_dir)
    assert d["passed"] and d["champion"] is None
    assert d["candidate"]["sha256"] == sha256_file("artifacts/finetune/model.pt")
    assert (stage_dir / "artifacts/gate/report.md").read_text().startswith("# Evaluation gate: PASSED")

    assert main(["gate.min_uar=0.9"]) == 0  # failed gate: still exit 0, so `dvc repro` goes on
    assert not decision(stage_dir)["passed"]
    assert main(["--strict", "gate.min_uar=0.9"]) == 1


def test_stage_errors_on_missing_inputs(stage_dir, capsys):
    (stage_dir / "artifacts/eval/metrics.json").unlink()
    assert main([]) == 1
    assert "metrics.json does not exist" in capsys.readouterr().err
    assert not (stage_dir / "artifacts/gate/decision.json").exists()


def test_stage_stops_on_a_bad_override_naming_it(stage_dir, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["gate.min_uarr=0.5"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "gate.min_uarr" in err  # one line on stderr, no traceback
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (stage_dir / "artifacts/gate/decision.json").exists()


def test_a_nan_metric_fails_the_gate_and_the_decision_stays_valid_json(stage_dir):
    (stage_dir / "artifacts/eval/metrics.json").write_text(
        '{"dataset": "x", "fold": 1, "dynamic": {"uar": NaN, "war": 0.6, "per_class_recall": {}}}')
    assert main(["gate.min_uar=0.3", "gate.min_war=0.3"]) == 0
    text = (stage_dir / "artifacts/gate/decision.json").read_text()
    assert "NaN" not in text  # strict JSON readers refuse NaN
    d = json.loads(text)
    assert not d["passed"] and d["comparison"][0]["candidate"] is None and "not a number (nan)" in d["reasons"][0]


def promote_champion(root, uar, war, dataset="synthetic_video"):
    ckpt = make_checkpoint(root / "champion.pt", seed=7)
    tag = registry.save_to_store(ckpt, metadata={"metrics": {"dynamic": dyn(uar, war), "fold": 1, "dataset": dataset}})
    return registry.promote(tag)


def test_stage_compares_with_the_champion_stored_metrics(stage_dir):
    champ = promote_champion(stage_dir, 0.55, 0.62)
    assert main(["gate.reevaluate_champion=false", "gate.min_uar=0.3", "gate.min_war=0.3"]) == 0
    d = decision(stage_dir)
    assert not d["passed"] and d["champion"]["tag"] == champ.tag and d["champion"]["compared"]
    assert any("regresses" in r for r in d["reasons"])
    assert main(["gate.reevaluate_champion=false", "gate.min_uar=0.3", "gate.min_war=0.3", "gate.max_uar_drop=0.06",
                 "gate.max_war_drop=0.03"]) == 0
    assert decision(stage_dir)["passed"]


def test_stage_does_not_compare_across_datasets(stage_dir):
    promote_champion(stage_dir, 0.9, 0.9, dataset="dfew")
    assert main(["gate.reevaluate_champion=false", "gate.min_uar=0.3", "gate.min_war=0.3"]) == 0
    d = decision(stage_dir)
    assert d["passed"] and not d["champion"]["compared"] and "not compared" in d["notes"][0]
