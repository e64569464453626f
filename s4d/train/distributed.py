"""Process-group set-up for DeepSpeed: one process, several on one machine, or several machines.

The same entry point serves all cases: under torchrun / the deepspeed launcher the rendezvous comes from
the environment (RANK, WORLD_SIZE, MASTER_ADDR, ...); a plain `python -m` run gets a one-process group on
a free local port. On CPU, DeepSpeed uses gloo and the shared-memory op is disabled (it would JIT-compile).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, device)


def shutdown() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def use_bf16(precision: str) -> bool:
    """params' precision: "bf16" always (CPU autocast too), "fp32" never, "auto" where measured faster on this
    machine (s4d.precision: CUDA with bf16, or a CPU whose bf16 matmul is clearly faster)."""
    return measured_bf16(precision, "cuda" if torch.cuda.is_available() else "cpu")
