"""Where the dashboard's rows come from: an activation store, or rows in memory (an
`ActivationBatch`, the one type of rows with their metadata, or plain arrays).

Both give the same four things: activation rows read in chunks (the streaming
pass), a few scattered rows read back (the context windows of the top
examples), and the per-row metadata `token_ids`, `doc_index`, `position`, held
in memory (24 bytes a row; cap the scan with `max_rows` for huge stores).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sae_hooks.activations import ActivationBatch
from sae_hooks.store.interface import StoreReader
from sae_hooks.store.layout import DEFAULT_CHUNK_ROWS


@dataclass
class Rows:
    """Activation rows of one point plus their metadata, read on demand; use `from_store`,
    `from_batch` or `from_tensors`."""

    n_rows: int
    d_model: int
    token_ids: np.ndarray
    doc_index: np.ndarray
    position: np.ndarray
    chunk_rows: int
    _read: Any  # (start, stop) -> float array (stop - start, d)

    @classmethod
    def from_store(cls, store: StoreReader, point: str, *, max_rows: int | None = None) -> Rows:
        """The first `max_rows` committed rows (all by default) of `point` in a store."""
        n = store.n_rows if max_rows is None else min(_positive("max_rows", max_rows), store.n_rows)
        if n == 0:
            raise ValueError(f"the store at {store.location} has no committed rows to report on")
        d = store.d_model(point)  # raises a KeyError listing the stored points
        return cls(
            n_rows=n,
            d_model=d,
            token_ids=np.asarray(store.token_ids(0, n), dtype=np.int64),
            doc_index=np.asarray(store.doc_index(0, n), dtype=np.int64),
            position=np.asarray(store.position(0, n), dtype=np.int64),
            chunk_rows=store.chunk_rows(point),
            _read=lambda start, stop: store.read(point, start, stop),
        )

    @classmethod
    def from_batch(cls, batch: ActivationBatch, point: str | None = None) -> Rows:
        """The rows of `point` (the batch's only point by default) of rows in memory."""
        if point is None:
            if len(batch.points) != 1:
                raise ValueError(
                    f"the batch holds points {batch.points}: pass point= to choose one"
                )
            point = batch.points[0]
        if point not in batch.acts:
            raise KeyError(f"point {point!r} is not in the batch; it holds {batch.points}")
        if batch.n_rows == 0:
            raise ValueError("acts has no rows to report on")
        acts = batch.acts[point].detach().cpu()
        return cls(
            n_rows=batch.n_rows,
            d_model=acts.shape[1],
            token_ids=batch.token_ids.numpy(),
            doc_index=batch.doc_index.numpy(),
            position=batch.position.numpy(),
            chunk_rows=DEFAULT_CHUNK_ROWS,
            _read=lambda start, stop: acts[start:stop],
        )

    @classmethod
    def from_tensors(
        cls,
        acts: torch.Tensor | np.ndarray,
        token_ids: Any = None,
        doc_index: Any = None,
        position: Any = None,
    ) -> Rows:
        """Rows in memory. Without metadata every row is its own document, token id -1."""
        meta = {"token_ids": token_ids, "doc_index": doc_index, "position": position}
        return cls.from_batch(ActivationBatch.of_rows(acts, **meta))

    def chunks(self, chunk_rows: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, rows) for consecutive chunks, aligned with the storage chunks."""
        step = chunk_rows or self.chunk_rows
        for start in range(0, self.n_rows, step):
            yield start, _as_tensor(self._read(start, min(start + step, self.n_rows)))

    def take(self, index: np.ndarray) -> torch.Tensor:
        """Rows at sorted, unique `index`: one read per storage chunk touched."""
        out = []
        chunk_of = index // self.chunk_rows
        for c in np.unique(chunk_of):
            wanted = index[chunk_of == c]
            lo = int(wanted[0])
            block = _as_tensor(self._read(lo, int(wanted[-1]) + 1))
            out.append(block[torch.from_numpy(wanted - lo)])
        return torch.cat(out) if out else torch.empty(0, self.d_model)

    @property
    def is_vision(self) -> bool:
        """Image patches carry token id -1 (see ActivationBatch)."""
        return bool(self.n_rows) and bool((self.token_ids == -1).all())


def _as_tensor(block: Any) -> torch.Tensor:
    return block if isinstance(block, torch.Tensor) else torch.from_numpy(np.asarray(block))


def _positive(name: str, value: int) -> int:
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value
