"""file_lock: the one flock helper of the grid's pretrainings, the registry's promotions and the flow."""
import os
import threading
import time
from pathlib import Path

import pytest

from s4d.locks import file_lock


def blocked_on(path: Path) -> bool:
    """Whether this process waits for the flock on `path`: the kernel lists waiters in /proc/locks as
    `N: -> FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> ...`."""
    inode = os.stat(path).st_ino
    waiters = [line.split() for line in Path("/proc/locks").read_text().splitlines() if " -> " in line]
    return any(w[5] == str(os.getpid()) and w[6].endswith(f":{inode}") for w in waiters)


def test_busy_lock_names_the_holder_and_a_waiting_lock_gets_it_after_release(tmp_path):
    path = tmp_path / "sub" / ".x.lock"
    events = []
    waiter_has_it = threading.Event()

    def wait_for_it():
        with file_lock(path):
            events.append("waiter has it")
            waiter_has_it.set()

    with file_lock(path):
        assert path.is_file()
        with pytest.raises(RuntimeError, match="^someone has it$"):
            with file_lock(path, busy="someone has it"):
                pass
        waiter = threading.Thread(target=wait_for_it, daemon=True)
        waiter.start()
        deadline = time.monotonic() + 10
        while not blocked_on(path):  # the waiter is inside flock, queued behind this holder
            assert time.monotonic() < deadline, "the waiting thread never asked for the lock"
            time.sleep(0.01)
        assert not waiter_has_it.is_set()
        events.append("holder releases")
    assert waiter_has_it.wait(10)
    waiter.join(10)
    assert events == ["holder releases", "waiter has it"]
    with file_lock(path, busy="free now"):  # the waiter released it too
        pass
