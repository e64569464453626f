"""Raw videos/images -> aligned face-crop frame folders + manifest rows.

Each clip becomes `out_root/<id>/00001.jpg, 00002.jpg, ...` (the frames that hold the face, in order; an
image is a 1-frame folder) and a `done.json` written last (temp file + os.replace). `done.json` also
records a skip (unreadable file, no face, ...), so a rerun redoes nothing: a clip whose marker matches the
source file and the settings is reused, anything else (no marker, half-written folder) is done again.

CLI: python -m s4d.data.preprocess INPUT_DIR OUT_DIR [--size N] [--workers N] [--detect-every K]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import NamedTuple

import cv2
from tqdm import tqdm

from s4d.data.faces import FaceDetector, crop_track, track_faces
from s4d.data.media import MEDIA_EXTENSIONS, MediaError, read_media
from s4d.io import write_csv, write_json

MARKER = "done.json"
CACHED_SKIPS = {"no_face", "empty", "not_media", "unreadable", "unsupported_codec", "too_long", "too_large"}


@dataclass
class Settings:
    """What a finished clip depends on besides its source file; a change redoes the clip."""
    size: int = 224
    margin: float = 0.2
    detect_every: int = 5
    backend: str = "mtcnn"
    max_seconds: float | None = None
    jpeg_quality: int = 95


@dataclass
class PreprocessReport:
    rows: list[dict] = field(default_factory=list)  # manifest rows of the written clips, input order
    skipped: list[dict] = field(default_factory=list)  # {"id", "media", "reason", "message"}
    processed: int = 0  # clips worked on in this run (written or skipped)
    reused: int = 0  # clips found finished (or already skipped) by an earlier run and left alone

    def manifest(self):
        import pandas as pd

        columns = None if self.rows else ["id", "path", "num_frames", "height", "width", "media"]
        return pd.DataFrame(self.rows, columns=columns)

    def summary(self) -> dict:
        """Counts and the skipped files (the written rows are the manifest)."""
        return {"written": len(self.rows), "processed": self.processed, "reused": self.reused,
                "skipped": self.skipped}


def preprocess_media(items, out_root: str | os.PathLike, size: int = 224, workers: int | None = None,
                     detect_every: int = 5, margin: float = 0.2, backend: str = "mtcnn",
                     max_seconds: float | None = None, media_root: str | os.PathLike | None = None,
                     detector: FaceDetector | None = None, progress: bool = True) -> PreprocessReport:
    """Write aligned face crops for each item and return manifest rows plus the list of skipped files.

    items: manifest rows (a DataFrame or dicts) with `path` (the video/image file, relative to
        `media_root` if that is given) and `id` (the frame folder name; default: the file name without
        extension), plus any other columns (label, split, ...) which are kept; or (id, path) /
        (id, path, label) tuples.
    workers: processes (default: all cores); 1 runs here, using `detector` if given.
    The returned rows are the input rows with `path` = the frame folder relative to `out_root` (so
    `out_root` is the new dataset root, as in s4d.data.manifest), `num_frames`, `height`, `width` of
    the written crops, and `media` = the file it came from.
    """
    if size < 8 or detect_every < 1 or margin < 0:
        raise ValueError(f"need size >= 8, detect_every >= 1, margin >= 0; got {size}, {detect_every}, {margin}")
    clips = _normalise(items, media_root)
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    backend = detector.backend if detector is not None else backend
    settings = Settings(size, margin, detect_every, backend, max_seconds)
    workers = workers or os.cpu_count() or 1

    results: dict[int, dict] = {}
    todo = []
    for n, clip in enumerate(clips):
        marker = _valid_marker(out_root / clip.id, clip.media, settings)
        if marker is not None:
            results[n] = {**marker, "reused": True}
        else:
            todo.append(n)

    bar = tqdm(total=len(todo), desc="faces", unit="clip", disable=None if progress else True)
    if workers == 1 or len(todo) <= 1:
        detector = detector or (FaceDetector(backend) if todo else None)
        for n in todo:
            results[n] = _run_clip(clips[n], out_root, settings, detector)
            bar.update()
    else:
        ctx = get_context("spawn")  # fork after torch/OpenMP start-up can deadlock
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx, initializer=_init_worker,
                                 initargs=(backend,)) as pool:
            futures = {pool.submit(_run_clip, clips[n], out_root, settings): n for n in todo}
            for future in as_completed(futures):
                n = futures[future]
                try:
                    results[n] = future.result()
                except Exception as e:  # the worker process died (e.g. killed for memory): report, go on
                    results[n] = _skip("error", f"{clips[n].media}: {type(e).__name__}: {e}")
                bar.update()
    bar.close()

    report = PreprocessReport()
    for n, clip in enumerate(clips):
        result = results[n]
        report.reused += bool(result.get("reused"))
        report.processed += not result.get("reused")
        if result["status"] == "ok":
            row = {"id": clip.id, **clip.row, "path": clip.id, "num_frames": result["num_frames"],
                   "height": result["height"], "width": result["width"], "media": clip.media}
            row.setdefault("modality", result["modality"])
            report.rows.append(row)
        else:
            report.skipped.append({"id": clip.id, "media": clip.media, "reason": result["reason"],
                                   "message": result["message"]})
    return report


# ----------------------------------------------------------------------------------------- one clip
_WORKER_DETECTOR: FaceDetector | None = None


def _init_worker(backend: str) -> None:
    global _WORKER_DETECTOR
    os.environ["OMP_NUM_THREADS"] = "1"  # one process per core: more threads per process only fight
    cv2.setNumThreads(1)
    _WORKER_DETECTOR = FaceDetector(backend)
    if backend == "mtcnn":
        import torch

        torch.set_num_threads(1)


def _run_clip(clip: Clip, out_root: Path, settings: Settings, detector: FaceDetector | None = None) -> dict:
    """One clip; an unexpected failure is reported for that clip instead of ending the run."""
    try:
        return _process_clip(clip, out_root, settings, detector)
    except Exception as e:
        return _skip("error", f"{clip.media}: {type(e).__name__}: {e}")


def _process_clip(clip: Clip, out_root: Path, settings: Settings, detector: FaceDetector | None = None) -> dict:
    detector = detector or _WORKER_DETECTOR
    folder = out_root / clip.id
    if folder.exists():  # half-written or stale: start clean
        shutil.rmtree(folder)
    try:
        video = read_media(clip.media, max_seconds=settings.max_seconds)
    except MediaError as e:
        return _finish(folder, clip, settings, _skip(e.code, str(e)))
    track = track_faces(video.frames, detector, detect_every=settings.detect_every)
    if track.num_present == 0:
        message = f"{clip.media}: no face found in {track.detector_frames} checked frames"
        return _finish(folder, clip, settings, _skip("no_face", message))
    crops, indices = crop_track(video.frames, track, settings.size, settings.margin)
    folder.mkdir(parents=True, exist_ok=True)
    for number, crop in enumerate(crops, start=1):
        name = folder / f"{number:05d}.jpg"
        if not cv2.imwrite(str(name), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality]):
            raise OSError(f"could not write {name}")
    modality = "image" if video.num_frames == 1 and video.fps == 0 else "video"
    result = {"status": "ok", "num_frames": len(crops), "height": settings.size, "width": settings.size,
              "modality": modality, "fps": video.fps, "source_frames": video.num_frames,
              "frame_indices": indices.tolist(), "detector_frames": track.detector_frames}
    return _finish(folder, clip, settings, result)


def _skip(reason: str, message: str) -> dict:
    return {"status": "skipped", "reason": reason, "message": message}


def _finish(folder: Path, clip: Clip, settings: Settings, result: dict) -> dict:
    """Write the marker last, atomically. Skips that another run would repeat are recorded too."""
    if result["status"] == "ok" or result["reason"] in CACHED_SKIPS:
        folder.mkdir(parents=True, exist_ok=True)
        marker = {**result, "media": clip.media, "media_stat": _stat(clip.media), "settings": asdict(settings)}
        write_json(folder / MARKER, marker)
    return result


def _stat(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return None


def _valid_marker(folder: Path, media: str, settings: Settings) -> dict | None:
    """The marker of a finished clip made from this very file with these settings, else None."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    stat = _stat(media)
    if stat is None or marker.get("media_stat") != stat or marker.get("settings") != asdict(settings):
        return None
    return marker


