"""The Prefect flow's training jobs go through the project's launcher: fine-tuning and evaluation with
finetune.nproc_per_node=2 run as 2-process jobs, and `folds=[...]` runs the fold runner (s4d.train.folds)."""
import json
import os

import pytest
from omegaconf import OmegaConf

from conftest import MICRO_MODEL, ROOT, write_micro_dataset
from test_launch_folds import write_dfew_micro

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # multi-process runs of minutes each: `make test-heavy`

TWO = ["finetune.nproc_per_node=2", "data.workers=1", "finetune.micro_batch=4", "models.tiny.stem=linear"]


@pytest.fixture
def chdir(monkeypatch):
    def go(path):
        monkeypatch.chdir(path)
        (path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    return go


def test_flow_finetune_and_evaluate_with_two_processes_go_through_the_launcher(harness, tmp_path, chdir):
    from prefect import flow

    from flows.retrain import evaluate_job, finetune_job
    from s4d.config import load_params, to_dict

    write_micro_dataset(tmp_path)
    chdir(tmp_path)
    resolved = tmp_path / "resolved.yaml"  # what the flow's check-inputs task writes
    OmegaConf.save(OmegaConf.create(to_dict(load_params("params.yaml", [*MICRO_MODEL, *TWO,
                                                                        "finetune.epochs=2"]))), resolved)

    @flow
    def train_and_evaluate(params_file: str):
        return finetune_job(params_file, None), evaluate_job(params_file)

    tuned, metrics = train_and_evaluate(str(resolved))
    summary = json.loads((tmp_path / "artifacts/finetune/summary.json").read_text())
    assert summary["world_size"] == 2 and tuned["best_epoch"] == summary["best_epoch"]  # 2 launched ranks
    written = json.loads((tmp_path / "artifacts/eval/metrics.json").read_text())
    assert metrics["dynamic"]["uar"] == written["dynamic"]["uar"] and metrics["dynamic"]["n"] == 4


def test_flow_with_folds_runs_the_fold_runner(harness, tmp_path, chdir):
    from flows.retrain import retrain

    write_dfew_micro(tmp_path)
    chdir(tmp_path)
    overrides = [*MICRO_MODEL, *TWO, "finetune.epochs=1", "pretrain.epochs=1", "pretrain.batch_size=4",
                 "pretrain.image_batch_size=8", "data.dynamic.root=dfew", "data.static.reader=folder",
                 "data.static.root=stills", "validate.min_class_share=0"]  # 3 of DFEW's 7 classes
    state = retrain(dataset="dfew", overrides=overrides, folds=[1, 2], build_bento=False, retries=0,
                    return_state=True)
    assert state.is_completed(), state.message
    record = state.result()
    assert record["status"] == "completed: folds" and "gate" not in record
    summary = json.loads((tmp_path / "artifacts/folds/summary.json").read_text())
    assert record["folds"] == summary and summary["folds"] == [1, 2] and summary["dataset"] == "dfew"
    for fold in (1, 2):  # each fold fine-tuned data-parallel, as params say
        tuned = json.loads((tmp_path / f"artifacts/folds/fold_{fold}/finetune/summary.json").read_text())
        assert tuned["world_size"] == 2
    assert os.path.isfile(tmp_path / "artifacts/pretrain/model.pt")
