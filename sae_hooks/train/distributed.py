"""Data-parallel training: each rank's slice of the global batch.

The trainer keeps its replicas identical without DistributedDataParallel: after
each backward pass ONE all-reduce carries the gradients, the per-latent fire
counts and the floating buffers (BatchTopK's running threshold), so every rank
applies the same averaged gradient, the same decoder constraint and the same
dead-latent bookkeeping. DDP would broadcast buffers from rank 0 instead of
averaging them, and would need the AuxK loss's use of the dictionary outside the
forward to be declared; one flat all-reduce is simpler and exactly as fast for a
model that is one weight matrix per side.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from sae_hooks.distributed import Processes, processes

__all__ = ["Processes", "RankSlice", "processes"]


class RankSlice:
    """This rank's share of every global batch: rows [r * b, (r + 1) * b), b = rows // world.

    Every rank iterates the same global sequence of batches, so the union of the
    ranks' batches at step t is exactly the batch a single process sees at step t,
    and the loader position (a global batch index) means the same for any world
    size: a checkpoint resumes under a different number of processes.
    """

    def __init__(self, loader: Any, procs: Processes) -> None:
        self.loader, self.procs = loader, procs

    def __iter__(self) -> Iterator[torch.Tensor]:
        rank, world = self.procs.rank, self.procs.world
        for batch in self.loader:
            b = batch.shape[0] // world
            yield batch[rank * b : (rank + 1) * b]

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)
