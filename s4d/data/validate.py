"""Great Expectations checks on manifests, with Data Docs HTML and a readable summary.

Checks on each manifest (fatal unless marked):
    not_empty        the manifest has rows
    ids_unique       no id twice
    splits_known     split is train/val/test
    modality_known   modality is video/image
    labels_in_set    0 <= label < size of its label set and label_name is the set's name for it
    files_present    the frame folder / image / video exists under the dataset root
    frames_decode    every frame of a clip (and every image) has a readable header and, for JPEG / PNG, its
                     end marker (a zero-byte, corrupt or truncated file fails), and a clip's frames share one
                     size. Headers only (PIL lazy open + the file's last bytes), in threads (data.workers).
                     Measured on a 120-clip render of the embedded set (1920 frames of 96 px + 400 stills) on
                     the shared 2-core machine: 175-215 us a frame (0.34-0.41 s for the clips), where decoding
                     every frame with cv2.imread took 610 us a frame (1.17 s).
    groups_disjoint  no group (identity) in two splits
    image_height     height >= min_size
    image_width      width >= min_size
    clip_length      WARNING: videos with fewer frames than one clip (num_frames * frame_stride). They are
                     listed, not fatal: the loader can still pad or loop them, but many of them is a sign
                     of a bad frame extraction.
    class_shares     each class of the label set holds between min_class_share and max_class_share of the
                     rows (all splits together; a class with no rows has share 0). The default minimum is
                     1 %, as the real DFEW has 1.2 % disgust.

GX checks columns, so the row-level rules that need the file system or the whole table (labels, files,
groups) are computed first into `*_status` columns ("ok" or the reason), and the class shares are a small
table of their own. In `<out>`: `tables/` holds those tables as validated, `gx/` the GX project (a file
context, so Data Docs keep the history of runs; HTML in gx/uncommitted/data_docs/local_site/), and
`summary.json` the last report.

Data Docs offline: GX's pages load Bootstrap, jQuery, Vega and fonts from CDNs, and its index builds the
table of validation runs in JavaScript from those CDNs, so offline the index lists nothing and no page is
styled. After GX renders, every page's remote scripts and stylesheets are dropped in favour of one local
stylesheet (static/styles/offline.css), remote images point at GX's own local logo, and index.html is
rewritten as plain HTML listing every validation run kept in the site (newest first, passed or failed).
"""
from __future__ import annotations

import html
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from s4d.config import ValidateConfig
from s4d.data.labels import classes_of
from s4d.data.manifest import MODALITIES, SPLITS, conform, dataset_folders, outside_root, read_manifest
from s4d.data.readers import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from s4d.io import write_csv, write_json

FATAL, WARNING = "fatal", "warning"
SUMMARY_EXAMPLES = 5
# A complete JPEG ends with EOI (FF D9; entropy-coded data never holds it), a PNG with its IEND chunk.
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}
TAIL_BYTES = 64  # some writers pad a few bytes after the end marker


@dataclass
class CheckResult:
    manifest: str
    check: str
    severity: str  # FATAL or WARNING
    success: bool
    unexpected_count: int
    description: str
    examples: list[str] = field(default_factory=list)  # up to 20 offending rows, "id: value"


@dataclass
class ValidationReport:
    results: list[CheckResult]
    rows: dict[str, int]  # manifest name -> row count
    docs_index: Path | None
    summary_path: Path | None = None

    @property
    def success(self) -> bool:
        """True when every fatal check passed (warnings do not count)."""
        return not self.failed(FATAL)

    def failed(self, severity: str | None = None) -> list[CheckResult]:
        return [r for r in self.results if not r.success and severity in (None, r.severity)]

    def summary(self) -> str:
        fatal, warnings = len(self.failed(FATAL)), len(self.failed(WARNING))
        lines = [f"Manifest validation {'passed' if self.success else 'FAILED'}: "
                 f"{fatal} fatal failure(s), {warnings} warning(s)"]
        for name, n in self.rows.items():
            lines.append(f"[{name}] {n} rows")
            for r in (r for r in self.results if r.manifest == name):
                mark = "ok  " if r.success else ("FAIL" if r.severity == FATAL else "WARN")
                line = f"  {mark} {r.check:<16} {r.description}"
                if not r.success:
                    shown = "; ".join(r.examples[:SUMMARY_EXAMPLES])
                    more = ", ..." if r.unexpected_count > SUMMARY_EXAMPLES else ""
                    count = f"{r.unexpected_count} offending: " if r.unexpected_count else ""
                    line += f" -> {count}{shown}{more}"
                lines.append(line)
        if self.docs_index:
            lines.append(f"Data Docs: {self.docs_index}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"success": self.success, "rows": self.rows,
                "docs_index": str(self.docs_index) if self.docs_index else None,
                "results": [asdict(r) for r in self.results]}


