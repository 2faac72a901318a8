"""Who this process is among data-parallel peers, with no `--distributed` switch: the
same code runs alone or under `accelerate launch` / `torchrun`. The one home of
data parallelism, shared by the store (sharded capture) and the trainer.

`processes()` returns this process's `ProcessRank` (rank, world size, local rank). It uses torch.distributed's default group
when the caller already initialised one; otherwise, when a launcher set WORLD_SIZE
> 1, accelerate's `PartialState` creates it (NCCL on GPUs, gloo on CPUs); otherwise
the process is alone and every collective below is a no-op.

The trainer keeps its replicas identical without DistributedDataParallel: after
each backward pass ONE all-reduce carries the gradients, the per-latent fire
counts and the floating buffers (BatchTopK's running threshold), so every rank
applies the same averaged gradient, the same decoder constraint and the same
dead-latent bookkeeping. DDP would broadcast buffers from rank 0 instead of
averaging them, and would need the AuxK loss's use of the dictionary outside the
forward to be declared; one flat all-reduce is simpler and exactly as fast for a
model that is one weight matrix per side. A store's loader reads only its rank's
streams of every global batch (`ActivationLoader.read_share`); `RankSlice` cuts each
rank's share out of whole batches for sources without streams.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from sae_hooks.activations import RowPair, n_rows, take_rows

__all__ = [
    "ProcessRank",
    "RankSlice",
    "processes",
    "sample_on_main",
    "share_of",
    "sync_replicas_",
]


@dataclass(frozen=True)
class ProcessRank:
    """This process's rank among the data-parallel ranks, the world size, and the
    collectives over them (no-ops when the process is alone)."""

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

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's `tensor` (same shape on every rank) concatenated along dim 0, in
        rank order; `tensor` itself when the process is alone."""
        if not self.distributed:
            return tensor
        out = tensor.new_zeros((self.world, *tensor.shape))
        out[self.rank] = tensor
        return (
            self.all_reduce_sum_(out).flatten(0, 1) if tensor.dim() else self.all_reduce_sum_(out)
        )

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


def processes() -> ProcessRank:
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
    return ProcessRank()


def _from_group() -> ProcessRank:
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return ProcessRank(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local)


class _SampledOnMain:
    """A RowSource whose `sample` rank 0 reads and broadcasts, so the other ranks read
    nothing for it (they would read the same rows: same source, same seed)."""

    def __init__(self, source: Any, rank: ProcessRank, device: torch.device) -> None:
        self._source, self._rank, self._device = source, rank, device

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    def sample(self, n: int, *, seed: int) -> Any:
        rank = self._rank
        rows = self._source.sample(n, seed=seed) if rank.is_main else None
        parts = list(rows) if isinstance(rows, RowPair) else [rows]
        meta = rank.broadcast_object(
            [(tuple(t.shape), t.dtype, isinstance(rows, RowPair)) for t in parts]
            if rank.is_main
            else None
        )
        out = [
            rank.broadcast_(
                parts[i].to(self._device)
                if rank.is_main
                else torch.empty(shape, dtype=dtype, device=self._device)
            )
            for i, (shape, dtype, _) in enumerate(meta)
        ]
        return RowPair(*out) if meta[0][2] else out[0]


def sample_on_main(source: Any, rank: ProcessRank, device: torch.device) -> Any:
    """`source`, whose `sample` only rank 0 reads when there are several processes."""
    return _SampledOnMain(source, rank, device) if rank.distributed else source


class RankSlice:
    """This rank's share of every global batch: rows [r * b, (r + 1) * b), b = rows // world.

    Every rank iterates the same global sequence of batches, so the union of the
    ranks' batches at step t is exactly the batch a single process sees at step t,
    and the loader position (a global batch index) means the same for any world
    size: a checkpoint resumes under a different number of processes.
    """

    def __init__(self, loader: Any, rank: ProcessRank) -> None:
        self.loader, self.rank = loader, rank

    def __iter__(self) -> Iterator[torch.Tensor]:
        rank, world = self.rank.rank, self.rank.world
        for batch in self.loader:  # rows (N, d) or a RowPair of both sides
            b = n_rows(batch) // world
            yield take_rows(batch, slice(rank * b, (rank + 1) * b))

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)


def share_of(loader: Any, rank: int, world: int, streams: int | None = None) -> Any:
    """`loader` yielding only rank `rank`'s share of each global batch: through its own
    `read_share` where it has one (a store's loader then reads only its streams), else
    every batch read whole and sliced (`RankSlice`)."""
    share = getattr(loader, "read_share", None)
    if share is not None:
        return share(rank, world, streams)
    return loader if world == 1 else RankSlice(loader, ProcessRank(rank=rank, world=world))


@torch.no_grad()
def sync_replicas_(
    module: torch.nn.Module, counts: torch.Tensor, rank: ProcessRank
) -> torch.Tensor:
    """One all-reduce per step: mean gradients and floating buffers, summed `counts`.

    Each rank's loss is a mean over its equal share of the global batch, so the
    mean of the ranks' gradients is the gradient of the global batch's loss.
    Averaging BatchTopK's running threshold after its EMA update is the EMA of the
    ranks' mean batch threshold. Parameters without a gradient (the same ones on
    every rank) stay without one, as in a single process. Returns the global counts.
    """
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    dtype = torch.promote_types(grads[0].dtype if grads else torch.float32, torch.float32)
    flat = torch.cat([t.reshape(-1).to(dtype) for t in [*grads, *buffers, counts]])
    rank.all_reduce_sum_(flat)
    offset = 0
    for t in [*grads, *buffers]:
        t.copy_(flat[offset : offset + t.numel()].view_as(t) / rank.world)
        offset += t.numel()
    return flat[offset:].round().to(counts.dtype)
