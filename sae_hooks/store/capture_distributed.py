"""Capture with N processes into a sharded store: rank r writes its own ordinary store.

Layout: the parent location is a zarr group whose only attribute is
`sharded_store = {"version": 1, "world_size": N}`; rank r writes an ordinary
activation store at `<parent>/rank-000r` through capture_to_store, so locking,
commits and resume work per rank exactly as for a single store. Rank r captures
the input batches i with i % N == r, keeping each batch's global doc_offset, so
the N stores hold every row of the data exactly once. sae_hooks.store.sharded
reads them back as one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import zarr.errors

from sae_hooks.data.batch import InputBatch, InputBatches
from sae_hooks.store.capture import capture_to_store
from sae_hooks.store.layout import (
    SHARDED_ATTR,
    SHARDED_VERSION,
    describe,
    open_group,
    rank_location,
)
from sae_hooks.store.overwrite import check_replaceable
from sae_hooks.store.reader import ActivationStore


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
    location: str | os.PathLike,
    world: int,
    overwrite: bool,
    storage_options: dict | None,
    again: bool = False,
) -> None:
    """Create the parent group, or check that an existing one has `world` ranks."""
    meta = {SHARDED_ATTR: {"version": SHARDED_VERSION, "world_size": world}}
    where = describe(location)
    try:
        group = open_group(location, "r+", storage_options)
    except (FileNotFoundError, zarr.errors.BaseZarrError):
        group = None
    if overwrite:
        check_replaceable(location, storage_options)  # only a store is ever replaced
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
    if (group is not None or again) and not overwrite:
        raise ValueError(
            f"{where} holds something other than a sharded activation store; pass "
            "overwrite=True to replace it or choose another location"
        )
    try:
        open_group(location, "w" if group is not None else "w-", storage_options, meta)
    except FileExistsError:  # an independent rank created it meanwhile: check it (once)
        _prepare_parent(location, world, False, storage_options, again=True)


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
        self.data, self.rank, self.world = InputBatches(data), rank, world
        self.description = self.data.description

    def __iter__(self) -> Iterator[InputBatch]:
        return self.iter_from(0)

    def fingerprint(self) -> dict[str, Any]:
        """The data's own fingerprint (sae_hooks.store.fingerprint) plus the rank split."""
        inner = getattr(self.data.data, "fingerprint", None)
        return {**(inner() if callable(inner) else {}), "rank": self.rank, "world": self.world}

    def iter_from(self, k: int) -> Iterator[InputBatch]:
        first = k * self.world + self.rank
        for i, batch in enumerate(self.data.iter_from(first)):
            if i % self.world == 0:
                yield batch
