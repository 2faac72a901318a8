"""Who this process is among data-parallel peers, with no `--distributed` switch: the
same code runs alone or under `accelerate launch` / `torchrun`. Shared by the store
(sharded capture) and the trainer.

`processes()` says who this process is. It uses torch.distributed's default group
when the caller already initialised one; otherwise, when a launcher set WORLD_SIZE
> 1, accelerate's `PartialState` creates it (NCCL on GPUs, gloo on CPUs); otherwise
the process is alone and every collective below is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Processes", "processes"]


@dataclass(frozen=True)
class Processes:
    """This process's place among the data-parallel ranks."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Overwrite `tensor` with rank `src`'s, in place."""
        if self.distributed:
            dist.broadcast(tensor, src=src)
        return tensor

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank `src`'s `obj` (any picklable value), on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def device(self, device: str) -> str:
        """`device` for this rank: a bare "cuda" becomes this rank's own GPU."""
        if self.distributed and device == "cuda":
            return f"cuda:{self.local_rank}"
        return device


def processes() -> Processes:
    """The ranks this process trains or captures with (a single process if not launched)."""
    if dist.is_available() and dist.is_initialized():
        return _from_group()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        # accelerate picks NCCL for GPUs; on a CPU-only host it must be told, or it
        # leaves the processes unconnected (and would report a world of 1).
        PartialState(cpu=not torch.accelerator.is_available())
        if not dist.is_initialized():
            raise RuntimeError(
                f"WORLD_SIZE={os.environ['WORLD_SIZE']} but accelerate did not create a process "
                "group; launch with `accelerate launch --num_processes N` or `torchrun`"
            )
        return _from_group()
    return Processes()


def _from_group() -> Processes:
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return Processes(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local)