# --------------------------------------------------------------------------------- computed columns
def label_status(df: pd.DataFrame) -> pd.Series:
    """"ok", or why the label does not fit its label set."""
    def one(label: int, name: str, label_set: str) -> str:
        try:
            classes = classes_of(label_set)
        except KeyError:
            return f"unknown label set {label_set!r}"
        if not 0 <= label < len(classes):
            return f"label {label} outside {label_set} (0..{len(classes) - 1})"
        if name != classes[label]:
            return f"label {label} is {classes[label]!r} in {label_set}, not {name!r}"
        return "ok"
    return pd.Series([one(*t) for t in zip(df["label"], df["label_name"], df["label_set"])], index=df.index,
                     dtype=object)


def file_status(df: pd.DataFrame, root: Path, allowed: tuple = ()) -> pd.Series:
    """"ok", or what is missing: images must be files; videos a frame folder or a video file."""
    def one(path: str, modality: str) -> str:
        if escapes := outside_root(path, root, allowed):
            return escapes
        full = root / path
        found = full.is_file() if modality == "image" else full.exists()
        return "ok" if found else f"missing {full}"
    return pd.Series([one(p, m) for p, m in zip(df["path"], df["modality"])], index=df.index, dtype=object)


def frame_problem(path: Path) -> tuple[str | None, tuple[int, int] | None]:
    """(problem or None, (width, height)) of one image from its header and its last bytes, without decoding
    the pixels: a zero-byte or corrupt file fails the header, a truncated JPEG / PNG lacks its end marker."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f, Image.open(f) as im:
            size, fmt = im.size, im.format
            f.seek(max(os.fstat(f.fileno()).st_size - TAIL_BYTES, 0))
            tail = f.read()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        reason = "empty file" if path.is_file() and path.stat().st_size == 0 else str(e).split(":")[0]
        return f"{path.name}: does not decode ({reason})", None
    if END_MARKERS.get(fmt, b"") not in tail:
        return f"{path.name}: truncated (no {fmt} end marker)", size
    return None, size


def frames_of(full: Path) -> list[Path]:
    """The frame files of a frame folder in name order (a video file or an image is its own single entry)."""
    if not full.is_dir():
        return [full]
    return sorted(e for e in full.iterdir() if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file())


def sample_frame_status(path: str, root: Path, allowed: tuple = ()) -> str:
    """"ok", or the first frame of a sample that does not decode, or the sizes when its frames differ."""
    if outside_root(path, root, allowed) or path.lower().endswith(VIDEO_SUFFIXES):
        return "ok"  # files_present reports escaping paths; video files are decoded by prepare
    full = root / path
    if not full.exists():
        return "ok"  # files_present reports it
    frames = frames_of(full)
    if not frames:
        return "no frames"
    sizes = {}
    for frame in frames:
        problem, size = frame_problem(frame)
        if problem:
            return problem
        sizes.setdefault(size, frame.name)
    if len(sizes) > 1:
        return "frames differ in size: " + ", ".join(f"{w}x{h} ({name})" for (w, h), name in sizes.items())
    return "ok"


def frame_status(df: pd.DataFrame, root: Path, workers: int = 0, allowed: tuple = ()) -> pd.Series:
    """`sample_frame_status` of every row, in `workers` threads (0: one per CPU, at most 8), with a
    progress bar: header reads wait on the disk, not the CPU, so threads overlap them."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        status = list(tqdm(pool.map(sample_frame_status, df["path"], [root] * len(df), [allowed] * len(df), chunksize=16),
                           total=len(df), desc="validate frames", unit="sample", leave=False))
    return pd.Series(status, index=df.index, dtype=object)


