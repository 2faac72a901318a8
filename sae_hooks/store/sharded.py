"""One store per capturing process, read as one: capture with N ranks, train on the union.

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
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr.errors

from sae_hooks.store.capture import capture_to_store
from sae_hooks.store.layout import describe, is_url, open_group, storage_to_numpy, storage_to_torch
from sae_hooks.store.reader import ActivationStore, Damage, PointStats

SHARDED_ATTR = "sharded_store"
SHARDED_VERSION = 1


def rank_location(location: str | os.PathLike, rank: int) -> str | Path:
    """Where rank `rank` of the sharded store at `location` writes its own store."""
    name = f"rank-{rank:04d}"
    if is_url(location):
        return f"{str(location).rstrip('/')}/{name}"
    return Path(location).expanduser() / name


def sharded_world_size(
    location: str | os.PathLike, storage_options: dict[str, Any] | None = None
) -> int | None:
    """The number of rank stores at `location`, or None if it is not a sharded store."""
    try:
        attrs = dict(open_group(location, "r", storage_options).attrs)
    except (FileNotFoundError, zarr.errors.BaseZarrError):
        return None
    meta = attrs.get(SHARDED_ATTR)
    return int(meta["world_size"]) if isinstance(meta, dict) else None


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

    def read_raw(self, point: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows exactly as stored (bfloat16 as uint16 bits), across rank boundaries."""
        return self._gather("read_raw", point, start=start, stop=stop)

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


# ------------------------------------------------------------------------- capture


def capture_to_store_distributed(
    model: Any,
    points: str | list[str],
    data: Iterable,
    location: str | os.PathLike,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
    **capture_kwargs: Any,
) -> ActivationStore:
    """This rank's part of a capture into the sharded store at `location`.

    Run it in every process (`accelerate launch --num_processes N script.py`): rank
    r captures input batches i with i % N == r into `<location>/rank-000r` through
    capture_to_store (same keyword arguments, same per-rank resume). Rank and world
    size come from the process group (see sae_hooks.distributed), which also
    lets the call wait until every rank has finished; or give `rank` and
    `world_size` to run the ranks as independent jobs (no waiting: open the merged
    view once all of them are done). Returns this rank's store; the union is
    `open_store(location)`. Resuming needs the same number of ranks.
    """
    if "max_rows" in capture_kwargs:
        raise TypeError(
            "capture_to_store_distributed takes no max_rows: a row limit cannot be split "
            "exactly across ranks; limit the data (number of input batches) instead"
        )
    procs = _ranks(rank, world_size)
    r, world = procs.rank, procs.world
    if rank is not None or procs.is_main:  # in a process group only rank 0 does it
        _prepare_parent(location, world, overwrite, storage_options)
    procs.barrier()
    store = capture_to_store(
        model,
        points,
        _RankBatches(data, r, world),
        rank_location(location, r),
        overwrite=overwrite,
        storage_options=storage_options,
        **capture_kwargs,
    )
    procs.barrier()
    return store


def _ranks(rank: int | None, world_size: int | None) -> Any:
    from sae_hooks.distributed import ProcessRank, processes

    if (rank is None) != (world_size is None):
        raise ValueError("give both rank and world_size, or neither (to use the process group)")
    if rank is None:
        return processes()
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int)):
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank!r}")
    return _Independent(rank=rank, world=world_size) if world_size > 1 else ProcessRank()


def _prepare_parent(
    location: str | os.PathLike, world: int, overwrite: bool, storage_options: dict | None
) -> None:
    """Create the parent group, or check that an existing one has `world` ranks."""
    meta = {SHARDED_ATTR: {"version": SHARDED_VERSION, "world_size": world}}
    where = describe(location)
    try:
        group = open_group(location, "r+", storage_options)
    except (FileNotFoundError, zarr.errors.BaseZarrError):
        group = None
    if group is not None:
        attrs = dict(group.attrs)
        found = attrs.get(SHARDED_ATTR)
        if isinstance(found, dict) and found.get("world_size") == world:
            return
        if isinstance(found, dict) and overwrite:
            group.attrs.update(meta)  # stale ranks beyond `world` are never read
            return
        if isinstance(found, dict):
            raise ValueError(
                f"{where} was captured by {found.get('world_size')} ranks, not {world}; resume "
                f"it with {found.get('world_size')} processes or pass overwrite=True"
            )
        if not overwrite:
            raise ValueError(
                f"{where} holds something other than a sharded activation store; pass "
                "overwrite=True to replace it or choose another location"
            )
    try:
        open_group(location, "w" if group is not None else "w-", storage_options, meta)
    except FileExistsError:  # an independent rank created it meanwhile: check it
        _prepare_parent(location, world, False, storage_options)


class _Independent:
    """Explicit rank / world without a process group: nothing to wait for."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        pass


class _RankBatches:
    """Input batches i with i % world == rank, each with its global doc_offset.

    `iter_from(k)` starts at this rank's k-th batch, which is how capture_to_store
    resumes a rank store from its own `committed_inputs`.
    """

    def __init__(self, data: Iterable, rank: int, world: int) -> None:
        self.data, self.rank, self.world = data, rank, world
        self.description = getattr(data, "description", type(data).__name__)

    def __iter__(self) -> Iterator[Any]:
        return self.iter_from(0)

    def iter_from(self, k: int) -> Iterator[Any]:
        first = k * self.world + self.rank
        if hasattr(self.data, "iter_from"):
            for i, batch in enumerate(self.data.iter_from(first)):
                if i % self.world == 0:
                    yield batch
            return
        # A plain iterable: walk it from the start, counting documents for doc_offset.
        running = 0
        for i, batch in enumerate(self.data):
            offset, inputs = _offset_and_inputs(batch, running)
            running = offset + next(iter(inputs.values())).shape[0]
            if i >= first and i % self.world == self.rank:
                yield offset, inputs


def _offset_and_inputs(batch: Any, running: int) -> tuple[int, Mapping]:
    """(doc_offset, inputs) of one batch, in the forms capture_to_store accepts."""
    if isinstance(batch, Mapping) and hasattr(batch, "doc_offset"):
        return int(batch.doc_offset), batch
    if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[1], Mapping):
        return int(batch[0]), batch[1]
    if isinstance(batch, Mapping):
        return running, batch
    raise TypeError(
        f"data yielded {type(batch).__name__}; expected an InputBatch, an input dict "
        "(input_ids/attention_mask or pixel_values) or a (doc_offset, inputs) pair"
    )
