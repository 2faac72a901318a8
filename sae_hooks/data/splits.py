"""Held-out splits of an input source: the rows an SAE is evaluated on are never captured.

Texts split by document: the last tenth of a corpus's rows is held out, or, for a
stream whose length is unknown, every tenth row. Image batches split by batch (every
tenth), keeping the training part resumable like the source it comes from.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

from sae_hooks.data.batch import InputBatch
from sae_hooks.data.documents import Documents
from sae_hooks.data.images import ImageBatches

HELD_OUT_EVERY = 10  # a tenth is held out for evaluation
T = TypeVar("T")


def split_texts(texts: Sequence[T], source: str = "the corpus") -> tuple[list[T], list[T]]:
    """(training, held-out): the last tenth of the documents is held out."""
    if len(texts) < HELD_OUT_EVERY:
        raise ValueError(
            f"{source} holds {len(texts)} documents; need at least {HELD_OUT_EVERY} "
            "(a tenth is held out)"
        )
    held_out = len(texts) // HELD_OUT_EVERY
    return list(texts[:-held_out]), list(texts[-held_out:])


PARTS = ("train", "held-out", "all")


def split_documents(docs: Documents, part: str) -> Documents:
    """One part of a corpus: "train", "held-out" or "all". A sized corpus holds out the
    last tenth of its rows (as split_texts, rows counted whether or not they are skipped);
    a stream every tenth row (rows 9, 19, ...), read lazily."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; valid: {', '.join(PARTS)}")
    if part == "all":
        return docs
    if not docs.sized:
        every = HELD_OUT_EVERY if part == "train" else -HELD_OUT_EVERY
        what = "every 10th row" if part == "held-out" else "all but every 10th row"
        return docs.with_options(held_out_every=every, description=f"{docs.description}, {what}")
    n = len(docs)
    if n < HELD_OUT_EVERY:
        raise ValueError(
            f"{docs.description or 'the corpus'} holds {n} documents; need at least "
            f"{HELD_OUT_EVERY} (a tenth is held out)"
        )
    cut = docs.start + n - n // HELD_OUT_EVERY
    if part == "train":
        return docs.with_options(stop=cut)
    return docs.with_options(start=cut)


class KeptBatches:
    """The batches of an image source but the held-out ones; resumable like the source."""

    def __init__(self, images: ImageBatches, held: set[int]) -> None:
        self.images = images
        self.kept = [i for i in range(len(images)) if i not in held]
        self.description = f"{images.description}, every {HELD_OUT_EVERY}th batch held out"

    def __iter__(self) -> Iterator[InputBatch]:
        return self.iter_from(0)

    def iter_from(self, batch: int) -> Iterator[InputBatch]:
        for i in self.kept[batch:]:
            yield next(self.images.iter_from(i))


def split_batches(images: ImageBatches, max_eval: int) -> tuple[KeptBatches, list[InputBatch]]:
    """Training batches, and the first `max_eval` of every tenth batch for evaluation."""
    n = len(images)
    if n < 2:
        raise ValueError(
            f"{images.description}: need at least 2 batches (one is held out for evaluation); "
            "add images or lower --capture-batch-size"
        )
    held = list(range(HELD_OUT_EVERY - 1, n, HELD_OUT_EVERY)) or [n - 1]
    return KeptBatches(images, set(held)), [next(images.iter_from(i)) for i in held[:max_eval]]
