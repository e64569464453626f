"""The one launcher of the training stages: 1 process, N processes on one machine, or one launcher per node.

    python -m s4d.train.finetune finetune.nproc_per_node=2         # a stage with nproc > 1 launches itself
    python -m s4d.train.launch --nproc_per_node 2 s4d.train.evaluate --checkpoint m.pt
    # two machines, no ssh: one launcher per node, the same command with its own --node_rank
    python -m s4d.train.launch --nnodes 2 --node_rank R --master_addr HOST --master_port 29500 \\
        --nproc_per_node 8 s4d.train.finetune --params params.yaml

Why not torchrun: torchrun starts each worker in its own session, so killing the launcher's process group
leaves the workers training, and a SIGTERM to the command does not stop them. Here the workers stay in
the launcher's process group (kill -9 of the group kills them) and die with it: each asks the kernel for
SIGTERM when the launcher dies (PR_SET_PDEATHSIG). A SIGTERM / SIGINT to the launcher is passed on; the
training loops checkpoint at the next step and exit (`launch.grace_s` bounds it, then SIGKILL). When one
worker fails, the launcher kills its other workers at once and exits naming the rank; the ranks on other
nodes then fail their next collective within `launch.timeout_s` (a peer that vanished is noticed at once,
a cut link at the timeout) and their launchers do the same. Each rank whose collective failed names the
lost ranks and nodes: those that do not answer in the rendezvous store within seconds (node 0 itself when
that store, on rank 0, is out of reach). Restarting every launcher resumes from the last
checkpoint, which rank 0 reads and sends to the others (no shared filesystem needed for resuming).

Rendezvous: MASTER_ADDR:MASTER_PORT (rank 0's node). On machines whose hostname resolves to 127.0.0.1
(containers, network namespaces) gloo must be told the interface to use: `launch.socket_ifname` (sets
GLOO_SOCKET_IFNAME, and NCCL_SOCKET_IFNAME on CUDA).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time

from s4d.io import free_port
from s4d.train.distributed import (TIMEOUT_ENV, Stopped, init_process_group, install_stop_handler,
                                   is_collective_failure, rank, rank_from_env, restore_handlers, shutdown,
                                   unanswered_ranks, world_size)

PR_SET_PDEATHSIG = 1
DEFAULT_MASTER_PORT = 29500


def _die_with_parent(parent: int):
    """preexec_fn of a worker: SIGTERM when the launcher dies (and exit now if it already has)."""
    def set_pdeathsig():
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(143)
    return set_pdeathsig


def worker_env(rank: int, local_rank: int, world: int, nproc: int, node_rank: int, master_addr: str,
               master_port: int, timeout_s: float, socket_ifname: str) -> dict:
    env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world),
           "LOCAL_WORLD_SIZE": str(nproc), "GROUP_RANK": str(node_rank), "NODE_RANK": str(node_rank),
           "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port), TIMEOUT_ENV: str(timeout_s),
           "PYTHONUNBUFFERED": "1"}
    if nproc > 1 and "OMP_NUM_THREADS" not in os.environ:  # N processes share the cores instead of N x all
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    if socket_ifname:
        env["GLOO_SOCKET_IFNAME"] = env["NCCL_SOCKET_IFNAME"] = socket_ifname
    return env


def launch(module: str, args: list[str], nproc: int, *, nnodes: int = 1, node_rank: int = 0,
           master_addr: str = "127.0.0.1", master_port: int = 0, timeout_s: float = 60.0,
           socket_ifname: str = "", grace_s: float = 120.0, say=None) -> int:
    """Run `python -m module args` as ranks node_rank*nproc .. +nproc-1 of nnodes*nproc; wait for them.

    Returns 0 when every worker succeeded, else the first failure's exit status (128+signal for a
    signal). Worker processes never outlive this call."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    if not 0 <= node_rank < nnodes:
        raise ValueError(f"--node_rank {node_rank} is outside 0..{nnodes - 1}")
    if not master_port:
        master_port = free_port() if nnodes == 1 else DEFAULT_MASTER_PORT
    world = nnodes * nproc
    workers: dict[int, subprocess.Popen] = {}
    stop = {"signal": 0}

    def forward(signum, _frame):
        stop["signal"] = stop["signal"] or signum
        for proc in workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for local_rank in range(nproc):
            rank = node_rank * nproc + local_rank
            env = worker_env(rank, local_rank, world, nproc, node_rank, master_addr, master_port, timeout_s,
                             socket_ifname)
            workers[rank] = subprocess.Popen([sys.executable, "-m", module, *args], env=env,
                                             preexec_fn=_die_with_parent(os.getpid()))
        return _wait(workers, stop, grace_s, node_rank, say)
    finally:
        for proc in workers.values():  # whatever happened above (an exception included): no survivor
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)


def _wait(workers: dict[int, subprocess.Popen], stop: dict, grace_s: float, node_rank: int, say) -> int:
    deadline = None
    while True:
        codes = {rank: proc.poll() for rank, proc in workers.items()}
        failed = [(rank, code) for rank, code in codes.items() if code not in (None, 0)]
        if stop["signal"]:
            deadline = deadline or time.monotonic() + grace_s
            if all(code is not None for code in codes.values()):
                return 128 + stop["signal"]
            if time.monotonic() > deadline:
                say(f"launch: node {node_rank}: workers still running {grace_s:.0f} s after "
                    f"{signal.Signals(stop['signal']).name}; killing them")
                return 128 + stop["signal"]
        elif failed:
            rank, code = failed[0]
            status = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
            if code != 2:  # 2 is a user error the worker has already explained on one line
                say(f"launch: node {node_rank}: rank {rank} (pid {workers[rank].pid}) exited with {status}; "
                    f"stopping the other {len(workers) - 1} worker(s) of this node")
            return 128 - code if code < 0 else code
        elif all(code == 0 for code in codes.values()):
            return 0
        time.sleep(0.1)


