"""Rows of activations as they travel between the steps: one type for each shape.

`ActivationBatch` is captured rows with their metadata (token id, document, position)
at one or more hook points: what `hooks.capture_batch` returns, the store's writer
appends, the live training sources split into train and held-out rows and the report
reads. `RowPair` is a batch of paired training rows (x, y): a transcoder reads x (an
MLP's input) and predicts y (its output); paired sources' loaders yield it where an
SAE's loaders yield a tensor of rows.

This module imports torch and numpy only, so every layer of the package may use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

DEFAULT_POINT = "acts"
"""The point name of rows given without one (`ActivationBatch.of_rows`)."""


@dataclass
class ActivationBatch:
    """Rows of one or more points with their metadata, in document-major order.

    Captured rows (`hooks.capture_batch`) have pad rows dropped; their `acts` stay on
    the model's device, the int64 metadata is on the CPU.
    """

    acts: dict[str, torch.Tensor]  # point -> (n_rows, d)
    token_ids: torch.Tensor  # -1 for image patches
    doc_index: torch.Tensor
    position: torch.Tensor  # among real tokens (left padding excluded); patch index, CLS = 0

    @property
    def n_rows(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def points(self) -> list[str]:
        return list(self.acts)

    def rows(self, lo: int, hi: int) -> ActivationBatch:
        """Rows [lo, hi) of every point and their metadata (itself when that is all)."""
        if lo == 0 and hi == self.n_rows:
            return self
        return ActivationBatch(
            acts={p: x[lo:hi] for p, x in self.acts.items()},
            token_ids=self.token_ids[lo:hi],
            doc_index=self.doc_index[lo:hi],
            position=self.position[lo:hi],
        )

    @classmethod
    def of_rows(
        cls,
        acts: torch.Tensor | np.ndarray,
        *,
        point: str = DEFAULT_POINT,
        token_ids: Any = None,
        doc_index: Any = None,
        position: Any = None,
    ) -> ActivationBatch:
        """Floating rows (n_rows, d) of one point, on the CPU, with metadata given as
        tensors, arrays or lists; without it every row is its own document (doc_index
        0..n-1), token id -1 and position 0."""
        if isinstance(acts, np.ndarray):
            acts = torch.from_numpy(acts)
        if not isinstance(acts, torch.Tensor) or acts.dim() != 2 or not acts.is_floating_point():
            got = tuple(acts.shape) if isinstance(acts, torch.Tensor) else type(acts).__name__
            raise ValueError(f"acts must be floating rows of shape (n_rows, d_model), got {got}")
        n = acts.shape[0]
        return cls(
            acts={point: acts.detach().cpu()},
            token_ids=_int64("token_ids", token_ids, n, np.full(n, -1)),
            doc_index=_int64("doc_index", doc_index, n, np.arange(n)),
            position=_int64("position", position, n, np.zeros(n, np.int64)),
        )


def _int64(name: str, value: Any, n: int, default: np.ndarray) -> torch.Tensor:
    """One int64 value per row as a CPU tensor; `default` when value is None."""
    if value is None:
        arr = default
    elif isinstance(value, torch.Tensor):
        arr = value.detach().cpu().numpy()
    else:
        arr = np.asarray(value)
    if arr.shape != (n,):
        raise ValueError(f"{name} has shape {arr.shape}, expected ({n},): one value per row")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    return torch.tensor(arr, dtype=torch.int64)


class RowPair(NamedTuple):
    """Paired training rows: the SAE reads x (N, d_in) and must predict y (N, d_out).

    Unpacks as `x, y = pair`. The trainer's intake handles a RowPair and a tensor of
    rows alike through `n_rows`, `take_rows`, `to_training` and `full_batches` below.
    """

    x: torch.Tensor
    y: torch.Tensor


Batch = torch.Tensor | RowPair
"""A batch of training rows: a tensor (N, d), or a RowPair for a paired variant."""


def n_rows(batch: Batch) -> int:
    """The number of rows of a batch."""
    return int(batch.x.shape[0] if isinstance(batch, RowPair) else batch.shape[0])


def take_rows(batch: Batch, index: slice | torch.Tensor) -> Batch:
    """The rows `index` of a batch (both sides of a RowPair)."""
    if isinstance(batch, RowPair):
        return RowPair(batch.x[index], batch.y[index])
    return batch[index]


def to_training(
    batch: Batch,
    device: torch.device | str,
    scale: float | None = None,
    *,
    non_blocking: bool = False,
) -> Batch:
    """A loader's batch as float32 rows on `device`, multiplied by the training scale s
    when given (one s for both sides of a RowPair)."""
    if isinstance(batch, RowPair):
        return RowPair(*(to_training(t, device, scale, non_blocking=non_blocking) for t in batch))
    rows = batch.to(device, torch.float32, non_blocking=non_blocking)
    return rows if scale is None else rows * scale


def full_batches(loader: Iterable[Batch], batch_size: int) -> Iterator[Batch]:
    """Endless batches of exactly batch_size rows, epoch after epoch.

    A short last batch of an epoch is skipped: a per-batch budget (BatchTopK) must
    see the same number of rows at every training step.
    """
    while True:
        n = 0
        for batch in loader:
            if n_rows(batch) == batch_size:
                n += 1
                yield batch
        if n == 0:
            raise ValueError(
                f"the training split yields no full batch of {batch_size} rows; "
                "lower batch_size or add data"
            )
