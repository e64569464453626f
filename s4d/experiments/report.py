"""The reproduction report: reads the grid's run records (experiments/runs/<arm>/seed<k>/result.json) and
writes reports/README.md, reports/summary.json (every number of the README) and the plots beside them.

    python -m s4d.experiments.report

Sections: UAR/WAR per study (mean +- std over seeds), one verdict per paper claim and per ablation
observation (the rule is written into the report), the routing analysis of the S4D runs (expert usage per
task and MoAE layer, the most frequent expert paths) and the per-class SFER-DFER transfer analysis.
The hand-written blocks of an existing README, between `<!-- discussion -->` and `<!-- /discussion -->`
(after the claims) and between `<!-- recipe -->` and `<!-- /recipe -->` (at the end), are kept as they are.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from s4d.data.labels import canonical_name
from s4d.experiments.grid import ARMS, RESULT, RUNS_DIR
from s4d.io import read_json, save_figure, write_json, write_text
from s4d.train.metrics import mean_std

REPORTS = Path("reports")
MIN_SEEDS = 2  # per arm, for a verdict: one seed has no seed noise to compare a difference with
HAND_WRITTEN = ("discussion", "recipe")  # README blocks that the generator keeps
RECIPE_START, RECIPE_END = "<!-- recipe -->", "<!-- /recipe -->"
TASKS = ("dynamic", "static")
METRICS = ("uar", "war")
S4D_ARM = "ft_s4d"
VIDEO_ARM = "ft_video"
STUDY_TITLES = {"pretraining": "Pretraining (each followed by the same video-only fine-tune)",
                "finetuning": "Fine-tuning: video-only vs vanilla multi-task vs S4D",
                "experts": "MoAE ablation: number of experts",
                "top_k": "MoAE ablation: experts per token (top-k)",
                "layers": "MoAE ablation: number of MoAE layers",
                "family": "Method families: MAE-DFER (LGI-Former + motion target) and S4D on the LGI-Former"}
FIGURES = ("results.png", "routing_usage.png", "routing_paths.png", "routing_classes.png", "sfer_dfer.png")
TOP_PATHS = 5


@dataclass(frozen=True)
class Claim:
    better: str  # arm expected to score higher
    worse: str
    text: str
    paper: bool  # a claim of the paper; False: an ablation observation


CLAIMS: tuple[Claim, ...] = (
    Claim("pre_dual", "pre_video", "Dual-modal MAE pretraining (images + videos) beats video-only MAE pretraining, "
          "with the same video-only fine-tune", True),
    Claim("pre_video", "pre_none", "Video-only MAE pretraining beats no pretraining, with the same video-only "
          "fine-tune", True),
    Claim("ft_s4d", "ft_video", "MoAE joint fine-tuning (S4D) beats video-only fine-tuning", True),
    Claim("ft_s4d", "ft_vanilla", "MoAE joint fine-tuning (S4D) beats vanilla multi-task fine-tuning", True),
    Claim("ft_video", "ft_vanilla", "Vanilla multi-task fine-tuning (static + dynamic, no MoAE) suffers negative "
          "transfer: it scores below video-only fine-tuning", True),
    Claim("experts4", "experts2", "More experts: 4 beat 2", False),
    Claim("experts8", "experts4", "More experts: 8 beat 4", False),
    Claim("top2", "top1", "Top-2 routing beats top-1", False),
    Claim("layers3", "layers1", "More MoAE layers: 3 beat 1", False),
    Claim("layers6", "layers3", "More MoAE layers: 6 beat 3", False),
)

RULE = ("A claim *reproduces* on a metric when the mean difference over seeds d = mean(expected better arm) - "
        "mean(other arm) is > 0 and larger than the pooled standard deviation of the two arms' seed values, "
        "s = sqrt(((n1 - 1) s1^2 + (n2 - 1) s2^2) / (n1 + n2 - 2)); an arm with one seed has no s, and its "
        "claims are *not judged yet*. Otherwise it "
        "*does not reproduce, by X points*: X = -d when the order is reversed (d <= 0), else X = s - d (how far "
        "the gain stays inside the seed noise). Differences are in percentage points of the dynamic test metric. "
        "Each claim also gives the standard error of d over seeds, s * sqrt(1/n1 + 1/n2), and what the test split "
        "resolves in one run.")


# ---------------------------------------------------------------------------------------------- data
class ReportError(ValueError):
    """No records to report on, or a record that cannot be read; reported without a traceback."""


def load_records(runs_dir: Path = RUNS_DIR) -> list[dict]:
    """Every run record under runs_dir; none at all is an error (a report of empty tables would replace
    the last real one)."""
    paths = sorted(Path(runs_dir).glob(f"*/seed*/{RESULT}"))
    if not paths:
        raise ReportError(f"no run records (<arm>/seed<k>/{RESULT}) under {runs_dir}: run "
                          "`python -m s4d.experiments.grid` first")
    records = []
    for path in paths:
        try:
            records.append(read_json(path))
        except ValueError as e:
            raise ReportError(f"{path}: not a run record ({e}); delete it and run the grid again to redo "
                              "that run") from None
    return records


def by_arm(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in sorted(records, key=lambda r: r["seed"]):
        out.setdefault(r["arm"], []).append(r)
    return out


def values(records: list[dict], task: str, metric: str) -> list[float]:
    return [r[task][metric] for r in records if r.get(task)]


def start(record: dict) -> str:
    """What a run was fine-tuned from, in words (records from before `init` was stored: from `pretrain`)."""
    init = record.get("init") or (f"pretrain:{record['pretrain']['kind']}" if record.get("pretrain") else "scratch")
    if init.startswith("pretrain:"):
        return f"{init.split(':', 1)[1]} MAE"
    return init if init == "scratch" else Path(init).name


def results_table(arms: dict[str, list[dict]]) -> dict:
    """Per arm: seeds, n, start (init) and mean/std/n of each task's UAR and WAR (None for a task the arm
    has no head for)."""
    table = {}
    for name, records in arms.items():
        row: dict = {"seeds": [r["seed"] for r in records], "n": len(records),
                     "same_as": sorted({r["same_as"] for r in records if r.get("same_as")}),
                     "init": sorted({start(r) for r in records})}
        for task in TASKS:
            row[task] = ({m: mean_std(values(records, task, m)) for m in METRICS}
                         if values(records, task, "uar") else None)
        table[name] = row
    return table


# -------------------------------------------------------------------------------------------- verdict
def pooled_std(a: list[float], b: list[float]) -> float:
    dof = len(a) + len(b) - 2
    if dof <= 0:
        return 0.0
    ss = sum((x - np.mean(a)) ** 2 for x in a) + sum((x - np.mean(b)) ** 2 for x in b)
    return float(math.sqrt(ss / dof))


@dataclass
class Verdict:
    reproduces: bool
    diff: float  # percentage points, better - worse
    pooled_std: float  # percentage points
    shortfall: float  # X of "does not reproduce, by X points"; 0 when it reproduces
    n: tuple[int, int]
    se: float  # standard error of d from the seed noise, s * sqrt(1/n1 + 1/n2), points
    judged: bool = True  # False: fewer than MIN_SEEDS seeds in an arm, no seed noise to judge d against

    def text(self) -> str:
        numbers = f"d {self.diff:+.1f}, s {self.pooled_std:.1f}, SE of d {self.se:.1f}"
        if not self.judged:
            return f"not judged yet (d {self.diff:+.1f} from {self.n[0]}/{self.n[1]} seeds; a verdict needs " \
                   f"{MIN_SEEDS} seeds per arm)"
        if self.reproduces:
            return f"reproduces ({numbers})"
        return f"does not reproduce, by {self.shortfall:.1f} points ({numbers})"


def verdict(better: list[float], worse: list[float]) -> Verdict | None:
    """The rule of RULE on two arms' seed values (fractions); None when either arm has no values."""
    if not better or not worse:
        return None
    d = 100 * (float(np.mean(better)) - float(np.mean(worse)))
    s = 100 * pooled_std(better, worse)
    n = (len(better), len(worse))
    se = s * math.sqrt(1 / n[0] + 1 / n[1])
    if min(n) < MIN_SEEDS:
        return Verdict(False, d, s, 0.0, n, se, judged=False)
    ok = d > 0 and d > s
    return Verdict(ok, d, s, 0.0 if ok else (abs(d) if d <= 0 else s - d), n, se)


