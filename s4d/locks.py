"""An advisory lock on a file (fcntl.flock): one holder at a time among this project's processes."""
from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def file_lock(path: str | Path, busy: str | None = None) -> Iterator[None]:
    """Hold the lock on `path` (created with its folder) for the block. Waits for another holder, or with
    `busy` given raises RuntimeError(busy) at once instead."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX if busy is None else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(busy) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