def group_status(df: pd.DataFrame) -> pd.Series:
    """"ok", or the splits a row's group (identity) shows up in when that is more than one."""
    grouped = df[df["group"] != ""]
    splits = grouped.groupby("group")["split"].agg(lambda s: "+".join(sorted(set(s))))
    leaking = splits[splits.str.contains("+", regex=False)]
    status = df["group"].map(lambda g: f"identity {g} in {leaking[g]}" if g in leaking.index else "ok")
    return status.astype(object)


def with_status_columns(df: pd.DataFrame, root: Path, workers: int = 0, allowed: tuple = ()) -> pd.DataFrame:
    df = df.copy()
    df["label_status"] = label_status(df)
    df["file_status"] = file_status(df, root, allowed)
    df["frame_status"] = frame_status(df, root, workers, allowed)
    df["group_status"] = group_status(df)
    return df


def class_shares(df: pd.DataFrame) -> pd.DataFrame:
    """One row per class of each label set in the manifest: count and share of all rows (0 if absent).
    `id` is the class name, so failures list classes the way row checks list sample ids."""
    rows = []
    for label_set, part in df.groupby("label_set", sort=True):
        counts = part["label"].value_counts()
        try:
            names = dict(enumerate(classes_of(label_set)))
        except KeyError:  # labels_in_set reports this; still show what is there
            names = {int(k): f"label {k}" for k in counts.index}
        for label, name in names.items():
            n = int(counts.get(label, 0))
            rows.append(dict(id=name, label_set=label_set, label=label, count=n, share=round(n / len(df), 4)))
    return pd.DataFrame(rows, columns=["id", "label_set", "label", "count", "share"])


# ------------------------------------------------------------------------------------- offline Data Docs
SITE = Path("gx/uncommitted/data_docs/local_site")
RESULTS = Path("gx/uncommitted/validations")
_REMOTE_TAG = re.compile(r'<script\b[^>]*\bsrc="https?://[^"]*"[^>]*>\s*</script>'
                         r'|<link\b[^>]*\bhref="https?://[^"]*"[^>]*>', re.IGNORECASE)
_REMOTE_SRC = re.compile(r'\bsrc="https?://[^"]*"', re.IGNORECASE)
_REMOTE_URL = re.compile(r"url\(\s*['\"]?https?://[^)]*\)", re.IGNORECASE)
OFFLINE_CSS = """\
body { font-family: HKGrotesk, system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1em; color: #222; }
@font-face { font-family: HKGrotesk; src: url(../fonts/HKGrotesk/HKGrotesk-Regular.otf); }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
img { max-height: 40px; }
.passed, .text-success { color: #1a7f37; } .failed, .text-danger { color: #c62828; }
.hide, .d-none, .sr-only, .collapse:not(.show) { display: none; }
.card { border: 1px solid #ddd; border-radius: 4px; padding: 0.5em 1em; margin: 0.8em 0; }
.fa-check-circle::before { content: "\\2713"; } .fa-times::before { content: "\\2717"; }
.fa-question-circle::before { content: "?"; }
"""