def split_resolution(records: list[dict]) -> dict | None:
    """What one run's dynamic test WAR can resolve: test clips, one clip in points, and the binomial standard
    error sqrt(p (1 - p) / n) at the runs' mean WAR p (which clips a model gets right, on top of the seeds)."""
    rows = [r["dynamic"] for r in records if r.get("dynamic")]
    if not rows:
        return None
    n = min(row["n"] for row in rows)
    p = float(np.mean([row["war"] for row in rows]))
    return {"test_n": n, "clip_points": 100 / n, "binomial_se": 100 * math.sqrt(p * (1 - p) / n)}


def judge(arms: dict[str, list[dict]]) -> list[dict]:
    out = []
    for claim in CLAIMS:
        entry: dict = {**asdict(claim), "missing": [a for a in (claim.better, claim.worse) if not arms.get(a)]}
        for metric in METRICS:
            v = verdict(values(arms.get(claim.better, []), "dynamic", metric),
                        values(arms.get(claim.worse, []), "dynamic", metric))
            entry[metric] = None if v is None else {**asdict(v), "text": v.text()}
        entry["resolution"] = split_resolution([*arms.get(claim.better, []), *arms.get(claim.worse, [])])
        out.append(entry)
    return out


def data_text(data: dict | None) -> str:
    """What an MAE trained on, from its summary's `data` (records made before it was written: unknown)."""
    if not data:
        return "not recorded"
    return f"{data['read']}: {data['videos']:,} clips, {data['images']:,} stills"


