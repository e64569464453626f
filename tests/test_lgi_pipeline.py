"""The stages with `encoder: lgi` and `pretrain.target: pixels+motion`, as real processes on the micro dataset:
MAE-DFER pretraining -> S4D fine-tuning from it (MoAE on the LGI-Former) -> evaluation."""
import csv
import json
import math

import pytest
import torch

from conftest import MICRO_MODEL, run_module

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # multi-process runs of minutes each: `make test-heavy`

# 4 regions of 2 x 2 x 2 tokens on the micro grid (2, 4, 4).
LGI = MICRO_MODEL + ["models.tiny.encoder=lgi", "models.tiny.lgi.region=[2,2,2]"]
ENV = {"OMP_NUM_THREADS": "1"}


def test_maedfer_pretraining_then_s4d_finetuning_on_lgi(micro_project):
    pretrain = run_module("s4d.train.pretrain", *LGI, "pretrain.target=pixels+motion", "pretrain.batch_size=8",
                          "pretrain.image_batch_size=16", "pretrain.epochs=4", "pretrain.base_lr=0.2",
                          cwd=micro_project, env=ENV)
    assert pretrain.returncode == 0, pretrain.stderr[-3000:]
    with (micro_project / "artifacts/pretrain/log.csv").open() as f:
        log = [(r["modality"], float(r["loss"])) for r in csv.DictReader(f)]
    assert {m for m, _ in log} == {"video", "image"} and all(math.isfinite(loss) for _, loss in log)
    mae = torch.load(micro_project / "artifacts/pretrain/model.pt", weights_only=True)
    assert mae["model_config"]["encoder"] == "lgi" and mae["state_dict"]["encoder.region_tokens"].shape == (4, 64)

    finetune = run_module("s4d.train.finetune", *LGI, "finetune.init=pretrain", "finetune.epochs=2",
                          "finetune.batch_size=4", "finetune.image_batch_size=8", cwd=micro_project, env=ENV)
    assert finetune.returncode == 0, finetune.stderr[-3000:]
    report = (micro_project / "artifacts/finetune/init_report.txt").read_text()
    assert "region_tokens" not in report  # the representatives come from pretraining, not fresh
    assert "moe_layer" in report  # MoAE starts fresh (zero output)

    evaluate = run_module("s4d.train.evaluate", *LGI, cwd=micro_project, env=ENV)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    metrics = json.loads((micro_project / "artifacts/eval/metrics.json").read_text())
    assert metrics["dynamic"]["n"] == 4 and 0.0 <= metrics["dynamic"]["uar"] <= 1.0
    routing = json.loads((micro_project / "artifacts/eval/routing.json").read_text())["tasks"]["dynamic"]
    # 4 clips x 2 views, each 4 regions of 1 representative + 8 tokens: MoAE routes every one of them
    assert routing["tokens"] == 4 * 2 * 4 * (1 + 8)
    assert [layer["block"] for layer in routing["layers"]] == [1]