def offline_data_docs(out_dir: Path) -> Path:
    """Make the Data Docs site under `out_dir` readable offline (see the module note); returns index.html."""
    site = Path(out_dir) / SITE
    styles = site / "static" / "styles"
    styles.mkdir(parents=True, exist_ok=True)
    (styles / "offline.css").write_text(OFFLINE_CSS)
    for page in site.rglob("*.html"):  # GX renders only the new runs' pages; the others are done already
        up = "../" * (len(page.relative_to(site).parts) - 1)
        before = page.read_text()
        if "static/styles/offline.css" in before:
            continue
        text = _REMOTE_TAG.sub("", before)
        text = _REMOTE_SRC.sub(f'src="{up}static/images/logo-long.png"', text)
        text = _REMOTE_URL.sub("none", text)
        local = f'<link rel="stylesheet" href="{up}static/styles/offline.css">\n</head>'
        page.write_text(text.replace("</head>", local, 1))
    for sheet in styles.glob("*.css"):
        sheet.write_text(_REMOTE_URL.sub("none", sheet.read_text()))
    index = site / "index.html"
    index.write_text(_index_page(Path(out_dir), site))
    return index


def _index_page(out_dir: Path, site: Path) -> str:
    """index.html as plain HTML: the expectation suites and every validation run of the site."""
    rows = []
    for page in site.glob("validations/*/*/*/*.html"):  # validations/<suite>/<run name>/<run time>/<batch>
        suite, _, run_time, _ = page.relative_to(site / "validations").parts
        stored = out_dir / RESULTS / page.relative_to(site / "validations").with_suffix(".json")
        rows.append((run_time, page.stem, suite, _verdict(stored), page.relative_to(site).as_posix()))
    rows.sort(key=lambda r: (r[0], r[1]), reverse=True)
    runs = "\n".join(
        f"<tr><td>{_run_time(t)}</td><td>{html.escape(batch)}</td><td>{html.escape(suite)}</td>"
        f'<td>{verdict}</td><td><a href="{html.escape(link)}">details</a></td></tr>'
        for t, batch, suite, verdict, link in rows)
    suites = "\n".join(f'<li><a href="{html.escape(p.relative_to(site).as_posix())}">{html.escape(p.stem)}</a></li>'
                        for p in sorted(site.glob("expectations/*.html")))
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Manifest validation: Data Docs</title>\n'
            f'<link rel="stylesheet" href="static/styles/offline.css"></head>\n<body>\n'
            f"<h1>Manifest validation</h1>\n<h2>Validation runs ({len(rows)} results)</h2>\n"
            f"<table><tr><th>run (UTC)</th><th>table</th><th>suite</th><th>result</th><th></th></tr>\n{runs}\n"
            f"</table>\n<h2>Expectation suites</h2>\n<ul>\n{suites}\n</ul>\n</body></html>\n")


def _verdict(stored: Path) -> str:
    """A stored validation result as this module judges it: failed warnings alone do not fail a table
    (GX's own `success` counts them)."""
    try:
        results = json.loads(stored.read_text())["results"]
    except (OSError, ValueError, KeyError):
        return "unknown"
    failed = [r.get("expectation_config", {}).get("severity") for r in results if not r.get("success")]
    if any(severity != WARNING for severity in failed):
        return '<span class="failed">FAILED</span>'
    return '<span class="passed">passed</span>' + (f" ({len(failed)} warning(s))" if failed else "")


def _run_time(stamp: str) -> str:
    """GX's run folder name 20261202T004302.308192Z -> 2026-12-02 00:43:02."""
    m = re.fullmatch(r"(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)(\.\d+)?Z?", stamp)
    return f"{m[1]}-{m[2]}-{m[3]} {m[4]}:{m[5]}:{m[6]}" if m else html.escape(stamp)


