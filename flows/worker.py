"""`python -m flows.worker --pool s4d-process --limit 1`: `prefect worker start` that stops within seconds on SIGTERM.

Prefect's worker answers SIGTERM with a graceful stop that first waits for the flow runs it is still
submitting: measured 29 s here for a run that was being started, longer when the run is slow to start.
Service managers (systemd, `docker stop`, Kubernetes) send SIGTERM and kill ~10 s later. This wrapper passes
the first SIGTERM / SIGINT on; if the worker is still running STOP_GRACE_S later, it sends SIGTERM to every
process the worker started (a flow run then ends in a final state of its own and stops its jobs) and
kills the worker. Every argument goes to `prefect worker start` unchanged.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STOP_GRACE_S = 5.0  # the worker's own graceful stop, before its flow runs are stopped
CHILD_GRACE_S = 3.0  # flow runs' own stop (they report their state), before everything left is killed


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Linux /proc), parents before children."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", *args])
    stop_requested: list[float] = []

    def on_signal(signum, frame):
        if not stop_requested:
            stop_requested.append(time.monotonic())
            os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while True:
        try:
            return worker.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        if stop_requested and time.monotonic() - stop_requested[0] > STOP_GRACE_S:
            break
    # Still running: stop what it started, then the worker itself.
    started = descendants(worker.pid)
    signal_all(started, signal.SIGTERM)
    deadline = time.monotonic() + CHILD_GRACE_S
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in started):
        time.sleep(0.2)
    signal_all([worker.pid, *descendants(worker.pid)], signal.SIGKILL)
    worker.wait()
    print(f"the worker did not stop within {STOP_GRACE_S:.0f} s: stopped the flow runs it had started "
          f"({len(started)} processes) and the worker", file=sys.stderr)
    return 143


if __name__ == "__main__":
    sys.exit(main())
