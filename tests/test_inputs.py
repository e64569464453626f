"""The one rule for "same inputs, reuse the result" (s4d.train.inputs), checked through every cache that uses
it: pretraining resume, fine-tuning resume, the fold runner, the flow's pretraining reuse and the grid's keys.
A performance knob (loader workers, process count of fine-tuning, checkpoint cadence, launcher timeouts)
keeps every one of them; a setting, the data or the start checkpoint changes every one, and the change is
named by its key."""
import os
import time

import pytest

from conftest import MICRO_MODEL
from s4d.config import load_params

KNOBS = ["data.workers=3", "finetune.nproc_per_node=2", "finetune.checkpoint_every=7", "finetune.keep_last=5",
         "pretrain.checkpoint_every=9", "pretrain.keep_last=4", "launch.timeout_s=30", "launch.grace_s=5",
         "launch.socket_ifname=lo"]
BASE = [*MICRO_MODEL, "finetune.micro_batch=4"]  # a fixed micro-batch: the cut does not follow the process count


def params(*overrides):
    return load_params("params.yaml", [*BASE, *overrides])


def caches(p):
    """Every cache's view of the inputs, by name (the models are built only for their state-dict layout)."""
    from flows.retrain import pretrain_inputs
    from s4d.models import MaskedAutoencoder
    from s4d.models.classifier import S4DClassifier
    from s4d.train.finetune import run_inputs
    from s4d.train.folds import fold_inputs
    from s4d.train.pretrain import resume_settings

    return {"pretrain resume": resume_settings(p, MaskedAutoencoder(p.model), 1),
            "finetune resume": run_inputs(p, S4DClassifier(p.model, 3, 3), 1),
            "fold runner": fold_inputs(p),
            "flow pretraining": pretrain_inputs(p)}


def grid_keys(*overrides):
    from s4d.experiments.grid import build_plan

    plan = build_plan(arms=["ft_s4d"], seeds=1, overrides=[*BASE, "finetune.init=pretrain", *overrides])
    return {"grid pretraining": plan.pretrainings[0].key, "grid run": plan.runs[0].key}


@pytest.fixture
def project(micro_project):
    return micro_project


def test_a_knob_change_reuses_everywhere(project):
    from s4d.train.inputs import changed_inputs

    before, after = caches(params()), caches(params(*KNOBS))
    for name in before:
        assert changed_inputs(before[name], after[name]) == [], name
    assert grid_keys() == grid_keys(*KNOBS)


def test_a_setting_change_recomputes_everywhere_naming_the_key(project):
    from s4d.train.inputs import changed_inputs

    before = caches(params())
    lr = params().finetune.base_lr  # params.yaml's value
    assert lr != 0.05
    ft = caches(params("finetune.base_lr=0.05"))
    for name in ("finetune resume", "fold runner"):
        assert changed_inputs(before[name], ft[name]) == [f"finetune.base_lr: {lr} -> 0.05"], name
    for name in ("pretrain resume", "flow pretraining"):  # fine-tuning settings do not touch pretraining
        assert changed_inputs(before[name], ft[name]) == [], name

    drop = params().models["tiny"].drop_path
    assert drop != 0.2
    model = caches(params("models.tiny.drop_path=0.2"))
    for name in before:
        assert f"models.tiny.drop_path: {drop} -> 0.2" in changed_inputs(before[name], model[name]), name

    pre_lr = params().pretrain.base_lr
    assert pre_lr != 0.1
    pre = caches(params("pretrain.base_lr=0.1"))
    for name in ("pretrain resume", "flow pretraining"):
        assert changed_inputs(before[name], pre[name]) == [f"pretrain.base_lr: {pre_lr} -> 0.1"], name

    keys = grid_keys()
    assert grid_keys("finetune.base_lr=0.05")["grid pretraining"] == keys["grid pretraining"]
    assert grid_keys("finetune.base_lr=0.05")["grid run"] != keys["grid run"]
    changed = grid_keys("pretrain.base_lr=0.1")
    assert changed["grid pretraining"] != keys["grid pretraining"] and changed["grid run"] != keys["grid run"]


