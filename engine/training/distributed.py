"""DistributedDataParallel plumbing: who am I, shard my batch, agree on a flag.

``python -m engine train`` reads the torchrun environment (RANK, WORLD_SIZE,
LOCAL_RANK); without it everything here is a no-op for one process. Sharding
keeps the *global* batch the same as a single-process run: every rank draws the
same shuffled order from the same seeded generator and takes its strided share
of each global batch, and DDP averages the gradients, so N processes take the
same optimiser steps as one process would (up to batch-norm statistics, which
each rank computes on its own share).
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed", "torchrun_command"]


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's share of one global batch of indices."""
        return idx[self.rank :: self.world] if self.enabled else idx

    def mean(self, values: list[float]) -> list[float]:
        """Average numbers across ranks (for logging train loss/accuracy)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return (t / self.world).tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any (so all ranks stop at the same step)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0], device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun set up (gloo on CPU, nccl on GPU); one process: no-op."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistContext(rank, world, local_rank)


def torchrun_command(nproc: int, engine_args: list[str]) -> list[str]:
    """``torchrun --standalone --nproc_per_node=N -m engine ARGS`` with this interpreter."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    launcher = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    return [*launcher, "--standalone", f"--nproc_per_node={int(nproc)}", "-m", "engine", *engine_args]
