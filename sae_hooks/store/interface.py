"""What every store reader offers: the `StoreReader` protocol and the values it returns.

ActivationStore (one store) and ShardedStore (the union of per-rank stores) both
satisfy it; the loader, the training sources and the report are typed against it,
so anything that reads rows this way can feed them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch


class PointStats(NamedTuple):
    """Running statistics of one hook point over the committed rows (float64 sums)."""

    mean: torch.Tensor  # (d,) float32
    mean_sq_norm: float  # E ||x||^2


@dataclass(frozen=True)
class Damage:
    """One unreadable or missing stored chunk (or shard) found by `verify()`."""

    array: str
    chunk: int
    rows: tuple[int, int]
    error: str


class StoreDamagedError(ValueError):
    """Committed rows of a store cannot be read as written (a chunk missing or corrupt).

    `store`, `array` and `rows` ([start, stop) of the read) say where; never zeros.
    """

    def __init__(self, message: str, *, store: str, array: str, rows: tuple[int, int]) -> None:
        super().__init__(message)
        self.store, self.array, self.rows = store, array, rows


class StoreMismatchError(ValueError):
    """A resume would append rows unlike the store's: another model, data or settings.

    `fields` maps each differing fingerprint field to (stored, now).
    """

    def __init__(self, message: str, *, fields: dict[str, tuple[object, object]]) -> None:
        super().__init__(message)
        self.fields = fields


class StoreChangedError(RuntimeError):
    """The store was replaced (or removed) while it was being read: rows read from then
    on would come from another capture. `store` names it."""

    def __init__(self, message: str, *, store: str) -> None:
        super().__init__(message)
        self.store = store


@runtime_checkable
class StoreReader(Protocol):
    """Read-only access to the committed rows of a store, point by point.

    Row ranges are [start, stop) over the committed rows; `stop=None` means all.
    """

    location: str | os.PathLike

    @property
    def n_rows(self) -> int: ...

    @property
    def committed_inputs(self) -> int: ...

    @property
    def points(self) -> list[str]: ...

    @property
    def dtype(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def source(self) -> str: ...

    def __len__(self) -> int: ...

    def refresh(self) -> None: ...

    def d_model(self, point: str) -> int: ...

    def chunk_rows(self, point: str) -> int: ...

    def stats(self, point: str) -> PointStats: ...

    def read_raw(
        self, point: str, start: int = 0, stop: int | None = None, *, out: np.ndarray | None = None
    ) -> np.ndarray: ...

    def read(self, point: str, start: int = 0, stop: int | None = None) -> np.ndarray: ...

    def read_tensor(self, point: str, start: int = 0, stop: int | None = None) -> torch.Tensor: ...

    def token_ids(self, start: int = 0, stop: int | None = None) -> np.ndarray: ...

    def doc_index(self, start: int = 0, stop: int | None = None) -> np.ndarray: ...

    def position(self, start: int = 0, stop: int | None = None) -> np.ndarray: ...

    def verify(self) -> list[Damage]: ...
