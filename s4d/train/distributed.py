"""Process groups and the few collectives the training stages use.

One process, several on one machine, or several machines: the rendezvous comes from the environment that
`s4d.train.launch` (or torchrun / the deepspeed launcher) sets (RANK, WORLD_SIZE, MASTER_ADDR, ...). Every
collective is bounded by the timeout the launcher passes in S4D_DIST_TIMEOUT_S (params: launch.timeout_s),
so a lost node or a cut link ends every rank instead of hanging it. Without a process group (a plain
in-process call) the helpers below act as a world of one.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from datetime import timedelta

import torch
import torch.distributed as tdist

TIMEOUT_ENV = "S4D_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 60.0

from s4d.io import free_port
from s4d.precision import use_bf16 as measured_bf16


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def collective_timeout() -> timedelta:
    return timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))


def _device(cuda: bool) -> torch.device:
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed() -> Dist:
    """Initialise (once) the DeepSpeed process group and return this process's place in it."""
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:  # a plain single-process run: DeepSpeed would otherwise look for MPI
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(free_port())))
    import deepspeed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not tdist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False,
                                   timeout=collective_timeout())
    device = _device(cuda)
    return Dist(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), device)


def init_process_group() -> Dist:
    """A plain torch process group (fine-tuning, evaluation) when a launcher started this process with
    WORLD_SIZE > 1; otherwise no group at all (a world of one)."""
    cuda = torch.cuda.is_available()
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not tdist.is_initialized():
        tdist.init_process_group("nccl" if cuda else "gloo", timeout=collective_timeout())
    return Dist(rank(), world_size(), int(os.environ.get("LOCAL_RANK", 0)), _device(cuda))


def shutdown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


def world_size() -> int:
    return tdist.get_world_size() if tdist.is_initialized() else 1


def rank() -> int:
    return tdist.get_rank() if tdist.is_initialized() else 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks, in place (and return it)."""
    if world_size() > 1:
        if tdist.get_backend() == "nccl" and not tensor.is_cuda:  # NCCL reduces device tensors only
            tensor.copy_(all_reduce_sum(tensor.cuda()).cpu())
        else:
            tdist.all_reduce(tensor)
    return tensor


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s object on every rank (pickled; for decisions, small states and resume states)."""
    if world_size() == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's object, in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world_size() > 1:
        tdist.barrier()


# ---------------------------------------------------------------------------------------------- stop
_stop = {"signal": 0}


class Stopped(Exception):
    """SIGTERM / SIGINT reached a rank: a checkpoint was written and the run stopped."""


def install_stop_handler() -> dict:
    """SIGTERM / SIGINT ask the training loop to checkpoint and stop at the next step boundary. Returns
    the previous handlers (for restore_handlers)."""
    def handler(signum, _frame):
        _stop["signal"] = signum

    _stop["signal"] = 0
    return {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}


def restore_handlers(previous: dict) -> None:
    for s, handler in previous.items():
        signal.signal(s, handler)


def stop_signal() -> int:
    """The signal that asked this process to stop (0: none); local, no collective."""
    return _stop["signal"]


def step_hook(step: int) -> None:
    """The one test hook of the training loops (pretraining and fine-tuning), so that kill / stop tests act
    at a chosen step instead of racing a timer. Both loops call it after step N and after the checkpoint
    that step is due for, before they check for a stop request:
      S4D_STEP_HOOK=N:kill[:RANK]   SIGKILL to this process (rank RANK, default 0) there: the last
                                    checkpoint is the latest at or before step N
      S4D_STEP_HOOK=N:pause[:RANK]  write this pid to the file S4D_HOOK_FILE and wait until a signal asks
                                    the process to stop (it then stops at step N) or the file is removed"""
    spec = os.environ.get("S4D_STEP_HOOK")
    if not spec:
        return
    at, action, *who = spec.split(":")
    if int(at) != step or int(who[0] if who else 0) != rank():
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "pause":
        from s4d.io import write_text

        marker = Path(os.environ["S4D_HOOK_FILE"])
        write_text(marker, f"{os.getpid()}\n")
        while not stop_signal() and marker.exists():
            time.sleep(0.05)
    else:
        raise ValueError(f"S4D_STEP_HOOK={spec!r}: the action must be kill or pause")


def stop_requested() -> int:
    """The signal that asked any rank to stop (0: none). Collective, so that every rank stops at the same
    step: one rank's SIGTERM (its node's launcher was stopped) stops the whole job."""
    flag = torch.tensor([_stop["signal"]], dtype=torch.int64)
    if world_size() > 1:
        if tdist.get_backend() == "nccl":  # NCCL reduces device tensors only
            flag = flag.cuda()
        tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
    return int(flag.item())


def is_collective_failure(error: BaseException) -> bool:
    """A collective that failed because a peer vanished, a link was cut or the timeout passed."""
    text = str(error)
    return isinstance(error, tdist.DistError) or any(
        word in text for word in ("gloo", "Gloo", "NCCL", "Connection closed", "Connection reset", "Timed out",
                                  "timed out", "Socket Timeout", "TCPStore"))


def unanswered_ranks(window_s: float = 3.0) -> list[int] | None:
    """After a failed collective: the ranks that are gone, as far as the rendezvous store can tell, or None
    when the store (it lives in rank 0's process, on node 0) cannot be reached itself.

    Every rank whose collective failed announces itself in the store, then waits up to `window_s` for the
    others (rank 0 twice as long, so that it keeps serving the store while the others read it); the ranks
    that never announced are the lost ones: a vanished peer fails every survivor at once, a cut link fails
    them at the same timeout. Bounded: about window_s (2 x window_s on rank 0) plus a connect timeout."""
    me, world = rank_from_env(), int(os.environ.get("WORLD_SIZE", 1))
    # Rank 0 serves the store (on every interface): it reaches it over loopback even when the link that
    # carries MASTER_ADDR is gone.
    host = "127.0.0.1" if me == 0 else os.environ.get("MASTER_ADDR", "")
    try:
        store = tdist.TCPStore(host, int(os.environ["MASTER_PORT"]), is_master=False,
                               timeout=timedelta(seconds=window_s), wait_for_workers=False)
        store.set(f"s4d_alive/{me}", "1")
    except (RuntimeError, KeyError, ValueError, OSError):
        return None
    deadline = time.monotonic() + window_s * (2 if me == 0 else 1)
    seen = {me}
    while True:
        try:
            seen |= {r for r in range(world) if r not in seen and store.check([f"s4d_alive/{r}"])}
        except (RuntimeError, OSError):
            break  # the store went away meanwhile: report what was seen
        if len(seen) == world or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return sorted(set(range(world)) - seen)


def rank_from_env() -> int:
    return int(os.environ.get("RANK", 0))


def use_bf16(precision: str) -> bool:
    """params' precision: "bf16" always (CPU autocast too), "fp32" never, "auto" where measured faster on this
    machine (s4d.precision: CUDA with bf16, or a CPU whose bf16 matmul is clearly faster)."""
    return measured_bf16(precision, "cuda" if torch.cuda.is_available() else "cpu")