# ---------------------------------------------------------------------------------------------- suites
def _row_expectations(clip_length: int, min_size: int) -> list:
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    def meta(check: str, description: str) -> dict:
        return dict(meta={"check": check}, description=description)

    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, **meta("not_empty", "the manifest has rows")),
        gxe.ExpectColumnValuesToBeUnique(column="id", **meta("ids_unique", "ids are unique")),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS),
                                        **meta("splits_known", "split is one of train/val/test")),
        gxe.ExpectColumnValuesToBeInSet(column="modality", value_set=list(MODALITIES),
                                        **meta("modality_known", "modality is video or image")),
        gxe.ExpectColumnValuesToBeInSet(column="label_status", value_set=["ok"],
                                        **meta("labels_in_set", "label and label_name fit the label set")),
        gxe.ExpectColumnValuesToBeInSet(column="file_status", value_set=["ok"],
                                        **meta("files_present", "frame folders / images / videos exist")),
        gxe.ExpectColumnValuesToBeInSet(column="frame_status", value_set=["ok"],
                                        **meta("frames_decode", "every frame decodes; a clip's frames share one size")),
        gxe.ExpectColumnValuesToBeInSet(column="group_status", value_set=["ok"],
                                        **meta("groups_disjoint", "no identity in two splits")),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=min_size,
                                          **meta("image_height", f"height >= {min_size} px")),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=min_size,
                                          **meta("image_width", f"width >= {min_size} px")),
        gxe.ExpectColumnValuesToBeBetween(column="num_frames", min_value=clip_length,
                                          row_condition=Column("modality") == "video", severity="warning",
                                          **meta("clip_length", f"videos have >= {clip_length} frames")),
    ]


def _class_expectations(min_share: float, max_share: float) -> list:
    import great_expectations.expectations as gxe

    return [gxe.ExpectColumnValuesToBeBetween(
        column="share", min_value=min_share, max_value=max_share, meta={"check": "class_shares"},
        description=f"each class holds {min_share:.0%}..{max_share:.0%} of the rows")]


def _suite(ctx, name: str, expectations: list):
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=name)
    for e in expectations:
        suite.add_expectation(e)
    return ctx.suites.add_or_update(suite)


def _open_context(gx_dir: Path):
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="file", project_root_dir=gx_dir.parent)
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm bars in logs
    ctx.variables.save()
    return ctx


def _outcomes(checkpoint_result, manifest_of: dict[str, str]) -> list[CheckResult]:
    out = []
    for suite_result in checkpoint_result.run_results.values():
        manifest = manifest_of[suite_result.meta["active_batch_definition"]["data_asset_name"]]
        for r in suite_result.results:
            config = r.expectation_config
            result = r.result or {}
            if r.exception_info and r.exception_info.get("raised_exception"):
                examples = [f"GX raised: {r.exception_info.get('exception_message')}"]
            else:
                examples = [_example(d) for d in result.get("partial_unexpected_index_list") or []]
                if not examples and not r.success:
                    examples = [str(v) for v in result.get("partial_unexpected_list") or []]
                    if "observed_value" in result:
                        examples.append(f"observed {result['observed_value']}")
            out.append(CheckResult(
                manifest=manifest, check=config.meta.get("check", config.type),
                severity=WARNING if str(getattr(config.severity, "value", config.severity)) == "warning"
                else FATAL,
                success=bool(r.success), unexpected_count=int(result.get("unexpected_count") or 0),
                description=config.description or config.type, examples=examples))
    return out


def _example(d: dict) -> str:
    """{"id": "00007", "num_frames": 3} -> "00007: num_frames=3"."""
    d = dict(d)
    key = d.pop("id", None)
    rest = ", ".join(f"{k}={v}" if not k.endswith("_status") else str(v) for k, v in d.items())
    return f"{key}: {rest}" if rest else str(key)


