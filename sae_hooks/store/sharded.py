"""Read the stores of N capturing ranks as one store (written by capture_distributed).

Layout: the parent location is a zarr group whose only attribute is
`sharded_store = {"version": 1, "world_size": N}`; rank r writes an ordinary
activation store at `<parent>/rank-000r` with the normal StoreWriter, so locking,
commits and resume work per rank exactly as for a single store. Rank r captures
the input batches i with i % N == r, keeping each batch's global doc_offset, so
the N stores hold every row of the data exactly once.

`ShardedStore` (what `open_store(parent)` returns) presents the union read-only
with the ActivationStore interface: rows are numbered rank by rank (rank 0's
rows, then rank 1's, ...), statistics are combined exactly from the per-rank
counts and float64 means, and reads that cross a rank boundary are stitched.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from sae_hooks.store.interface import Damage, PointStats
from sae_hooks.store.layout import (
    DTYPES,
    SHARDED_ATTR,
    check_out,
    describe,
    rank_location,
    sharded_world_size,
    storage_to_numpy,
    storage_to_torch,
)
from sae_hooks.store.reader import ActivationStore


class ShardedStore:
    """Read-only union of the rank stores under one parent location."""

    def __init__(
        self, location: str | os.PathLike, *, storage_options: dict[str, Any] | None = None
    ) -> None:
        self.location = location
        self._storage_options = storage_options
        world = sharded_world_size(location, storage_options)
        if world is None:
            raise ValueError(
                f"{describe(location)} is not a sharded activation store (no '{SHARDED_ATTR}' "
                "attribute); write one with capture_to_store_distributed"
            )
        self.shards: list[ActivationStore] = []
        for rank in range(world):
            where = rank_location(location, rank)
            try:
                self.shards.append(ActivationStore(where, storage_options=storage_options))
            except FileNotFoundError as err:
                raise FileNotFoundError(
                    f"rank {rank} of the {world}-rank store at {describe(location)} is missing "
                    f"({describe(where)}): its capture never started; run (or resume) the "
                    f"capture with {world} processes"
                ) from err
        self._check_consistent()
        self._offsets = np.cumsum([0] + [s.n_rows for s in self.shards])

    def refresh(self) -> None:
        """Re-read every rank's attributes, e.g. to see rows committed since opening."""
        for shard in self.shards:
            shard.refresh()
        self._offsets = np.cumsum([0] + [s.n_rows for s in self.shards])

    def check_unchanged(self) -> None:
        """Raise StoreChangedError if any rank's store was replaced since it was opened."""
        for shard in self.shards:
            shard.check_unchanged()

    def _check_consistent(self) -> None:
        first = self.shards[0]
        for rank, shard in enumerate(self.shards[1:], 1):
            for what in ("points", "dtype"):
                if getattr(shard, what) != getattr(first, what):
                    raise ValueError(
                        f"rank {rank} of {describe(self.location)} holds {what} "
                        f"{getattr(shard, what)!r} but rank 0 holds {getattr(first, what)!r}; "
                        "the ranks of one store must capture the same points in the same dtype"
                    )
            for p in first.points:
                if shard.d_model(p) != first.d_model(p):
                    raise ValueError(
                        f"rank {rank} of {describe(self.location)} holds d_model="
                        f"{shard.d_model(p)} for {p!r}, rank 0 holds {first.d_model(p)}"
                    )

    def __repr__(self) -> str:
        return (
            f"ShardedStore({describe(self.location)!r}, ranks={len(self.shards)}, "
            f"n_rows={self.n_rows}, points={self.points}, dtype={self.dtype!r})"
        )

    def __len__(self) -> int:
        return self.n_rows

    # -- what ActivationStore offers -------------------------------------------------

    @property
    def n_rows(self) -> int:
        return int(self._offsets[-1])

    @property
    def committed_inputs(self) -> int:
        return sum(s.committed_inputs for s in self.shards)

    @property
    def read_threads(self) -> int | None:
        """Chunks worth reading at once (the rank stores', see ActivationStore)."""
        return self.shards[0].read_threads if self.shards else None

    @property
    def points(self) -> list[str]:
        return self.shards[0].points

    @property
    def dtype(self) -> str:
        return self.shards[0].dtype

    @property
    def model(self) -> str:
        return self.shards[0].model

    @property
    def source(self) -> str:
        return self.shards[0].source

    def d_model(self, point: str) -> int:
        return self.shards[0].d_model(point)

    def chunk_rows(self, point: str) -> int:
        return self.shards[0].chunk_rows(point)

    def stats(self, point: str) -> PointStats:
        """Mean and E||x||^2 over every rank's rows, weighted by the ranks' counts (float64)."""
        self.shards[0]._check_point(point)
        total, mean, sq = 0, 0.0, 0.0
        for shard in self.shards:
            s = shard.attrs.get("stats", {}).get(point)
            if not s or not s.get("count"):
                continue
            total += s["count"]
            mean = mean + np.asarray(s["mean"], np.float64) * s["count"]
            sq += s["mean_sq_norm"] * s["count"]
        if not total:
            raise ValueError(f"no rank has committed rows for {point!r}, so no statistics yet")
        return PointStats(torch.tensor(mean / total, dtype=torch.float32), sq / total)

    def _pieces(self, start: int, stop: int | None) -> Iterator[tuple[ActivationStore, int, int]]:
        """(rank store, local start, local stop) covering global rows [start, stop)."""
        stop = self.n_rows if stop is None else stop
        if not 0 <= start <= stop <= self.n_rows:
            raise IndexError(f"rows [{start}, {stop}) outside the {self.n_rows} committed rows")
        last = len(self.shards) - 1  # start == n_rows: an empty read of the last rank
        first = min(max(int(np.searchsorted(self._offsets, start, side="right")) - 1, 0), last)
        for rank in range(first, len(self.shards)):
            lo, hi = int(self._offsets[rank]), int(self._offsets[rank + 1])
            if lo >= stop and rank > first:
                break
            yield self.shards[rank], max(start, lo) - lo, min(stop, hi) - lo

    def _gather(self, read: str, *args: Any, start: int, stop: int | None) -> np.ndarray:
        parts = [getattr(s, read)(*args, a, b) for s, a, b in self._pieces(start, stop)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def read_raw(
        self, point: str, start: int = 0, stop: int | None = None, *, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Rows exactly as stored (bfloat16 as uint16 bits), across rank boundaries."""
        if out is None:
            return self._gather("read_raw", point, start=start, stop=stop)
        pieces = list(self._pieces(start, stop))
        rows = sum(b - a for _, a, b in pieces)
        check_out(out, (rows, self.d_model(point)), DTYPES[self.dtype][0])
        at = 0
        for shard, a, b in pieces:
            shard.read_raw(point, a, b, out=out[at : at + b - a])
            at += b - a
        return out

    def read(self, point: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        return storage_to_numpy(self.read_raw(point, start, stop), self.dtype)

    def read_tensor(self, point: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return storage_to_torch(self.read_raw(point, start, stop), self.dtype)

    def token_ids(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._gather("token_ids", start=start, stop=stop)

    def doc_index(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._gather("doc_index", start=start, stop=stop)

    def position(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._gather("position", start=start, stop=stop)

    def verify(self) -> list[Damage]:
        """Every rank's damage, with global row numbers and the array named by its rank."""
        damaged = []
        for rank, shard in enumerate(self.shards):
            offset = int(self._offsets[rank])
            for d in shard.verify():
                rows = (d.rows[0] + offset, d.rows[1] + offset)
                damaged.append(Damage(f"rank-{rank:04d}/{d.array}", d.chunk, rows, d.error))
        return damaged
