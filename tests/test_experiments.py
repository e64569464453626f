"""The experiment grid and the report: a real grid on the micro dataset (2 arms that share a pretraining,
plus the arm that is the same run as one of them, x 2 seeds), its resume, and the report's numbers and
verdicts, checked against values computed here from the records."""
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from conftest import MICRO_MODEL, ROOT, run_module, write_micro_dataset
from s4d.data.manifest import read_manifest
from s4d.experiments.grid import GridError, build_plan, parse_shard, run_cost, run_state, shard_runs
from s4d.experiments.report import RECIPE_END, RECIPE_START, ReportError, build_report, pooled_std, verdict

MICRO_GRID = MICRO_MODEL + ["pretrain.epochs=1", "pretrain.batch_size=8", "pretrain.image_batch_size=16",
                            "finetune.epochs=1", "finetune.batch_size=8", "finetune.image_batch_size=8",
                            "evaluate.clips=1", "finetune.init=pretrain",  # the paper's protocol
                            "data.pool.reader=folder", "data.pool.root=pool"]  # the pretrainings read this pool
POOL_CLIPS, POOL_STILLS = 16, 32
ARMS = ["pre_dual", "ft_video", "ft_s4d"]  # ft_video is the same run as pre_dual; both arms use dual pretraining
SEEDS = (0, 1)
ENV = {"OMP_NUM_THREADS": "1"}