def evidence_table(arms: dict[str, list[dict]]) -> dict:
    """Per arm fine-tuned from a pretraining of the grid: that MAE's learning evidence (its loss beside the
    per-position-mean guess's on the same tokens, on a training sample augmented as trained and on the probe
    sample without augmentation, and linear-probe val UAR of its encoder vs the random encoder it started
    from), mean/std over the seeds, per modality the pretraining trained on."""
    table = {}
    for name, records in arms.items():
        found = [r["pretrain"] for r in records if (r.get("pretrain") or {}).get("evidence")]
        if not found:
            continue
        seen = {data_text(f["evidence"].get("data")) for f in found}
        row: dict = {"kind": found[0]["kind"], "n": len(found), "data": "; ".join(sorted(seen))}
        for modality in ("video", "image"):
            evidence = [f["evidence"] for f in found if modality in f["evidence"].get("final_loss", {})]
            if evidence:
                probe = [e["probe"][modality] for e in evidence if modality in e.get("probe", {})]
                sampled = [e["training_sample"][modality] for e in evidence
                           if modality in e.get("training_sample", {})]
                row[modality] = {
                    "sample_mae_loss": mean_std(x["mae_loss"] for x in sampled),
                    "sample_baseline_loss": mean_std(x["baseline_loss"] for x in sampled),
                    "mae_loss": mean_std(e["mae_loss_on_probe_sample"][modality] for e in evidence
                                         if modality in e.get("mae_loss_on_probe_sample", {})),
                    "baseline_loss": mean_std(e["baseline_loss"][modality] for e in evidence
                                              if modality in e.get("baseline_loss", {})),
                    "probe_pretrained": mean_std(x["pretrained"]["val_uar"] for x in probe),
                    "probe_random": mean_std(x["random_init"]["val_uar"] for x in probe)}
        table[name] = row
    return table


# -------------------------------------------------------------------------------------------- routing
def load_routing(records: list[dict]) -> list[tuple[int, dict]]:
    """(seed, routing.json) of the runs whose routing file exists and has MoAE layers."""
    out = []
    for r in records:
        path = Path(r.get("routing") or "")
        if path.is_file():
            routing = read_json(path)
            if routing.get("experts"):
                out.append((r["seed"], routing))
    return out


def usage_entropy(shares: list[float]) -> float:
    """Entropy of an expert usage distribution over log(experts): 1 = all experts used equally, 0 = one."""
    p = np.asarray(shares, dtype=np.float64)
    if len(p) < 2 or p.sum() <= 0:
        return 0.0
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum() / math.log(len(shares)))


def class_specificity(layer: dict) -> float | None:
    """Mean over classes of the total-variation distance between a class's usage and the layer's overall
    usage: 0 = every class is routed alike."""
    overall = np.asarray(layer["top1_share"])
    per_class = [np.asarray(s) for s in layer.get("per_class_top1_share", {}).values()]
    if not per_class:
        return None
    return float(np.mean([0.5 * np.abs(s - overall).sum() for s in per_class]))


