"""zarr v3 activation stores: a background writer, a reader, a shuffling loader,
and sharded stores (one per capturing rank) read as one."""

from sae_hooks.store.capture import capture_to_store
from sae_hooks.store.loader import ActivationLoader
from sae_hooks.store.lock import StoreLockedError
from sae_hooks.store.reader import ActivationStore, Damage, PointStats, open_store
from sae_hooks.store.sharded import ShardedStore, capture_to_store_distributed
from sae_hooks.store.writer import StoreWriter

__all__ = [
    "ActivationLoader",
    "ActivationStore",
    "Damage",
    "PointStats",
    "ShardedStore",
    "StoreLockedError",
    "StoreWriter",
    "capture_to_store",
    "capture_to_store_distributed",
    "open_store",
]