def test_pretraining_counts_its_process_count_fine_tuning_does_not(project):
    """Pretraining's batch is per process: its world size sets the global batch (and the ZeRO partitions)."""
    from s4d.train.inputs import changed_inputs, stage_inputs

    one, two = params(), params("pretrain.nproc_per_node=2", "finetune.nproc_per_node=2")
    assert changed_inputs(stage_inputs(one, "pretrain", world_size=1), stage_inputs(two, "pretrain", world_size=2)) \
        == ["pretrain world size: 1 -> 2"]
    assert changed_inputs(stage_inputs(one, "finetune", world_size=1), stage_inputs(two, "finetune", world_size=2)) \
        == []
    # without a fixed micro-batch the cut follows the process count, and with it the random draws
    auto = load_params("params.yaml", MICRO_MODEL)
    assert changed_inputs(stage_inputs(auto, "finetune", world_size=1), stage_inputs(auto, "finetune", world_size=2)) \
        == ["finetune.micro_batch: '0 (batch / 1 ranks)' -> '0 (batch / 2 ranks)'"]


def test_the_same_data_written_again_reuses_other_data_recomputes(project):
    from s4d.train.inputs import changed_inputs

    before, keys = caches(params()), grid_keys()
    for sample in [*(project / "frames").rglob("*.jpg"), *(project / "images").iterdir()]:
        os.utime(sample, ns=(time.time_ns(), time.time_ns()))
    assert grid_keys() == keys
    assert all(changed_inputs(before[n], caches(params())[n]) == [] for n in before)

    frame = sorted((project / "frames").rglob("*.jpg"))[0]
    frame.write_bytes(frame.read_bytes() + b"\0")  # other bytes, other size
    after = caches(params())
    for name in before:
        assert [line.split(":")[0] for line in changed_inputs(before[name], after[name])] == \
            ["data (manifests and sample sizes)"], name
    assert grid_keys()["grid pretraining"] != keys["grid pretraining"]


def test_the_start_checkpoint_counts_by_its_contents(project):
    from s4d.train.inputs import InputsError, changed_inputs, stage_inputs

    start = project / "start.pt"
    start.write_bytes(b"weights")
    a = stage_inputs(params(f"finetune.init={start}"), "finetune")
    start.write_bytes(b"other weights")
    b = stage_inputs(params(f"finetune.init={start}"), "finetune")
    assert [line.split(":")[0] for line in changed_inputs(a, b)] == ["finetune.init"]
    start.unlink()
    with pytest.raises(InputsError, match="no such checkpoint file"):
        stage_inputs(params(f"finetune.init={start}"), "finetune")


def test_auto_precision_is_keyed_by_the_choice_the_machine_makes(project, monkeypatch, tmp_path):
    """`precision: auto` gives bf16 numbers on one CPU and fp32 on another: the key says which, so a result
    made under one choice is not reused under the other; a pinned precision is keyed as written."""
    from s4d import precision
    from s4d.io import write_json
    from s4d.train.inputs import inputs_key, settings, stage_inputs

    monkeypatch.setenv("S4D_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    probe = f"{precision.machine_key()}|matmul"

    def measured(speedup):
        write_json(tmp_path / "cache/precision.json", {probe: {"fp32_s": 1.0, "bf16_s": 1 / speedup,
                                                               "bf16_speedup": speedup}})
        p = params("pretrain.precision=auto", "finetune.precision=auto")
        return settings(p, "pretrain"), stage_inputs(p, "evaluate")

    (fast_pre, fast), (slow_pre, slow) = measured(4.0), measured(1.0)
    assert fast_pre["pretrain.precision"] == fast["finetune.precision"] == "auto (bf16)"
    assert slow_pre["pretrain.precision"] == slow["finetune.precision"] == "auto (fp32)"
    assert inputs_key(fast) != inputs_key(slow)
    pinned = settings(params("finetune.precision=fp32"), "finetune")
    assert pinned["finetune.precision"] == "fp32"
