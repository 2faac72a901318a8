"""zarr v3 activation stores: a background writer, a reader, a shuffling loader."""

from sae_hooks.store.capture import capture_to_store
from sae_hooks.store.loader import ActivationLoader
from sae_hooks.store.lock import StoreLockedError
from sae_hooks.store.reader import ActivationStore, Damage, PointStats, open_store
from sae_hooks.store.writer import StoreWriter

__all__ = [
    "ActivationLoader",
    "ActivationStore",
    "Damage",
    "PointStats",
    "StoreLockedError",
    "StoreWriter",
    "capture_to_store",
    "open_store",
]
