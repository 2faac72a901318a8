"""zarr v3 activation stores: a background writer, a reader, a shuffling loader,
and sharded stores (one per capturing rank) read as one.

Modules, each importing only those above it: layout (format, metadata), interface
(the StoreReader protocol, the typed errors), lock, fingerprint, commit (writer thread), writer, reader, sharded
(reads a sharded store), open (open_store), loader, capture, capture_distributed.
"""

from sae_hooks.store.capture import capture_to_store
from sae_hooks.store.capture_distributed import capture_to_store_distributed
from sae_hooks.store.interface import (
    Damage,
    PointStats,
    StoreChangedError,
    StoreDamagedError,
    StoreMismatchError,
    StoreReader,
)
from sae_hooks.store.loader import ActivationLoader
from sae_hooks.store.lock import StoreLockedError
from sae_hooks.store.open import open_store
from sae_hooks.store.reader import ActivationStore
from sae_hooks.store.sharded import ShardedStore
from sae_hooks.store.writer import StoreWriter

__all__ = [
    "ActivationLoader",
    "ActivationStore",
    "Damage",
    "PointStats",
    "ShardedStore",
    "StoreChangedError",
    "StoreDamagedError",
    "StoreLockedError",
    "StoreMismatchError",
    "StoreReader",
    "StoreWriter",
    "capture_to_store",
    "capture_to_store_distributed",
    "open_store",
]
