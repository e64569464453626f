"""Evaluation engine: metric functions by hand, multi-view averaging, fold tables, and end-to-end runs."""
import contextlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

import toydata
from s4d.data.loaders import ClipDataset
from s4d.data.manifest import read_manifest
from s4d.io import write_json
from s4d.models import MaskedAutoencoder, S4DClassifier
from s4d.models.checkpoint import save_checkpoint
from s4d.train.evaluate import EvaluateError, evaluate, main
from s4d.train.finetune import loader, predict
from s4d.train.metrics import (class_names, classification_metrics, confusion_matrix, mean_std, per_class_recall,
                               plot_confusion, predictions_table, summarise_folds, uar, war)


# root and joint (the toy data and its S4D run) are shared session fixtures (conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def run_evaluate(root, checkpoint, out, *overrides, prepared=None):
    with contextlib.chdir(root):
        return evaluate(toydata.params(prepared or root / "prepared", *overrides), checkpoint, out)


# ------------------------------------------------------------------------------------------- metrics
def test_class_names_from_label_sets_and_adhoc_keys():
    def manifest(label_set, labels):
        return pd.DataFrame({"label_set": [label_set] * len(labels), "label": labels})

    assert class_names(manifest("dfew7", [0, 6])) == ["happy", "sad", "neutral", "angry", "surprise", "disgust",
                                                       "fear"]
    assert class_names(manifest("folder:calm,tense", [1, 0])) == ["calm", "tense"]
    with pytest.raises(ValueError, match="exactly one label set"):
        class_names(pd.concat([manifest("dfew7", [0]), manifest("rafdb7", [0])]))
    with pytest.raises(ValueError, match="outside label set"):
        class_names(manifest("folder:a,b", [0, 2]))
    with pytest.raises(KeyError, match="unknown label set"):
        class_names(manifest("nope", [0]))


def test_metrics_against_a_hand_computed_example():
    actual = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
    predicted = [0, 0, 1, 1, 0, 2, 2, 2, 1, 0]
    cm = confusion_matrix(actual, predicted, 4)  # class 3 never occurs
    assert cm.tolist() == [[2, 1, 0, 0], [1, 1, 0, 0], [1, 1, 3, 0], [0, 0, 0, 0]]
    recall = per_class_recall(cm)
    assert recall[:3].tolist() == pytest.approx([2 / 3, 1 / 2, 3 / 5]) and np.isnan(recall[3])
    assert uar(cm) == pytest.approx((2 / 3 + 1 / 2 + 3 / 5) / 3)  # absent class 3 is not averaged in
    assert war(cm) == pytest.approx(6 / 10)
    m = classification_metrics(actual, predicted, ["a", "b", "c", "d"])
    assert m["per_class_recall"] == pytest.approx({"a": 2 / 3, "b": 0.5, "c": 0.6, "d": None})
    assert m["n"] == 10 and m["confusion"] == cm.tolist()
    assert predictions_table([0, 2], [1, 2], ["a", "b", "c"]).to_dict("list") == {"actual": ["a", "c"],
                                                                                  "predicted": ["b", "c"]}
    with pytest.raises(ValueError):
        confusion_matrix([0, 4], [0, 0], 4)


def test_confusion_plot_is_written(tmp_path):
    plot_confusion(np.array([[3, 1], [0, 0]]), ["calm", "tense"], tmp_path / "cm.png", title="t")
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*"))  # no temp file left behind


def test_fold_summary_mean_and_std(tmp_path):
    folds = tmp_path / "folds"
    for k, (u, w) in {1: (0.5, 0.6), 2: (0.7, 0.8)}.items():
        write_json(folds / f"fold_{k}.json", {"fold": k, "dataset": "dfew", "dynamic": {"uar": u, "war": w}})
    write_json(folds / "fold_3.json", {"fold": 3, "dataset": "mafw", "dynamic": {"uar": 0.1, "war": 0.1}})
    summary = summarise_folds(folds, "dfew")
    assert summary["folds"] == [1, 2]
    assert summary["dynamic"]["uar"]["mean"] == pytest.approx(0.6)
    assert summary["dynamic"]["uar"]["std"] == pytest.approx(np.sqrt(0.02))  # sample std: (0.1² * 2) / 1
    assert summary["dynamic"]["war"]["values"] == [0.6, 0.8]
    assert summary["skipped"] == [{"file": "fold_3.json", "dataset": "mafw"}]
    assert "static" not in summary
    assert mean_std([0.3]) == {"mean": 0.3, "std": 0.0, "n": 1}


