"""Folder safety for the training stages: what a stage may delete, replace and resume.

- A stage deletes only what it wrote. Every entry it creates in a checkpoint folder is listed in that
  folder's `.s4d-own.json`; cleaning goes entry by entry through that list, so a foreign file in the folder
  (a mount point on a bigger disk, a symlinked folder shared with other tools) is never touched, and the
  folder itself is never removed.
- A changed configuration never destroys a resumable run: s4d.train.inputs tells the settings that change
  the result apart from performance knobs and names the keys that differ (`refusal` words the message).
  Starting fresh moves the old run aside (`move_aside`) rather than deleting it.
- Outputs are written to a staging folder inside the output folder (same file system) and swapped in by
  rename when the run finished (`staging_dir`, `commit_outputs`).
- A full disk while writing a checkpoint is reported as "no space left on <path> while writing checkpoint
  <new>; previous checkpoint <old> kept" (`out_of_space`), by pretraining and fine-tuning alike.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

from s4d.io import write_json

OWN_LIST = ".s4d-own.json"
STAGING_PREFIX = ".partial-"
ASIDE_PREFIX = "previous-"


class ResumeRefused(RuntimeError):
    """A resumable run in the folder was made with other settings than this one."""


class OutOfSpace(OSError):
    """A write failed for lack of space (or a file-size limit); the previous checkpoint is intact."""


# ------------------------------------------------------------------------------------ own entries
def own_entries(folder: Path) -> list[str]:
    """Names of the entries of `folder` the project wrote (and has not removed since)."""
    path = Path(folder) / OWN_LIST
    if not path.is_file():
        return []
    try:
        names = json.loads(path.read_text())
    except (OSError, ValueError):
        return []  # an unreadable list claims nothing: foreign files are safer kept than deleted
    return [n for n in names if isinstance(n, str) and _plain_name(n)]


def _plain_name(name: str) -> bool:
    return name not in ("", ".", "..", OWN_LIST) and "/" not in name and "\\" not in name


def _write_own(folder: Path, names: list[str]) -> None:
    write_json(folder / OWN_LIST, sorted(set(names)))


def claim(folder: Path, *names: str) -> None:
    """Record entries of `folder` as the project's own (before writing them, so a crash mid-write leaves a
    partial entry that is still known to be ours)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    current = own_entries(folder)
    new = [n for n in names if _plain_name(n) and n not in current]
    if new:
        _write_own(folder, current + new)


def remove_own(folder: Path, name: str) -> None:
    """Delete one entry the project wrote. A symlink is unlinked (its target stays); a mount point is never
    removed; anything not in the own list is left alone."""
    folder = Path(folder)
    if name not in own_entries(folder):
        return
    path = folder / name
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir() and not os.path.ismount(path):
        shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path):
        _write_own(folder, [n for n in own_entries(folder) if n != name])


def remove_all_own(folder: Path) -> list[str]:
    """Delete every entry the project wrote in `folder` (never the folder itself, nor the runs moved aside
    into it); returns their names."""
    names = [n for n in own_entries(folder) if not n.startswith(ASIDE_PREFIX)]
    for name in names:
        remove_own(folder, name)
    return names


def move_aside(folder: Path) -> Path | None:
    """Move every own entry of `folder` into a new `previous-<time>/` inside it (a rename on the same file
    system, so it works on a mount point or through a symlink); foreign files stay where they are."""
    folder = Path(folder)
    names = [n for n in own_entries(folder) if os.path.lexists(folder / n) and not n.startswith(ASIDE_PREFIX)]
    if not names:
        return None
    aside = folder / f"{ASIDE_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}"
    n = 1
    while aside.exists():
        n += 1
        aside = aside.with_name(f"{aside.name.split('.')[0]}.{n}")
    claim(folder, aside.name)
    aside.mkdir()
    for name in names:
        os.replace(folder / name, aside / name)
    _write_own(folder, [n for n in own_entries(folder) if n not in names])
    return aside




def refusal(folder: Path, step: int, diff: list[str], fresh_hint: str) -> ResumeRefused:
    shown = "; ".join(diff[:6]) + (f"; ... ({len(diff) - 6} more)" if len(diff) > 6 else "")
    return ResumeRefused(f"{folder} holds an unfinished run (step {step}) made with other settings: {shown}. "
                         f"Rerun with the same settings to resume it, or with {fresh_hint} to move it aside "
                         f"(into {folder}/{ASIDE_PREFIX}<time>/) and start over")


# ------------------------------------------------------------------------------------ outputs
def staging_dir(folder: Path) -> Path:
    """An empty staging folder inside `folder` (renames from it into `folder` are atomic). Staging folders
    of killed runs are the project's own leftovers and are removed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"{STAGING_PREFIX}*"):
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
    stage = folder / f"{STAGING_PREFIX}{os.getpid()}"
    stage.mkdir()
    return stage


def commit_outputs(stage: Path, folder: Path, names: tuple[str, ...]) -> None:
    """Swap a finished run's outputs into `folder`: each of `names` is renamed over the previous one, and a
    previous output the new run did not write is removed (never two runs' files side by side). `names`
    are renamed in the order given: put the model and summary last."""
    for name in names:
        new, old = stage / name, folder / name
        if new.exists():
            os.replace(new, old)
        elif old.is_file() and not old.is_symlink():
            old.unlink()
    shutil.rmtree(stage, ignore_errors=True)


# ------------------------------------------------------------------------------------ full disks
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
LOW_SPACE_BYTES = 1 << 20


def write_failure(error: BaseException, path: Path) -> str | None:
    """Why a write under `path` failed when it is for lack of space, else None. torch's zip writer reports a
    full disk as a RuntimeError ("unexpected pos ...") without errno, so then the free space decides."""
    for e in (error, error.__cause__, error.__context__):
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            return "file size limit reached" if e.errno == errno.EFBIG else "no space left"
    if isinstance(error, (OSError, RuntimeError)):
        try:
            free = shutil.disk_usage(path).free
        except OSError:
            return None
        if free < LOW_SPACE_BYTES:
            return "no space left"
    return None


def out_of_space(error: BaseException, folder: Path, writing: str, kept: str | None) -> OutOfSpace | None:
    """The error to stop a stage with when writing checkpoint `writing` into `folder` failed for lack of
    space (None when `error` is another failure): it names the folder, the checkpoint and the one kept."""
    reason = write_failure(error, folder)
    if reason is None:
        return None
    keep = (f"previous checkpoint {kept} kept: free space and rerun the same command to resume" if kept
            else "no earlier checkpoint to keep")
    return OutOfSpace(f"{reason} on {folder} while writing checkpoint {writing}; {keep}")
