"""File and network helpers every module shares: atomic writes, JSON, file hashes, a free local port.

A write goes to a temp file beside the target (same folder, so the rename stays on one file system) and
is renamed over it: a reader, or a run that died half-way, never sees half a file. Temp names are
`.<name>.<pid>.<random>.tmp<suffix>`, unique per call, so two writers (processes or threads) never share
one. The writer creates the temp file itself, so it gets the permissions of any new file (the umask's),
not tempfile.mkstemp's owner-only 0600.

Imports nothing of s4d: every layer may use it.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temp path beside `path` for any writer (torch.save, savefig, to_csv); renamed over `path` when
    the block ends without an exception, removed otherwise. The temp file keeps the target's suffix, for
    writers that pick the format from it."""
    path = Path(path)
    if not path.parent.is_dir():  # one stat in the common case; mkdir(exist_ok) costs a failed syscall
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_csv(path: str | Path, df: Any) -> Path:
    """A pandas DataFrame as CSV without its index."""
    with atomic_output(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """A matplotlib figure; the format comes from the suffix of `path` (the temp file keeps it)."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    return Path(path)


def _jsonable(obj: Any) -> Any:
    """numpy / torch scalars and arrays as Python numbers and lists, paths as strings; anything else is
    an error (better than writing its repr)."""
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    if hasattr(obj, "isoformat"):  # datetime, date
        return obj.isoformat()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def to_json(obj: Any) -> str:
    """The project's JSON text: indented, NaN/inf refused (not valid JSON), ends with a newline."""
    return json.dumps(obj, indent=2, allow_nan=False, default=_jsonable) + "\n"


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, to_json(obj))


_REQUIRED = object()


def read_json(path: str | Path, default: Any = _REQUIRED) -> Any:
    """Parsed JSON; FileNotFoundError or ValueError naming the file otherwise. With `default` (for a cache
    stamp or a record that may not exist yet), `default` when the file cannot be read or is not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        if default is not _REQUIRED:
            return default
        if isinstance(e, FileNotFoundError):
            raise FileNotFoundError(f"{path} does not exist") from None
        if isinstance(e, OSError):
            raise
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def save_torch(obj: Any, path: str | Path) -> Path:
    import torch  # here, so that modules that never save tensors do not pay for importing torch

    # Into an open file, not a path: a full disk then surfaces as OSError(ENOSPC) (torch's own file writer
    # reports only "unexpected pos").
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
