"""The batch type every data source yields."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class InputBatch(Mapping):
    """Model inputs plus where they sit in the data source.

    It is a Mapping of the model inputs only, so `model(**batch)` works, while
    `doc_offset` (index of the batch's first sequence or image, the doc_index of its
    first row) and `index` (the batch's position in the source, for resume) ride
    along as attributes.
    """

    inputs: dict[str, torch.Tensor]
    doc_offset: int
    index: int

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.inputs[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.inputs)

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def n_docs(self) -> int:
        """Sequences (or images) in the batch."""
        return next(iter(self.inputs.values())).shape[0]

    def to(self, device: str | torch.device) -> InputBatch:
        moved = {k: v.to(device) for k, v in self.inputs.items()}
        return InputBatch(moved, self.doc_offset, self.index)