# -------------------------------------------------------------------------------------- multi-view
def test_predict_averages_softmax_over_clips_times_crops(root):
    params = toydata.params(root / "prepared")
    model = S4DClassifier(params.model, 4).eval()
    rows = read_manifest(root / "prepared" / "dynamic.csv").query("split == 'test'").head(3)
    with contextlib.chdir(root):
        dataset = ClipDataset(rows, ".", 32, 8, 1, clips=2, crops=3)
        sizes = []
        hook = model.register_forward_pre_hook(lambda _, args: sizes.append(args[0].shape[0]))
        labels, probs = predict(model, loader(dataset, 2, 0, torch.device("cpu")), torch.device("cpu"))
        hook.remove()
        views = torch.stack([dataset[i][0] for i in range(3)])  # (3, 6, C, T, H, W)
    assert views.shape[1] == 2 * 3 and sizes == [2 * 6, 1 * 6]
    with torch.no_grad():
        expected = model(views.flatten(0, 1)).softmax(-1).view(3, 6, -1).mean(1)
    assert np.allclose(probs, expected.numpy(), atol=1e-5)
    assert labels.tolist() == rows["label"].tolist()


# -------------------------------------------------------------------------------------- end to end
def test_evaluate_the_fine_tuned_model(joint, root):
    out, _ = joint
    ev = root / "runs" / "eval_joint"
    report = run_evaluate(root, out / "model.pt", ev, "evaluate.clips=2", "evaluate.crops=3")
    assert json.loads((ev / "metrics.json").read_text()) == report
    dyn = report["dynamic"]
    assert dyn["n"] == 12 and report["static"]["n"] == 9
    assert dyn["per_class_recall"]["red"] == dyn["per_class_recall"]["green"] == 1.0  # the easy classes
    assert dyn["war"] >= 0.6 and report["static"]["war"] >= 0.8  # chance: 0.25 and 0.33
    assert report["fold"] == 0 and report["dataset"] == "synthetic_video"
    assert report["views"] == {"clips": 2, "crops": 3}

    predictions = pd.read_csv(ev / "predictions.csv")
    assert list(predictions.columns) == ["actual", "predicted"] and len(predictions) == 12
    assert (predictions["actual"] == predictions["predicted"]).mean() == pytest.approx(dyn["war"])
    assert set(predictions["actual"]) == set(toydata.VIDEO_CLASSES)
    assert len(pd.read_csv(ev / "predictions_static.csv")) == 9
    scores = pd.read_csv(ev / "scores.csv")
    assert np.allclose(scores[[f"p_{c}" for c in toydata.VIDEO_CLASSES]].sum(axis=1), 1.0, atol=1e-5)
    for name in ("confusion.png", "confusion_static.png"):
        assert (ev / name).read_bytes()[:4] == b"\x89PNG"

    # Routing: every token of every view is counted once per MoAE layer.
    routing = json.loads((ev / "routing.json").read_text())
    tokens_per_view = (8 // 2) * (32 // 8) ** 2
    assert routing["experts"] == 4
    assert routing["tasks"]["dynamic"]["tokens"] == 12 * 2 * 3 * tokens_per_view
    assert routing["tasks"]["static"]["tokens"] == 9 * 3 * (32 // 8) ** 2
    layer = routing["tasks"]["dynamic"]["layers"][0]
    assert layer["block"] == 1 and sum(layer["top1_share"]) == pytest.approx(1.0)
    assert set(layer["per_class_top1_share"]) == set(toydata.VIDEO_CLASSES)
    paths = routing["tasks"]["dynamic"]["top_paths"]
    assert len(paths[0]["path"]) == 1 and sum(p["share"] for p in paths) == pytest.approx(1.0)

    assert json.loads((ev / "folds" / "fold_0.json").read_text()) == report
    summary = json.loads((ev / "folds_summary.json").read_text())
    assert summary["folds"] == [0] and summary["dynamic"]["uar"]["mean"] == pytest.approx(dyn["uar"])


def test_evaluation_is_deterministic(joint, root):
    out, _ = joint
    first = run_evaluate(root, out / "model.pt", root / "runs" / "eval_a")
    second = run_evaluate(root, out / "model.pt", root / "runs" / "eval_b")
    assert first == second
    for name in ("scores.csv", "scores_static.csv", "routing.json", "predictions.csv"):
        assert (root / "runs" / "eval_a" / name).read_text() == (root / "runs" / "eval_b" / name).read_text()


def test_folds_accumulate_over_runs(root, tmp_path):
    params = toydata.params(root / "prepared")
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, S4DClassifier(params.model, 4, 0))  # untrained, video-only, labels not recorded
    ev = tmp_path / "eval"
    reports = {}
    for fold in (1, 2):
        def set_fold(df, fold=fold):
            return df.assign(fold=fold)
        prepared = toydata.copy_prepared(root, f"prepared_fold{fold}", set_fold, static=False)
        with contextlib.chdir(root):
            main(["--params", str(toydata.REPO / "params.yaml"), "--checkpoint", str(ckpt), "--out", str(ev),
                  *toydata.SMALL_MODEL, *toydata.SMALL_RUN, f"data.prepared_dir={prepared}", "evaluate.clips=1"])
        reports[fold] = json.loads((ev / "metrics.json").read_text())
        assert reports[fold]["fold"] == fold and "static" not in reports[fold]  # no static head
    assert sorted(p.name for p in (ev / "folds").iterdir()) == ["fold_1.json", "fold_2.json"]
    summary = json.loads((ev / "folds_summary.json").read_text())
    assert summary["folds"] == [1, 2]
    values = [reports[1]["dynamic"]["uar"], reports[2]["dynamic"]["uar"]]
    assert summary["dynamic"]["uar"]["mean"] == pytest.approx(np.mean(values))
    assert summary["dynamic"]["uar"]["std"] == pytest.approx(np.std(values, ddof=1))


def test_vanilla_model_routing_is_empty(root, tmp_path):
    params = toydata.params(root / "prepared", "models.tiny.moae.layers=0")
    save_checkpoint(tmp_path / "model.pt", S4DClassifier(params.model, 4, 3))
    with contextlib.chdir(root):
        report = evaluate(params, tmp_path / "model.pt", tmp_path / "eval")
    routing = json.loads((tmp_path / "eval" / "routing.json").read_text())
    assert routing["experts"] == 0 and routing["tasks"]["dynamic"]["layers"] == []
    assert routing["tasks"]["dynamic"]["top_paths"] == [] and "static" in report


def test_evaluate_rejects_mismatched_checkpoints(root, tmp_path):
    params = toydata.params(root / "prepared")
    save_checkpoint(tmp_path / "five.pt", S4DClassifier(params.model, 5))
    with contextlib.chdir(root), pytest.raises(EvaluateError, match="5 classes"):
        evaluate(params, tmp_path / "five.pt", tmp_path / "eval")
    model = S4DClassifier(params.model, 4)
    save_checkpoint(tmp_path / "renamed.pt", model, meta={"labels": {"dynamic": ["a", "b", "c", "d"]}})
    with contextlib.chdir(root), pytest.raises(EvaluateError, match="trained on classes"):
        evaluate(params, tmp_path / "renamed.pt", tmp_path / "eval")
    save_checkpoint(tmp_path / "mae.pt", MaskedAutoencoder(params.model))
    with contextlib.chdir(root), pytest.raises(EvaluateError, match="mae checkpoint"):
        evaluate(params, tmp_path / "mae.pt", tmp_path / "eval")


def test_clips_are_taken_at_the_stride_the_model_was_trained_with(root, tmp_path):
    """A fine-tuned checkpoint carries its params: evaluation samples frames as that model was trained, whatever
    params.yaml says now (the gate re-scores an older champion with the candidate's params); files without
    params (imported published models) use params' stride. Checked against the scores of the same weights
    evaluated with the stride set explicitly."""
    params = toydata.params(root / "prepared", "data.frame_stride=1")
    model = S4DClassifier(params.model, 4, 0)
    save_checkpoint(tmp_path / "bare.pt", model)  # no params recorded
    save_checkpoint(tmp_path / "trained.pt", model, meta={"params": {"data": {"frame_stride": 1}}})
    with contextlib.chdir(root):
        explicit = evaluate(params, tmp_path / "bare.pt", tmp_path / "explicit")
        recorded = evaluate(toydata.params(root / "prepared", "data.frame_stride=2"), tmp_path / "trained.pt",
                            tmp_path / "recorded")
        other = evaluate(toydata.params(root / "prepared", "data.frame_stride=2"), tmp_path / "bare.pt",
                         tmp_path / "other")
    assert recorded["inputs"]["frame_stride"] == 1 and other["inputs"]["frame_stride"] == 2
    scores = [pd.read_csv(tmp_path / name / "scores.csv") for name in ("explicit", "recorded", "other")]
    probs = [s.filter(like="p_").to_numpy() for s in scores]
    assert np.array_equal(probs[0], probs[1])
    assert not np.allclose(probs[0], probs[2])  # the stride matters for these clips