# -------------------------------------------------------------------------------------------- entry
def validate_manifests(manifests: dict[str, pd.DataFrame], root_dirs: dict[str, Path], out_dir: Path,
                       clip_length: int, *, min_class_share: float = ValidateConfig.min_class_share,
                       max_class_share: float = ValidateConfig.max_class_share,
                       min_size: int = ValidateConfig.min_size,
                       data_docs: bool = True, workers: int = 0, allowed: tuple = ()) -> ValidationReport:
    """Run the checks on each manifest (name -> DataFrame, files looked up under root_dirs[name]).

    Writes the validated tables to `out_dir/tables/`, GX Data Docs under
    `out_dir/gx/uncommitted/data_docs/local_site/` (unless data_docs=False: rendering costs ~1 s per table)
    and `out_dir/summary.json`; returns the report (`success` is False when any fatal check failed).
    """
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    out_dir = Path(out_dir)
    missing_roots = [name for name in manifests if name not in root_dirs]
    if missing_roots:
        raise ValueError(f"no dataset root given for manifest(s) {missing_roots}")

    # The tables GX validates (manifest + status columns, class shares) go to CSVs: one checkpoint run
    # reads them all, and they stay beside the report for a closer look.
    tables = out_dir / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    for stale in tables.glob("*.csv"):
        stale.unlink()
    rows = {}
    for name, manifest in manifests.items():
        df = with_status_columns(conform(manifest), Path(root_dirs[name]), workers, tuple(allowed))
        write_csv(tables / f"{name}_rows.csv", df)
        write_csv(tables / f"{name}_classes.csv", class_shares(df))
        rows[name] = len(df)

    ctx = _open_context(out_dir / "gx")
    suites = {"rows": _suite(ctx, "manifest_rows", _row_expectations(clip_length, min_size)),
              "classes": _suite(ctx, "manifest_class_shares",
                                _class_expectations(min_class_share, max_class_share))}
    source = ctx.data_sources.add_or_update_pandas_filesystem(name="manifests", base_directory=tables)
    text = {c: "str" for c in ("id", "path", "label_name", "label_set", "modality", "split", "source", "group",
                             "label_status", "file_status", "frame_status", "group_status")}
    definitions, manifest_of = [], {}
    for name in manifests:
        for table, suite in suites.items():
            key = f"{name}_{table}"  # one asset per table, so results do not share a batch id
            asset = source.add_csv_asset(name=key, dtype=text, keep_default_na=False, na_filter=False)
            batch = asset.add_batch_definition_path(name=key, path=f"{key}.csv")
            definitions.append(ctx.validation_definitions.add_or_update(
                gx.ValidationDefinition(name=key, data=batch, suite=suite)))
            manifest_of[key] = name
    checkpoint = ctx.checkpoints.add_or_update(gx.Checkpoint(
        name="manifests", validation_definitions=definitions,
        actions=[UpdateDataDocsAction(name="data_docs")] if data_docs else [],
        result_format={"result_format": "SUMMARY", "unexpected_index_column_names": ["id"]}))
    results = _outcomes(checkpoint.run(), manifest_of)

    docs = offline_data_docs(out_dir) if data_docs else None
    report = ValidationReport(results=results, rows=rows, docs_index=docs,
                              summary_path=out_dir / "summary.json")
    write_json(report.summary_path, report.to_dict())
    return report


def validate(params, out_dir: Path) -> ValidationReport:
    """The validate stage (the DVC stage and the flow): the prepared manifests of `params` against its bounds."""
    prepared = Path(params.data.prepared_dir)
    manifests = {name: read_manifest(prepared / f"{name}.csv") for name in ("dynamic", "static")}
    clip_length = (params.model.num_frames - 1) * params.data.frame_stride + 1
    bounds = params.validate
    # Prepared manifests hold paths relative to the project folder (or inside a configured dataset folder).
    return validate_manifests(manifests, {name: Path(".") for name in manifests}, Path(out_dir), clip_length,
                              min_class_share=bounds.min_class_share, max_class_share=bounds.max_class_share,
                              min_size=bounds.min_size, workers=params.data.workers,
                              allowed=dataset_folders(params.data))


def main(argv: list[str] | None = None) -> int:
    """`validate` stage: the prepared manifests against params' bounds; exit 1 on a fatal failure."""
    from s4d.stage import load_stage_params, stage_parser

    parser = stage_parser("Check the prepared manifests (dynamic.csv, static.csv) with Great Expectations. "
                          "Writes Data Docs HTML and summary.json under artifacts/validation, prints a "
                          "summary, exits 1 when a fatal check fails (short clips only warn).")
    parser.add_argument("--out", type=Path, default=Path("artifacts/validation"), help="report folder")
    args = parser.parse_args(argv)
    params = load_stage_params(args)
    try:
        report = validate(params, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"validate: {e} (run the prepare stage first)", file=sys.stderr)
        return 1
    print(report.summary())
    return 0 if report.success else 1


if __name__ == "__main__":
    sys.exit(main())
