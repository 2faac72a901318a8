"""Open any store for reading: one store, or the union of a sharded one."""

from __future__ import annotations

import os
from typing import Any

from sae_hooks.store.layout import sharded_world_size
from sae_hooks.store.reader import ActivationStore
from sae_hooks.store.sharded import ShardedStore


def open_store(
    location: str | os.PathLike, *, storage_options: dict[str, Any] | None = None
) -> ActivationStore | ShardedStore:
    """Open a store at a local path or any fsspec URL for reading.

    A sharded store (one store per capturing rank, see sae_hooks.store.sharded) opens
    as a ShardedStore: the union of its ranks, with the same reading interface.
    """
    try:
        return ActivationStore(location, storage_options=storage_options)
    except ValueError:
        if sharded_world_size(location, storage_options) is None:
            raise
        return ShardedStore(location, storage_options=storage_options)