def routing_analysis(runs: list[tuple[int, dict]]) -> dict:
    """Per MoAE block, statistics that do not depend on the experts' numbering (which differs between
    seeds): usage entropy and class specificity per task, dynamic/static usage overlap; per seed and task:
    distinct paths and the most frequent ones."""
    blocks: dict[int, dict] = {}
    paths = []
    for seed, routing in runs:
        tasks = routing["tasks"]
        for task in TASKS:
            if task not in tasks:
                continue
            for layer in tasks[task]["layers"]:
                b = blocks.setdefault(layer["block"], {"entropy": {t: [] for t in TASKS},
                                                       "specificity": {t: [] for t in TASKS}, "overlap": []})
                b["entropy"][task].append(usage_entropy(layer["top1_share"]))
                spec = class_specificity(layer)
                if spec is not None:
                    b["specificity"][task].append(spec)
            top = tasks[task]["top_paths"]
            paths.append({"seed": seed, "task": task, "distinct_paths": tasks[task]["distinct_paths"],
                          "tokens": tasks[task]["tokens"], "top": top[:TOP_PATHS],
                          "top_share": float(sum(p["share"] for p in top[:TOP_PATHS]))})
        if "dynamic" in tasks and "static" in tasks:
            for dyn, stat in zip(tasks["dynamic"]["layers"], tasks["static"]["layers"]):
                overlap = float(np.minimum(dyn["top1_share"], stat["top1_share"]).sum())
                blocks[dyn["block"]]["overlap"].append(overlap)
    per_block = {}
    for block, b in sorted(blocks.items()):
        per_block[block] = {
            "entropy": {t: mean_std(v) for t, v in b["entropy"].items() if v},
            "specificity": {t: mean_std(v) for t, v in b["specificity"].items() if v},
            "overlap": mean_std(b["overlap"]) if b["overlap"] else None}
    return {"seeds": [seed for seed, _ in runs], "blocks": per_block, "paths": paths}


# ------------------------------------------------------------------------------------ SFER-DFER
def mean_recall(records: list[dict], task: str) -> dict[str, float]:
    """Canonical class name -> recall averaged over the seeds that have it (None recalls: class absent)."""
    seen: dict[str, list[float]] = {}
    for r in records:
        for name, recall in ((r.get(task) or {}).get("per_class_recall") or {}).items():
            if recall is not None:
                seen.setdefault(canonical_name(name), []).append(recall)
    return {name: float(np.mean(v)) for name, v in seen.items()}


def pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson r; None with fewer than 3 points or a constant variable (undefined)."""
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def per_class_analysis(s4d: list[dict], video: list[dict]) -> dict:
    """Per class present in both tasks: the S4D runs' static and dynamic test recall, the video-only runs'
    dynamic recall, and the gain of S4D over video-only; Pearson r of static recall against each."""
    static, dynamic, baseline = mean_recall(s4d, "static"), mean_recall(s4d, "dynamic"), mean_recall(video, "dynamic")
    rows = []
    for name in sorted(set(static) & set(dynamic)):
        row = {"class": name, "static_recall": static[name], "dynamic_recall": dynamic[name],
               "video_only_recall": baseline.get(name)}
        row["gain"] = None if row["video_only_recall"] is None else dynamic[name] - baseline[name]
        rows.append(row)
    gains = [r for r in rows if r["gain"] is not None]
    return {"classes": rows,
            "r_static_dynamic": pearson([r["static_recall"] for r in rows], [r["dynamic_recall"] for r in rows]),
            "r_static_gain": pearson([r["static_recall"] for r in gains], [r["gain"] for r in gains])}


# --------------------------------------------------------------------------------------------- plots
def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_results(arms: dict[str, list[dict]], path: Path) -> None:
    """Dynamic test UAR and WAR per arm, one panel per study: bars = mean, whiskers = std, dots = seeds."""
    plt = pyplot()
    studies = [s for s in STUDY_TITLES if any(a.study == s and a.name in arms for a in ARMS)]
    classes = {len(r["dynamic"]["per_class_recall"]) for rs in arms.values() for r in rs if r.get("dynamic")}
    # UAR of a constant guess, drawn when every record has the same number of classes
    chance = 100 / classes.pop() if len(classes) == 1 and 0 not in classes else None
    fig, axes = plt.subplots(1, len(studies), figsize=(3.2 * len(studies) + 1, 3.8), squeeze=False)
    for ax, study in zip(axes[0], studies):
        if chance is not None:
            ax.axhline(chance, color="grey", ls="--", lw=1, label="chance (UAR)")
        names = [a.name for a in ARMS if a.study == study and a.name in arms]
        for offset, metric, colour in ((-0.2, "uar", "tab:blue"), (0.2, "war", "tab:orange")):
            for i, name in enumerate(names):
                v = 100 * np.asarray(values(arms[name], "dynamic", metric))
                ax.bar(i + offset, v.mean(), 0.38, yerr=v.std(ddof=1) if len(v) > 1 else 0, color=colour,
                       alpha=0.75, capsize=3, label=metric.upper() if i == 0 else None)
                ax.plot(np.full(len(v), i + offset), v, "k.", ms=4)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(study)
        ax.set_ylabel("dynamic test, %")
        ax.set_ylim(bottom=0)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_routing_usage(runs: list[tuple[int, dict]], path: Path) -> None:
    """Top-1 expert usage, MoAE blocks x experts, one row per seed and one column per task."""
    plt = pyplot()
    fig, axes = plt.subplots(len(runs), len(TASKS), figsize=(4.2 * len(TASKS), 0.5 + 1.6 * len(runs)),
                             squeeze=False)
    for row, (seed, routing) in zip(axes, runs):
        for ax, task in zip(row, TASKS):
            if task not in routing["tasks"]:
                ax.axis("off")
                continue
            layers = routing["tasks"][task]["layers"]
            usage = np.array([layer["top1_share"] for layer in layers])
            ax.imshow(usage, cmap="viridis", vmin=0, vmax=max(usage.max(), 1e-9), aspect="auto")
            for (i, j), share in np.ndenumerate(usage):
                ax.text(j, i, f"{100 * share:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if share < 0.6 * usage.max() else "black")
            ax.set_yticks(range(len(layers)), [f"block {layer['block']}" for layer in layers])
            ax.set_xticks(range(usage.shape[1]))
            ax.set_title(f"seed {seed}: {task} (top-1 share, %)", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("expert")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_routing_paths(seed: int, routing: dict, path: Path) -> None:
    """The most frequent expert paths of one seed's S4D run: a line per path across the MoAE blocks, width
    by its share of the tokens."""
    plt = pyplot()
    tasks = [t for t in TASKS if t in routing["tasks"]]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        data = routing["tasks"][task]
        blocks = [layer["block"] for layer in data["layers"]]
        top = data["top_paths"][:10]
        biggest = max((p["share"] for p in top), default=1.0)
        for rank, p in enumerate(top):
            jitter = (rank - len(top) / 2) * 0.03  # keeps overlapping paths apart
            ax.plot(blocks, np.asarray(p["path"]) + jitter, "-o", lw=0.5 + 6 * p["share"] / biggest, ms=3,
                    alpha=0.7, label=f"{'-'.join(map(str, p['path']))}: {100 * p['share']:.1f}%")
        ax.set_xticks(blocks, [f"block {b}" for b in blocks])
        ax.set_yticks(range(routing["experts"]))
        ax.set_ylabel("top-1 expert")
        ax.set_title(f"seed {seed}: {task}, {data['distinct_paths']} distinct paths", fontsize=9)
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_routing_classes(seed: int, routing: dict, path: Path) -> None:
    """Per-class top-1 expert usage in the last MoAE block of one seed's S4D run, per task."""
    plt = pyplot()
    tasks = [t for t in TASKS if t in routing["tasks"] and routing["tasks"][t]["layers"]]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        layer = routing["tasks"][task]["layers"][-1]
        names = list(layer["per_class_top1_share"])
        usage = np.array([layer["per_class_top1_share"][n] for n in names])
        image = ax.imshow(usage, cmap="viridis", vmin=0, aspect="auto")
        ax.set_yticks(range(len(names)), names)
        ax.set_xticks(range(usage.shape[1]))
        ax.set_xlabel("expert")
        ax.set_title(f"seed {seed}: {task}, block {layer['block']}", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="top-1 share")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_sfer_dfer(analysis: dict, path: Path) -> None:
    """Per class: S4D static vs dynamic test recall; static recall vs the dynamic gain over video-only."""
    plt = pyplot()
    rows = analysis["classes"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    panels = ((left, "dynamic_recall", "S4D dynamic test recall, %", analysis["r_static_dynamic"]),
              (right, "gain", "dynamic recall gain of S4D over video-only, points", analysis["r_static_gain"]))
    for ax, key, ylabel, r in panels:
        pts = [(100 * row["static_recall"], 100 * row[key], row["class"]) for row in rows if row[key] is not None]
        for x, y, name in pts:
            ax.plot(x, y, "o", color="tab:blue")
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=8)
        if len(pts) >= 2 and r is not None:
            x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
            slope, intercept = np.polyfit(x, y, 1)
            ax.plot(np.sort(x), slope * np.sort(x) + intercept, "k--", lw=1)
        ax.set_xlabel("S4D static test recall, %")
        ax.set_ylabel(ylabel)
        ax.set_title(f"Pearson r = {'undefined' if r is None else f'{r:.2f}'}", fontsize=10)
        if key == "gain":
            ax.axhline(0, color="grey", lw=0.8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


# -------------------------------------------------------------------------------------------- README
def cell(stats: dict | None) -> str:
    """`mean ± std` in percent (the README's number format)."""
    if stats is None or stats["mean"] is None:
        return "-"
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"


def kept_block(readme: Path, name: str) -> str:
    """The hand-written block `name` of an existing README, or its empty markers."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if readme.is_file():
        m = re.search(re.escape(start) + r".*?" + re.escape(end), readme.read_text(), re.S)
        if m:
            return m.group(0)
    return f"{start}\n{end}"


def table_lines(table: dict, study: str) -> list[str]:
    lines = ["| arm | setting | from | n | dynamic UAR | dynamic WAR | static UAR | static WAR |",
             "|---|---|---|---|---|---|---|---|"]
    for arm in (a for a in ARMS if a.study == study):
        row = table.get(arm.name)
        if row is None:
            lines.append(f"| {arm.name} | {arm.label} | | 0 | not run | | | |")
            continue
        dyn, stat = row["dynamic"] or {}, row["static"] or {}
        note = f" (= {', '.join(row['same_as'])})" if row["same_as"] else ""
        lines.append(f"| {arm.name}{note} | {arm.label} | {', '.join(row['init'])} | {row['n']} | "
                     f"{cell(dyn.get('uar'))} | {cell(dyn.get('war'))} | {cell(stat.get('uar'))} | "
                     f"{cell(stat.get('war'))} |")
    return lines


def claim_line(entry: dict) -> str:
    head = f"- **{entry['text']}** ({entry['better']} vs {entry['worse']}): "
    if entry["uar"] is None:
        return head + f"not measured (no records of {' and '.join(entry['missing'])})."
    n, res = entry["uar"]["n"], entry["resolution"]
    return head + (f"UAR {entry['uar']['text']}; WAR {entry['war']['text']}; n {n[0]}/{n[1]} seeds; test split "
                   f"{res['test_n']:,} clips (one clip {res['clip_points']:.2f} points of WAR, binomial SE of one "
                   f"run's WAR {res['binomial_se']:.1f} points).")


def evidence_lines(table: dict) -> list[str]:
    if not table:
        return ["No arm here was fine-tuned from a pretraining of the grid (with `finetune.init: scratch` only the "
                "pretraining study's arms are)."]
    lines = ["The MAE each arm was fine-tuned from (s4d.train.pretrain's learning evidence), mean ± std over "
             "seeds. Training sample: the MAE's loss on the masked tokens of up to 128 of its training clips or "
             "stills, augmented as in training, beside the loss of a guess that ignores the input (the mean target "
             "at each position over up to 1,024 other training samples, augmented the same way) on the same "
             "tokens: lower than the guess = it uses the visible patches. Probe sample: the same pair on 128 "
             "labelled train samples without augmentation (a stricter test: the guess is then fitted on the "
             "centred crops it is scored on). Probe UAR: val UAR in % of a linear probe on the frozen encoder "
             "beside the same probe on the random encoder it started from. Data: what the MAE read "
             "(pretrain.data) and its training samples.", "",
             "| arm | pretraining | data | n | modality | training sample: MAE | guess | probe sample: MAE | guess | "
             "probe UAR pretrained | probe UAR random init |", "|---|---|---|---|---|---|---|---|---|---|---|"]

    def loss(stats: dict) -> str:
        return "-" if stats["mean"] is None else f"{stats['mean']:.3f} ± {stats['std']:.3f}"

    for name, row in table.items():
        for modality in ("video", "image"):
            if modality in row:
                m = row[modality]
                lines.append(f"| {name} | {row['kind']} | {row['data']} | {row['n']} | {modality} | "
                             f"{loss(m['sample_mae_loss'])} | {loss(m['sample_baseline_loss'])} | "
                             f"{loss(m['mae_loss'])} | "
                             f"{loss(m['baseline_loss'])} | {cell(m['probe_pretrained'])} | "
                             f"{cell(m['probe_random'])} |")
    return lines


def routing_lines(analysis: dict, figures: set[str]) -> list[str]:
    if not analysis["seeds"]:
        return [f"No routing statistics yet: they come from the {S4D_ARM} runs' eval/routing.json."]
    lines = [f"From the {S4D_ARM} runs' `eval/routing.json` (seeds {', '.join(map(str, analysis['seeds']))}): the "
             "first-choice (top-1) expert of every test token in every MoAE block. Expert numbers are arbitrary "
             "per seed (experts are interchangeable at initialisation), so the statistics below are ones that "
             "do not depend on the numbering; the plots show each seed as it is.", "",
             "| block | usage entropy, dynamic | usage entropy, static | dynamic/static usage overlap | "
             "class specificity, dynamic | class specificity, static |", "|---|---|---|---|---|---|"]

    def fmt(stats: dict | None) -> str:
        return "-" if stats is None else f"{stats['mean']:.2f} ± {stats['std']:.2f}"

    for block, b in analysis["blocks"].items():
        lines.append(f"| {block} | {fmt(b['entropy'].get('dynamic'))} | {fmt(b['entropy'].get('static'))} | "
                     f"{fmt(b['overlap'])} | {fmt(b['specificity'].get('dynamic'))} | "
                     f"{fmt(b['specificity'].get('static'))} |")
    lines += ["", "Usage entropy: 1 = every expert chosen equally often, 0 = one expert takes every token. "
              "Overlap: sum over experts of min(dynamic share, static share), 1 = both tasks use the experts "
              "alike. Class specificity: mean over classes of the total-variation distance between the class's "
              "expert usage and the task's, 0 = all classes routed alike.", "",
              f"Most frequent expert paths (the top-1 expert in each MoAE block, first block first), top "
              f"{TOP_PATHS}:", "", "| seed | task | distinct paths | top paths (share of tokens) | top share |",
              "|---|---|---|---|---|"]
    for p in analysis["paths"]:
        listed = ", ".join(f"{'-'.join(map(str, t['path']))} ({100 * t['share']:.1f}%)" for t in p["top"])
        lines.append(f"| {p['seed']} | {p['task']} | {p['distinct_paths']} | {listed} | {100 * p['top_share']:.1f}% |")
    lines.append("")
    for name, caption in (("routing_usage.png", "expert usage per task and MoAE block"),
                          ("routing_paths.png", "most frequent paths"),
                          ("routing_classes.png", "per-class usage in the last MoAE block")):
        if name in figures:
            lines.append(f"![{caption}]({name})")
    return lines


def per_class_lines(analysis: dict, figures: set[str]) -> list[str]:
    rows = analysis["classes"]
    if not rows:
        return [f"No per-class numbers yet: they need {S4D_ARM} runs with a static test split."]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    def r(v: float | None) -> str:
        return "undefined" if v is None else f"{v:.2f}"

    lines = [f"Per expression class (names mapped onto one vocabulary), test recall averaged over seeds: the "
             f"{S4D_ARM} runs' static (SFER) and dynamic (DFER) recall, the {VIDEO_ARM} runs' dynamic recall, and "
             "the gain of S4D over video-only. The paper relates how much a class gains from static data to "
             "how well it is recognised in images.", "",
             "| class | static recall | dynamic recall (S4D) | dynamic recall (video-only) | gain, points |",
             "|---|---|---|---|---|"]
    for row in rows:
        gain = "-" if row["gain"] is None else f"{100 * row['gain']:+.1f}"
        lines.append(f"| {row['class']} | {pct(row['static_recall'])} | {pct(row['dynamic_recall'])} | "
                     f"{pct(row['video_only_recall'])} | {gain} |")
    lines += ["", f"Pearson r over classes: static recall vs S4D dynamic recall {r(analysis['r_static_dynamic'])}; "
              f"static recall vs gain over video-only {r(analysis['r_static_gain'])} (undefined with fewer than "
              "3 classes or a constant variable)."]
    if "sfer_dfer.png" in figures:
        lines += ["", "![per-class SFER vs DFER](sfer_dfer.png)"]
    return lines


def readme(records: list[dict], summary: dict, figures: set[str], kept: dict[str, str]) -> str:
    budgets = sorted({r.get("budget", "?") for r in records})
    seeds = sorted({r["seed"] for r in records})
    lines = ["# Reproduction report: S4D on the embedded benchmark", "",
             "<!-- generated by `python -m s4d.experiments.report` from experiments/runs/*/seed*/result.json; "
             "edit the generator, not this file (the discussion and recipe blocks are kept between runs) -->", "",
             f"Profile `tiny`, budget {', '.join(f'`{b}`' for b in budgets) or '-'}, seeds {seeds}, "
             f"{len(records)} run records. Re-run: `make grid` (renders and prepares the embedded data, runs "
             "`python -m s4d.experiments.grid`, then `python -m s4d.experiments.report`); "
             "`python -m s4d.experiments.grid --dry-run` shows the plan.", ""]
    if len(budgets) > 1:
        lines += [f"**Warning: the records come from several budgets ({', '.join(budgets)}); the numbers below mix "
                  "them.**", ""]
    lines += ["## Results", "", "Test UAR / WAR in %, mean ± sample std over seeds (n = seeds). Dynamic: the "
              "video test split (multi-view); static: the image test split, for models with a static head. An "
              "arm marked (= other) is the same run as that arm. From: what the fine-tune started from (random "
              "weights, or the MAE pretraining of the same seed); the grid's fine-tuning and ablation arms start "
              "where params.yaml's `finetune.init` says.", ""]
    for study, title in STUDY_TITLES.items():
        lines += [f"### {title}", "", *table_lines(summary["table"], study), ""]
    if "results.png" in figures:
        lines += ["![dynamic test UAR and WAR per arm](results.png)", ""]
    lines += ["## What the pretrainings learned", "", *evidence_lines(summary["evidence"]), ""]
    lines += ["## Claims", "", RULE, "", "### The paper's claims", ""]
    lines += [claim_line(e) for e in summary["claims"] if e["paper"]]
    lines += ["", "### Ablation observations", ""]
    lines += [claim_line(e) for e in summary["claims"] if not e["paper"]]
    lines += ["", kept["discussion"], "", "## Routing analysis (S4D)", "", *routing_lines(summary["routing"], figures), "",
              "## Per-class SFER-DFER transfer", "", *per_class_lines(summary["per_class"], figures), "",
              kept["recipe"], ""]
    return "\n".join(lines)


def build_report(runs_dir: Path = RUNS_DIR, out_dir: Path = REPORTS) -> dict:
    """Write out_dir/README.md, summary.json and the figures from the records under runs_dir."""
    records = load_records(runs_dir)  # first: a failure leaves the last report as it was
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = {name: kept_block(out_dir / "README.md", name) for name in HAND_WRITTEN}
    for name in FIGURES:  # a figure whose data is gone must not stay behind from an earlier report
        (out_dir / name).unlink(missing_ok=True)
    arms = by_arm(records)
    routing_runs = load_routing(arms.get(S4D_ARM, []))
    summary = {"records": len(records), "table": results_table(arms), "claims": judge(arms),
               "evidence": evidence_table(arms),
               "routing": routing_analysis(routing_runs),
               "per_class": per_class_analysis(arms.get(S4D_ARM, []), arms.get(VIDEO_ARM, []))}
    if arms:
        plot_results(arms, out_dir / "results.png")
    if routing_runs:
        plot_routing_usage(routing_runs, out_dir / "routing_usage.png")
        plot_routing_paths(*routing_runs[0], out_dir / "routing_paths.png")
        plot_routing_classes(*routing_runs[0], out_dir / "routing_classes.png")
    if summary["per_class"]["classes"]:
        plot_sfer_dfer(summary["per_class"], out_dir / "sfer_dfer.png")
    figures = {name for name in FIGURES if (out_dir / name).is_file()}
    write_json(out_dir / "summary.json", summary)
    write_text(out_dir / "README.md", readme(records, summary, figures, kept))
    return summary


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m s4d.experiments.report", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    try:
        summary = build_report()
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {REPORTS / 'README.md'} from {summary['records']} run record(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