def relaunch(module: str, argv: list[str], nproc: int, launch_cfg) -> int:
    """A stage entry point with nproc > 1 that is not under a launcher yet becomes one (this machine)."""
    return launch(module, argv, nproc, timeout_s=launch_cfg.timeout_s, socket_ifname=launch_cfg.socket_ifname,
                  grace_s=launch_cfg.grace_s)


class StageExit(Exception):
    """A failure a stage words itself: rank 0 prints the message, the process exits with `code`."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def run_worker(work, report=None, user_errors: tuple = (), join=init_process_group) -> int:
    """The worker side of a stage: join the launcher's process group (if any; `join` makes it, DeepSpeed's
    for pretraining), checkpoint-and-stop on SIGTERM, and turn the known failures into one line and an exit
    status: 2 for a user error, a StageExit's own code, 143 when stopped by a signal (resumable), 1 when
    another rank was lost (naming this rank and the world)."""
    previous = install_stop_handler()
    broken = False
    try:
        join()
        result = work()
        if report is not None and rank() == 0:
            report(result)
        return 0
    except user_errors as e:
        if rank() == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except StageExit as e:
        if rank() == 0:
            print(str(e), file=sys.stderr)
        return e.code
    except Stopped as e:
        if rank() == 0:
            print(str(e), file=sys.stderr)
        return 143
    except Exception as e:  # noqa: BLE001 - only collective failures are explained here
        if world_size() > 1 and is_collective_failure(e):
            print(lost_peer_message(e), file=sys.stderr, flush=True)
            broken = True  # tearing down a broken group can block: leave it to the process exit
            return 1
        raise
    finally:
        restore_handlers(previous)
        if not broken:
            shutdown()


def lost_peer_message(error: BaseException) -> str:
    """The one line a rank prints when a collective failed: this rank, and the rank(s) and node(s) that were
    lost (the ones that did not answer in the rendezvous store), or node 0 when the store itself is out of
    reach."""
    me, world = rank_from_env(), int(os.environ.get("WORLD_SIZE", 1))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world)) or world
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    lost = unanswered_ranks()
    if lost is None:
        who = (f"node 0 (rank 0, the rendezvous host {os.environ.get('MASTER_ADDR')}:"
               f"{os.environ.get('MASTER_PORT')}) cannot be reached: it was lost or the link to it was cut")
    elif lost:
        nodes = sorted({r // per_node for r in lost})
        who = (f"lost: rank{'s' if len(lost) > 1 else ''} {', '.join(map(str, lost))} "
               f"(node{'s' if len(nodes) > 1 else ''} {', '.join(map(str, nodes))}) did not answer")
    else:
        who = "every rank answered afterwards: a link between them was cut or a collective timed out"
    return (f"rank {me} of {world} (node {os.environ.get('NODE_RANK', 0)}): a collective failed, another rank "
            f"was lost or the link was cut ({first}); {who}; the last checkpoint is kept, run the same command "
            f"on every node to resume")


def under_launcher() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def stage_params(args: list[str]):
    """The params a stage command line (`--params FILE key=value ...`) resolves to, or exit(2) naming the
    problem: the launcher takes its timeout and interface from them."""
    from s4d.stage import load_stage_params

    params_file, overrides, skip = "params.yaml", [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
        elif arg == "--params":
            params_file, skip = args[i + 1] if i + 1 < len(args) else "", True
        elif arg.startswith("--params="):
            params_file = arg.split("=", 1)[1]
        elif not arg.startswith("-") and "=" in arg:
            overrides.append(arg)
        elif arg.startswith("--"):
            skip = "=" not in arg  # another option's value follows (e.g. --out DIR)
    try:
        return load_stage_params(argparse.Namespace(params=params_file, overrides=overrides))
    except SystemExit as e:  # the stage's one-line message, with the user-error status
        print(e.code, file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="python -m s4d.train.launch [options] MODULE [module arguments ...]")
    parser.add_argument("--nproc_per_node", type=int, default=1, help="worker processes on this node (default 1)")
    parser.add_argument("--nnodes", type=int, default=1, help="nodes, one launcher each (default 1)")
    parser.add_argument("--node_rank", type=int, default=0, help="this node's rank, 0..nnodes-1 (default 0)")
    parser.add_argument("--master_addr", default="127.0.0.1", help="address of node 0 (default 127.0.0.1)")
    parser.add_argument("--master_port", type=int, default=0,
                        help=f"rendezvous port on node 0 (default: a free port on one node, {DEFAULT_MASTER_PORT} "
                             "on several)")
    parser.add_argument("module", help="the stage module, e.g. s4d.train.finetune")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the stage's own arguments (--params, key=value)")
    a = parser.parse_args(argv)
    for name in ("nproc_per_node", "nnodes"):
        if getattr(a, name) < 1:
            parser.exit(2, f"error: --{name} must be >= 1, got {getattr(a, name)}\n")
    if not 0 <= a.node_rank < a.nnodes:
        parser.exit(2, f"error: --node_rank must be in 0..{a.nnodes - 1}, got {a.node_rank}\n")
    cfg = stage_params(a.args).launch
    return launch(a.module, a.args, a.nproc_per_node, nnodes=a.nnodes, node_rank=a.node_rank,
                  master_addr=a.master_addr, master_port=a.master_port, timeout_s=cfg.timeout_s,
                  socket_ifname=cfg.socket_ifname, grace_s=cfg.grace_s)


if __name__ == "__main__":
    sys.exit(main())
