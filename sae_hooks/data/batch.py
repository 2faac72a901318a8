"""The batch type every data source yields, and the adapter that makes it from user data."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
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

    def __post_init__(self) -> None:
        for name in ("doc_offset", "index"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"InputBatch.{name} must be an int >= 0, got {value!r}")

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


class InputBatches:
    """Any data a capture accepts, as InputBatches: the one adapter for user data.

    `data` may yield InputBatch (passed through), (doc_offset, inputs) pairs, or
    plain input dicts (input_ids/attention_mask or pixel_values), whose doc_offset
    then counts the sequences of the batches before. A source with `iter_from(k)`
    (TextBatches, ImageBatches) is resumed by it; any other iterable is walked from
    its start. `iter_from(k)` yields the batches with index >= k.
    """

    def __init__(self, data: Iterable) -> None:
        if isinstance(data, InputBatches):
            data = data.data
        self.data = data
        self.description: str = getattr(data, "description", type(data).__name__)

    def __iter__(self) -> Iterator[InputBatch]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[InputBatch]:
        resumable = hasattr(self.data, "iter_from")
        batches = self.data.iter_from(start) if resumable else iter(self.data)
        first = start if resumable else 0
        running = 0  # for a resumable source, dicts count their documents from `start`
        for index, batch in enumerate(batches, first):
            batch = as_input_batch(batch, index, running)
            running = batch.doc_offset + batch.n_docs
            if index >= start:
                yield batch


def as_input_batch(batch: object, index: int, doc_offset: int) -> InputBatch:
    """One batch of user data as an InputBatch; `doc_offset` is used for plain dicts."""
    if isinstance(batch, InputBatch):
        return batch
    if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[1], Mapping):
        return InputBatch(dict(batch[1]), int(batch[0]), index)
    if isinstance(batch, Mapping):
        return InputBatch(dict(batch), doc_offset, index)
    raise TypeError(
        f"data yielded {type(batch).__name__}; expected an InputBatch, an input dict "
        "(input_ids/attention_mask or pixel_values) or a (doc_offset, inputs) pair"
    )