def grid(project, *args):
    # Every job is its own launched stage process (s4d.train.launch): 10 of them in the first invocation.
    done = run_module("s4d.experiments.grid", "--arms", *ARMS, "--seeds", str(len(SEEDS)), *args, *MICRO_GRID,
                      cwd=project, env=ENV, timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def trained(stdout):
    """(pretrainings, runs trained, records copied, cached) from the grid's last line."""
    m = re.search(r"(\d+) pretraining\(s\) and (\d+) run\(s\) trained, (\d+) record\(s\) copied, (\d+) cached",
                  stdout)
    return tuple(int(g) for g in m.groups())


def record(project, arm, seed):
    return json.loads((project / "experiments/runs" / arm / f"seed{seed}" / "result.json").read_text())


def outputs(project):
    """mtime of every file the grid wrote."""
    return {p: p.stat().st_mtime_ns for p in (project / "experiments").rglob("*") if p.is_file()}


def write_micro_pool(root):
    """An unlabelled pool (root/pool: frame folders and stills, the `folder` layout) of grey moving squares
    unlike the labelled frames, and its prepared manifests, as prepare writes them with data.pool set."""
    from s4d.data.manifest import write_manifest
    from s4d.data.readers import read_pool_folder

    rng = np.random.default_rng(1)
    for i in range(POOL_CLIPS):
        folder = root / "pool/videos" / f"{i:05d}"
        folder.mkdir(parents=True)
        for t in range(6):
            img = np.full((40, 40, 3), 90, np.uint8) + rng.integers(0, 20, (40, 40, 3), dtype=np.uint8)
            img[10:20, 5 + 4 * t:15 + 4 * t] = 220
            cv2.imwrite(str(folder / f"{t + 1:05d}.jpg"), img)
    (root / "pool/images").mkdir(parents=True)
    for i in range(POOL_STILLS):
        cv2.imwrite(str(root / "pool/images" / f"{i:05d}.jpg"), rng.integers(60, 200, (40, 40, 3), dtype=np.uint8))
    rows = read_pool_folder(root / "pool")
    rows["path"] = "pool/" + rows["path"]
    for modality, name in (("video", "pool_dynamic.csv"), ("image", "pool_static.csv")):
        write_manifest(rows[rows["modality"] == modality], root / "artifacts/prepared" / name)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The micro project after one grid run (the first invocation's output kept for the tests)."""
    root = tmp_path_factory.mktemp("grid")
    write_micro_dataset(root)
    write_micro_pool(root)
    first = grid(root)
    return root, first


# ----------------------------------------------------------------------------------------------- grid
def test_grid_writes_one_record_per_arm_and_seed(project):
    root, first = project
    assert trained(first) == (2, 4, 2, 0)  # 2 pretrainings, pre_dual + ft_s4d per seed; ft_video copied
    for seed in SEEDS:
        for arm in ARMS:
            r = record(root, arm, seed)
            assert (r["arm"], r["seed"], r["budget"]) == (arm, seed, "default")
            assert {f"pretrain.seed={seed}", f"finetune.seed={seed}", "profile=tiny"} <= set(r["overrides"])
            # fp32 on every machine: `auto` would resolve to bf16 on some CPUs under the same record key
            assert {"pretrain.precision=fp32", "finetune.precision=fp32"} <= set(r["overrides"])
            assert r["inputs"]["finetune.precision"] == "fp32"
            # the record carries its pretraining's learning evidence, as the pretraining's summary has it
            evidence = r["pretrain"]["evidence"]
            summary = json.loads((root / r["pretrain"]["dir"] / "summary.json").read_text())
            assert evidence["bf16"] is False and evidence["probe"] == summary["probe"]
            # the MAE saw the unlabelled pool alone (the paper's setting), not the labelled sets
            assert evidence["data"] == {"read": "pool", "videos": POOL_CLIPS, "images": POOL_STILLS}
            assert evidence["baseline_loss"] == summary["baseline_loss"] and set(evidence["final_loss"]) == \
                {"video", "image"}
            assert evidence["training_sample"] == summary["training_sample"] and set(summary["training_sample"]) == \
                {"video", "image"}
            assert 0 <= r["dynamic"]["uar"] <= 1 and 0 <= r["dynamic"]["war"] <= 1
            assert set(r["dynamic"]["per_class_recall"]) == {"c0", "c1", "c2"}
        video, s4d = record(root, "pre_dual", seed), record(root, "ft_s4d", seed)
        assert "finetune.static_share=0" in video["overrides"] and video["static"] is None
        assert set(s4d["static"]) == {"uar", "war", "n", "per_class_recall"}
        routing = json.loads((root / s4d["routing"]).read_text())  # a path relative to the project root
        assert routing["experts"] == 8 and len(routing["tasks"]["dynamic"]["layers"]) == 1


def test_arms_share_one_pretraining_and_the_same_run_is_not_trained_twice(project):
    root, _ = project
    assert sorted(p.relative_to(root).as_posix() for p in (root / "experiments/pretrain").glob("*/seed*")) == \
        ["experiments/pretrain/dual/seed0", "experiments/pretrain/dual/seed1"]
    for seed in SEEDS:
        weights = f"experiments/pretrain/dual/seed{seed}/model.pt"
        assert (root / weights).is_file()
        for arm in ("pre_dual", "ft_s4d"):
            assert f"finetune.init={weights}" in record(root, arm, seed)["overrides"]
            init = (root / "experiments/runs" / arm / f"seed{seed}" / "finetune/init_report.txt").read_text()
            assert init.startswith(f"pretraining checkpoint {weights}")
        copy, owner = record(root, "ft_video", seed), record(root, "pre_dual", seed)
        assert copy["same_as"] == "pre_dual" and copy["dynamic"] == owner["dynamic"]
        assert not (root / "experiments/runs/ft_video" / f"seed{seed}" / "finetune").exists()
    # a finished pretraining keeps its product, not its resume checkpoints
    assert not list((root / "experiments/pretrain").glob("*/*/checkpoints"))


def test_a_second_invocation_trains_nothing_and_changed_params_redo_only_what_they_touch(project):
    root, _ = project
    before = outputs(root)
    for sample in [*(root / "frames").rglob("*"), *(root / "images").iterdir()]:  # the same data written again
        os.utime(sample, ns=(time.time_ns(), time.time_ns()))
    again = grid(root)
    assert trained(again) == (0, 0, 0, 6)
    assert outputs(root) == before

    plan = grid(root, "--dry-run")
    assert "cached" in plan and "to run" not in plan and "stale" not in plan

    # Other fine-tuning params: the run is stale and redone, its pretraining (unaffected) is reused; the
    # video-only pretraining of the new arm is trained on video steps alone.
    changed = run_module("s4d.experiments.grid", "--arms", "pre_video", "ft_s4d", "--seeds", "1", *MICRO_GRID,
                         "finetune.label_smoothing=0.2", cwd=root, env=ENV, timeout=1200)
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert trained(changed.stdout) == (1, 2, 0, 0)
    assert "ft_s4d seed0: the record is from other inputs (finetune.label_smoothing: 0.1 -> 0.2)" in changed.stdout
    pretrained = root / "experiments/pretrain/dual/seed0/model.pt"
    assert pretrained.stat().st_mtime_ns == before[pretrained]
    assert "finetune.label_smoothing=0.2" in record(root, "ft_s4d", 0)["overrides"]
    log = (root / "experiments/pretrain/video/seed0/log.csv").read_text().splitlines()[1:]
    assert log and all(",video," in line for line in log)


def test_grid_rejects_an_unknown_arm_and_missing_prepared_data(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    bad = run_module("s4d.experiments.grid", "--arms", "nope", cwd=tmp_path)
    assert bad.returncode == 2 and "nope" in bad.stderr
    missing = run_module("s4d.experiments.grid", "--dry-run", cwd=tmp_path)
    assert missing.returncode == 2 and "prepared manifests missing" in missing.stderr


def test_shards_deal_every_run_once_and_keep_copies_with_their_owner(project, monkeypatch):
    root, _ = project
    monkeypatch.chdir(root)
    plan = build_plan(arms=ARMS, seeds=len(SEEDS), overrides=[*MICRO_GRID, "finetune.label_smoothing=0.3"])
    assert {run_state(r) for r in plan.runs} == {"stale"}  # other params than the cached runs'
    for shards in (1, 2, 3):
        dealt = [shard_runs(plan, k, shards) for k in range(shards)]
        assert sorted(id(r) for part in dealt for r in part) == sorted(id(r) for r in plan.runs)
        for part in dealt:
            assert [r for r in plan.runs if r in part] == part  # plan order kept
            for run in part:
                assert run.same_as is None or run.same_as in part
        cost = [sum(run_cost(r) for r in part if r.same_as is None) for part in dealt]
        assert max(cost) - min(cost) <= max(map(run_cost, plan.runs))  # one run apart at most
    for bad in ("0/2", "3/2", "2", "a/b"):
        with pytest.raises(GridError, match="--shard"):
            parse_shard(bad)


def test_finetuning_arms_start_where_params_say(project, monkeypatch):
    """With finetune.init=scratch (the tiny default) the fine-tuning arms need no pretraining and ft_video
    is the same run as pre_none; a checkpoint file is keyed by its contents."""
    root, _ = project
    monkeypatch.chdir(root)
    scratch = [o for o in MICRO_GRID if not o.startswith("finetune.init")] + ["finetune.init=scratch"]
    plan = build_plan(arms=["ft_video", "ft_s4d"], seeds=1, overrides=scratch)
    runs = {r.arm.name: r for r in plan.runs}
    assert plan.pretrainings == [] and set(runs) == {"pre_none", "ft_video", "ft_s4d"}
    assert runs["ft_video"].same_as is runs["pre_none"] and not runs["pre_none"].requested
    assert runs["ft_s4d"].init == "scratch" and runs["ft_s4d"].pretrain is None
    paper = {r.arm.name: r for r in build_plan(arms=["ft_s4d"], seeds=1, overrides=MICRO_GRID).runs}
    assert paper["ft_s4d"].init == "pretrain:dual" and paper["ft_s4d"].key != runs["ft_s4d"].key

    weights = root / "experiments/pretrain/dual/seed0/model.pt"
    ckpt = root / "start.pt"
    ckpt.write_bytes(weights.read_bytes())
    from_file = scratch[:-1] + [f"finetune.init={ckpt}"]
    first = build_plan(arms=["ft_s4d"], seeds=1, overrides=from_file).runs[0]
    ckpt.write_bytes(weights.read_bytes() + b"other")
    assert build_plan(arms=["ft_s4d"], seeds=1, overrides=from_file).runs[0].key != first.key
    ckpt.unlink()
    with pytest.raises(GridError, match="no such checkpoint"):
        build_plan(arms=["ft_s4d"], seeds=1, overrides=from_file)


@pytest.mark.heavy  # two grid processes, each launching stage processes: about 90 s of 2 cores
def test_two_shard_processes_make_the_shared_pretraining_once(tmp_path):
    """Two real shard processes at once: pre_dual (video-only) and ft_s4d (joint) go to different shards,
    both need the dual pretraining of seed 0; one makes it, the other waits on the lock and reuses it."""
    write_micro_dataset(tmp_path)
    write_micro_pool(tmp_path)  # the pretrainings read only the pool
    env = {**os.environ, "PYTHONPATH": str(ROOT), **ENV}
    procs = [subprocess.Popen([sys.executable, "-m", "s4d.experiments.grid", "--arms", *ARMS, "--seeds", "1",
                               "--shard", f"{k}/2", *MICRO_GRID], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k in (1, 2)]
    outs = [p.communicate(timeout=1200) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-2000:] + err[-3000:]
    counts = [trained(out) for out, _ in outs]
    assert sum(c[0] for c in counts) == 1  # one pretraining between them
    assert [c[1] for c in counts] == [1, 1] and sum(c[2] for c in counts) == 1
    for arm in ARMS:
        assert record(tmp_path, arm, 0)["dynamic"]["n"] > 0
    assert list((tmp_path / "experiments/pretrain").glob("*/seed*")) == [tmp_path / "experiments/pretrain/dual/seed0"]


# --------------------------------------------------------------------------------------------- report
def test_report_table_matches_the_records(project, tmp_path, monkeypatch):
    root, _ = project
    monkeypatch.chdir(root)  # records name their routing files relative to the project root
    summary = build_report(out_dir=tmp_path)
    readme = (tmp_path / "README.md").read_text()
    for arm in ARMS:
        records = [json.loads(p.read_text()) for p in sorted((root / "experiments/runs" / arm).glob("seed*/result.json"))]
        row = summary["table"][arm]
        assert row["n"] == len(records) == 2
        for task in ("dynamic", "static"):
            if records[0][task] is None:
                assert row[task] is None
                continue
            for metric in ("uar", "war"):
                v = [r[task][metric] for r in records]
                stats = row[task][metric]
                assert stats["mean"] == pytest.approx(statistics.mean(v))
                assert stats["std"] == pytest.approx(statistics.stdev(v))
                assert stats["n"] == 2
        dyn = row["dynamic"]
        line = next(line for line in readme.splitlines() if line.startswith(f"| {arm}"))
        expected = [f"{100 * statistics.mean(v):.1f} ± {100 * statistics.stdev(v):.1f}"
                    for v in ([r["dynamic"][m] for r in records] for m in ("uar", "war"))]
        assert line.split(" | ")[4:6] == expected, (line, dyn)
        assert line.split(" | ")[2] == "dual MAE" == row["init"][0]  # all three arms start from the dual MAE
    for png in ("results.png", "routing_usage.png", "routing_paths.png", "routing_classes.png", "sfer_dfer.png"):
        assert (tmp_path / png).stat().st_size > 5000, png
        assert f"({png})" in readme
    # the pretrainings' learning evidence per arm, from the pretraining summaries themselves
    for arm in ("pre_dual", "ft_s4d"):
        row = summary["evidence"][arm]
        pretrained = [json.loads((root / record(root, arm, seed)["pretrain"]["dir"] / "summary.json").read_text())
                      for seed in SEEDS]
        assert row["kind"] == "dual" and row["n"] == 2
        assert row["data"] == f"pool: {POOL_CLIPS} clips, {POOL_STILLS} stills"
        for modality in ("video", "image"):
            probes = [s["probe"][modality]["pretrained"]["val_uar"] for s in pretrained]
            assert row[modality]["probe_pretrained"]["mean"] == pytest.approx(statistics.mean(probes))
            sampled = [s["training_sample"][modality] for s in pretrained]
            assert row[modality]["sample_mae_loss"]["mean"] == pytest.approx(statistics.mean(x["mae_loss"] for x in sampled))
            assert row[modality]["sample_baseline_loss"]["std"] == pytest.approx(
                statistics.stdev(x["baseline_loss"] for x in sampled))
            assert row[modality]["mae_loss"]["mean"] == pytest.approx(
                statistics.mean(s["mae_loss_on_probe_sample"][modality] for s in pretrained))
            assert row[modality]["baseline_loss"]["std"] == pytest.approx(
                statistics.stdev(s["baseline_loss"][modality] for s in pretrained))
            assert (f"| {arm} | dual | {row['data']} | 2 | {modality} | "
                    f"{row[modality]['sample_mae_loss']['mean']:.3f} ± ") in readme
    assert summary["routing"]["seeds"] == [0, 1]
    routing = json.loads((root / record(root, "ft_s4d", 0)["routing"]).read_text())
    assert summary["routing"]["paths"][0]["top"] == routing["tasks"]["dynamic"]["top_paths"][:5]
    assert RECIPE_START in readme and RECIPE_END in readme


def test_report_keeps_the_hand_written_blocks(project, tmp_path):
    root, _ = project
    build_report(root / "experiments/runs", tmp_path)
    readme = tmp_path / "README.md"
    recipe = f"{RECIPE_START}\n## Recipe\n\nrun `base` on DFEW ...\n{RECIPE_END}"
    discussion = "<!-- discussion -->\n## Discussion\n\nseeds are noisy\n<!-- /discussion -->"
    text = readme.read_text().replace(f"{RECIPE_START}\n{RECIPE_END}", recipe)
    readme.write_text(text.replace("<!-- discussion -->\n<!-- /discussion -->", discussion))
    build_report(root / "experiments/runs", tmp_path)
    text = readme.read_text()
    assert recipe in text and discussion in text
    assert text.index("## Claims") < text.index(discussion) < text.index("## Routing analysis") < text.index(recipe)


def test_report_refuses_no_records_and_a_broken_record_and_keeps_the_last_report(project, tmp_path):
    root, _ = project
    out = tmp_path / "reports"
    build_report(root / "experiments/runs", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    empty = run_module("s4d.experiments.report", cwd=tmp_path)
    assert empty.returncode == 2 and "no run records" in empty.stderr and "experiments.grid" in empty.stderr
    assert "Traceback" not in empty.stderr
    runs = tmp_path / "runs"
    shutil.copytree(root / "experiments/runs", runs)
    broken = runs / "ft_s4d/seed0/result.json"
    broken.write_text('{"arm": "ft_s4d", ')
    with pytest.raises(ReportError, match=r"ft_s4d/seed0/result.json: not a run record"):
        build_report(runs, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ------------------------------------------------------------------------------------------- verdicts
def test_verdict_rule():
    win = verdict([0.50, 0.52, 0.54], [0.30, 0.32, 0.34])
    assert win.reproduces and win.diff == pytest.approx(20.0) and win.pooled_std == pytest.approx(2.0)
    assert win.se == pytest.approx(2.0 * math.sqrt(2 / 3))
    loss = verdict([0.30, 0.32, 0.34], [0.50, 0.52, 0.54])
    assert not loss.reproduces and loss.shortfall == pytest.approx(20.0)
    assert loss.text().startswith("does not reproduce, by 20.0 points")
    noise = verdict([0.40, 0.50, 0.60], [0.38, 0.48, 0.58])  # +2 points inside a 10-point spread
    assert not noise.reproduces and noise.shortfall == pytest.approx(8.0)
    assert pooled_std([0.1, 0.3], [0.2, 0.2, 0.2, 0.2]) == pytest.approx(math.sqrt(0.02 / 4))
    assert verdict([0.5], []) is None
    single = verdict([0.5, 0.52], [0.4])  # one seed on one side: no seed noise to judge against
    assert not single.judged and not single.reproduces and single.diff == pytest.approx(11.0)
    assert single.text() == "not judged yet (d +11.0 from 2/1 seeds; a verdict needs 2 seeds per arm)"
    assert win.judged and loss.judged


def write_record(runs, arm, seed, dynamic, static=None):
    folder = runs / arm / f"seed{seed}"
    folder.mkdir(parents=True)
    rec = {"arm": arm, "seed": seed, "budget": "default", "same_as": None, "routing": None,
           "dynamic": {"uar": dynamic["uar"], "war": dynamic["war"], "n": 10,
                       "per_class_recall": dynamic.get("recall", {})},
           "static": None if static is None else {"uar": 0.5, "war": 0.5, "n": 10, "per_class_recall": static}}
    (folder / "result.json").write_text(json.dumps(rec))


def test_claims_on_hand_made_records(tmp_path):
    runs = tmp_path / "runs"
    # dual-modal clearly above video-only MAE; video-only MAE clearly below no pretraining
    for seed, (dual, video, none) in enumerate([(0.60, 0.40, 0.50), (0.62, 0.41, 0.52), (0.61, 0.42, 0.51)]):
        write_record(runs, "pre_dual", seed, {"uar": dual, "war": dual})
        write_record(runs, "pre_video", seed, {"uar": video, "war": video})
        write_record(runs, "pre_none", seed, {"uar": none, "war": none + 0.2})
    summary = build_report(runs, tmp_path / "out")
    claims = {(c["better"], c["worse"]): c for c in summary["claims"]}
    dual = claims["pre_dual", "pre_video"]
    assert dual["uar"]["reproduces"] and dual["uar"]["diff"] == pytest.approx(20.0)
    assert dual["uar"]["text"].startswith("reproduces")
    video = claims["pre_video", "pre_none"]
    assert not video["uar"]["reproduces"] and video["uar"]["shortfall"] == pytest.approx(10.0)
    assert video["war"]["shortfall"] == pytest.approx(30.0)
    readme = (tmp_path / "out/README.md").read_text()
    assert "UAR reproduces (d +20.0, s 1.0, SE of d 0.8)" in readme  # 1.0 * sqrt(1/3 + 1/3)
    # resolution of the test split (n = 10 per record): one clip 10 points; binomial SE at the mean WAR of
    # both arms, p = (0.60 + 0.62 + 0.61 + 0.40 + 0.41 + 0.42) / 6 = 0.51: 100 * sqrt(0.51 * 0.49 / 10)
    assert dual["resolution"]["test_n"] == 10 and dual["resolution"]["clip_points"] == pytest.approx(10.0)
    assert dual["resolution"]["binomial_se"] == pytest.approx(15.808, abs=1e-3)
    assert "test split 10 clips (one clip 10.00 points of WAR, binomial SE of one run's WAR 15.8 points)" in readme
    assert "UAR does not reproduce, by 10.0 points" in readme
    assert claims["ft_s4d", "ft_video"]["uar"] is None and "not measured" in readme


def test_per_class_transfer_on_hand_made_records(tmp_path):
    runs = tmp_path / "runs"
    static = {"happiness": 0.9, "sadness": 0.5, "anger": 0.2, "neutral": 0.7}  # RAF-DB words
    s4d = {"happy": 0.8, "sad": 0.5, "angry": 0.3, "neutral": 0.4}  # DFEW words
    video = {"happy": 0.6, "sad": 0.45, "angry": 0.3, "neutral": 0.35}
    for seed in (0, 1):
        write_record(runs, "ft_s4d", seed, {"uar": 0.5, "war": 0.5, "recall": s4d}, static)
        write_record(runs, "ft_video", seed, {"uar": 0.45, "war": 0.45, "recall": video})
    summary = build_report(runs, tmp_path / "out")
    rows = {r["class"]: r for r in summary["per_class"]["classes"]}
    assert set(rows) == {"happy", "sad", "angry", "neutral"}
    assert rows["happy"]["gain"] == pytest.approx(0.2)
    names = sorted(rows)
    x = [static[{"happy": "happiness", "sad": "sadness", "angry": "anger"}.get(n, n)] for n in names]
    assert summary["per_class"]["r_static_dynamic"] == pytest.approx(np.corrcoef(x, [s4d[n] for n in names])[0, 1])
    assert summary["per_class"]["r_static_gain"] == pytest.approx(
        np.corrcoef(x, [s4d[n] - video[n] for n in names])[0, 1])
    assert (tmp_path / "out/sfer_dfer.png").stat().st_size > 5000
    assert not (tmp_path / "out/routing_usage.png").exists()  # no routing files: no routing plot


def test_method_family_arms_pretrain_and_finetune_the_lgi_former(project, monkeypatch):
    """MAE-DFER's arm pretrains the LGI-Former with the motion target on videos and fine-tunes that model
    video-only; S4D-on-LGI pretrains dual-modal and fine-tunes jointly; both fine-tunes start from their MAE."""
    root, _ = project
    monkeypatch.chdir(root)
    plan = build_plan(arms=["maedfer", "s4d_lgi"], seeds=1, overrides=list(MICRO_GRID))
    runs = {run.arm.name: run for run in plan.runs}
    maedfer, s4d_lgi = runs["maedfer"], runs["s4d_lgi"]
    assert maedfer.pretrain.params.pretrain.target == "pixels+motion"
    assert maedfer.pretrain.params.pretrain.image_step_share == 0
    assert s4d_lgi.pretrain.params.pretrain.target == "pixels"
    for run in (maedfer, s4d_lgi):
        assert run.params.model.encoder == run.pretrain.params.model.encoder == "lgi"
        assert run.params.finetune.init == str(run.pretrain.dir / "model.pt")
    assert maedfer.params.finetune.static_share == 0 and s4d_lgi.params.finetune.static_share > 0


def test_pretrainings_are_keyed_by_the_pool_and_scratch_fine_tunes_are_not(project, monkeypatch):
    """Every pretraining reads the pool (params' own here, data.pool set): another pool redoes the
    pretrainings and the runs that start from them, never a fine-tune from scratch."""
    root, _ = project
    monkeypatch.chdir(root)
    scratch = [o for o in MICRO_GRID if not o.startswith("finetune.init")] + ["finetune.init=scratch"]

    def keys():
        plan = build_plan(arms=["pre_none", "pre_dual"], seeds=1, overrides=scratch)
        assert plan.pool == ("pretrain.data=pool",)
        assert [j.params.pretrain.data for j in plan.pretrainings] == ["pool"]
        return {r.arm.name: r.key for r in plan.runs} | {"pretraining": plan.pretrainings[0].key}

    before = keys()
    manifest = root / "artifacts/prepared/pool_dynamic.csv"
    saved = manifest.read_bytes()
    try:
        manifest.write_bytes(b"\n".join(saved.rstrip(b"\n").split(b"\n")[:-1]) + b"\n")  # one pool clip fewer
        after = keys()
    finally:
        manifest.write_bytes(saved)
    assert after["pre_none"] == before["pre_none"]
    assert after["pretraining"] != before["pretraining"] and after["pre_dual"] != before["pre_dual"]
    assert keys() == before


def test_the_embedded_pool_is_rendered_and_prepared_for_the_pretrainings(tmp_path, monkeypatch):
    """On the embedded data without a pool in params (make repro's default), the grid renders the generator's
    pool of the same synthetic config into experiments/synthetic and prepares it beside byte-identical copies
    of the labelled manifests; its people are new and no label is written; a second call renders nothing."""
    from s4d.config import load_params
    from s4d.data.prepare import prepare
    from s4d.data.synthetic.generate import generate
    from s4d.experiments.grid import EMBEDDED_POOL, POOL_PREPARED, prepare_pool

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    micro = ["synthetic.video_identities=5", "synthetic.clips_per_identity=2", "synthetic.num_frames=4",
             "synthetic.frame_size=48", "synthetic.image_size=40", "synthetic.image_identity_ratio=2.0",
             "synthetic.test_identities=0", "synthetic.image_test_identities=0", "data.workers=1"]
    base = load_params("params.yaml", micro)
    assert base.data.pool.reader == "none" and base.synthetic.pool_identity_ratio == 0  # what make repro renders
    generate(base.synthetic, workers=1, progress=False)  # the generate and prepare stages, as dvc repro runs them
    prepare(base)
    scratch_key = build_plan(arms=["pre_none"], seeds=1, overrides=micro).runs[0].key
    plan = build_plan(arms=["pre_dual"], seeds=1, overrides=micro)
    assert plan.pool == EMBEDDED_POOL
    job = plan.pretrainings[0]
    assert (job.params.pretrain.data, job.params.data.pool.reader) == ("pool", "synthetic_pool")

    prepare_pool(base, "params.yaml", plan.common)
    prepared = tmp_path / POOL_PREPARED
    for name in ("dynamic.csv", "static.csv"):
        assert (prepared / name).read_bytes() == (tmp_path / "artifacts/prepared" / name).read_bytes()
    clips, stills = (read_manifest(prepared / n) for n in ("pool_dynamic.csv", "pool_static.csv"))
    # 1.5 new people per labelled one: 5 video + 10 image identities -> 22 (round 22.5), one clip and still each
    assert (len(clips), len(stills)) == (22, 22)
    assert set(clips["label"]) == set(stills["label"]) == {-1}
    labelled = {g for n in ("dynamic.csv", "static.csv") for g in read_manifest(prepared / n)["group"]}
    assert len(labelled) == 15 and not labelled & (set(clips["group"]) | set(stills["group"]))
    assert all(p.startswith("experiments/synthetic/pool/") for p in [*clips["path"], *stills["path"]])

    again = build_plan(arms=["pre_dual", "pre_none"], seeds=1, overrides=micro)
    assert again.pretrainings[0].key != job.key  # keyed with the pool it reads now
    assert {r.arm.name: r.key for r in again.runs}["pre_none"] == scratch_key
    def written():
        return {p: p.stat().st_mtime_ns for p in (tmp_path / "experiments").rglob("*") if p.name != ".pool.lock"}
    stamp = written()
    prepare_pool(base, "params.yaml", plan.common)
    assert written() == stamp


def test_pretraining_arms_on_other_data_need_a_pool_of_their_own(micro_project):
    """Without data.pool, only the embedded data have a pool the grid can render: on another dataset the
    pretraining arms are refused by name, while arms that need no pretraining plan as before."""
    other = [o for o in MICRO_GRID if not o.startswith("data.pool")] + ["data.dynamic.reader=folder"]
    with pytest.raises(GridError, match="arm pre_dual: .* data.dynamic.reader is folder: set data.pool"):
        build_plan(arms=["pre_dual"], seeds=1, overrides=other)
    scratch = [o for o in other if not o.startswith("finetune.init")] + ["finetune.init=scratch"]
    plan = build_plan(arms=["pre_none"], seeds=1, overrides=scratch)
    assert plan.pretrainings == [] and plan.pool == ()