class Clip(NamedTuple):
    id: str  # frame folder, relative to out_root
    media: str  # the video/image file
    row: dict  # the input row (labels, split, ...), kept in the output manifest row


def _normalise(items, media_root) -> list[Clip]:
    """Clips from rows or tuples; ids must be unique and stay inside out_root."""
    if hasattr(items, "to_dict") and hasattr(items, "columns"):  # a pandas DataFrame
        items = items.to_dict("records")
    clips = []
    for item in items:
        if isinstance(item, dict):
            if "path" not in item:
                raise ValueError(f"item {item!r} has no 'path' (the video/image file)")
            row = dict(item)
            path = str(row.pop("path"))
            clip_id = str(row.get("id") or Path(path).stem)
        elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
            clip_id, path = str(item[0]), str(item[1])
            row = {"label": item[2]} if len(item) == 3 else {}
        else:
            raise ValueError(f"item {item!r}: expected a dict with 'path' or an (id, path[, label]) tuple")
        parts = Path(clip_id).parts
        if not parts or Path(clip_id).is_absolute() or ".." in parts:
            raise ValueError(f"item id {clip_id!r} must be a relative folder name inside the output folder")
        media = str(Path(media_root) / path) if media_root is not None else path
        clips.append(Clip(Path(clip_id).as_posix(), media, row))
    seen: dict[str, str] = {}
    for clip in clips:
        if clip.id in seen:
            raise ValueError(f"duplicate id {clip.id!r}: {seen[clip.id]} and {clip.media}")
        seen[clip.id] = clip.media
    for clip in clips:  # a clip folder is wiped before it is redone: it must not hold another clip
        for parent in Path(clip.id).parents:
            if parent.as_posix() in seen:
                raise ValueError(f"id {parent.as_posix()!r} is a folder that holds the clip {clip.id!r}")
    return clips


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m s4d.data.preprocess",
        description="Detect, align and crop faces in every video/image under INPUT_DIR; write frame "
                    "folders OUT_DIR/<id>/00001.jpg..., OUT_DIR/manifest.csv and OUT_DIR/report.json.")
    parser.add_argument("input_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", type=int, default=224, help="crop side in pixels (default 224)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (default: all cores)")
    parser.add_argument("--detect-every", type=int, default=5, help="run the detector on every k-th frame")
    parser.add_argument("--backend", choices=("mtcnn", "yunet"), default="mtcnn")
    args = parser.parse_args(argv)
    if not args.input_dir.is_dir():
        parser.error(f"INPUT_DIR {args.input_dir} is not a folder")

    out = args.out_dir.resolve()
    files = sorted(p for p in args.input_dir.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and out not in p.resolve().parents)  # OUT_DIR may sit inside INPUT_DIR
    media = [p for p in files if p.suffix.lower() in MEDIA_EXTENSIONS]
    items = [{"id": p.relative_to(args.input_dir).with_suffix("").as_posix(), "path": str(p)} for p in media]
    try:
        report = preprocess_media(items, args.out_dir, size=args.size, workers=args.workers,
                                  detect_every=args.detect_every, backend=args.backend)
    except ValueError as e:  # duplicate ids (a.mp4 beside a.jpg), bad flag values
        parser.error(str(e))
    for p in files:  # listed, not attempted: FFmpeg would "decode" some text formats
        if p.suffix.lower() not in MEDIA_EXTENSIONS:
            report.skipped.append({"id": None, "media": str(p), "reason": "not_media",
                                   "message": f"{p}: extension {p.suffix or '(none)'} is not a video/image type"})
    write_csv(args.out_dir / "manifest.csv", report.manifest())
    write_json(args.out_dir / "report.json", report.summary())
    print(f"{len(report.rows)} clips written, {len(report.skipped)} skipped, {report.reused} reused "
          f"-> {args.out_dir / 'manifest.csv'}")
    for skip in report.skipped:
        print(f"  skipped ({skip['reason']}): {skip['message']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
