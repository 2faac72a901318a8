"""Held-out splits (sae_hooks.data.splits): evaluation inputs are never captured."""

from __future__ import annotations

import pytest
import torch

from sae_hooks.data import image_batches
from sae_hooks.data.splits import split_batches, split_texts


def test_split_batches_holds_out_every_tenth_batch_and_resumes():
    images = image_batches(torch.zeros(25, 3, 8, 8), image_size=8, batch_size=1)
    kept, held = split_batches(images, 8)
    assert [b.doc_offset for b in held] == [9, 19]
    offsets = [b.doc_offset for b in kept]
    assert offsets == [i for i in range(25) if i not in (9, 19)]
    assert [b.doc_offset for b in kept.iter_from(9)] == offsets[9:]
    assert [b.doc_offset for b in split_batches(images, 1)[1]] == [9]
    assert kept.description.endswith("every 10th batch held out")


def test_split_batches_holds_out_the_last_of_a_few():
    images = image_batches(torch.zeros(6, 3, 8, 8), image_size=8, batch_size=2)
    kept, held = split_batches(images, 8)
    assert [b.doc_offset for b in kept] == [0, 2] and [b.doc_offset for b in held] == [4]
    with pytest.raises(ValueError, match="at least 2 batches"):
        split_batches(image_batches(torch.zeros(2, 3, 8, 8), image_size=8, batch_size=4), 8)


def test_split_texts_holds_out_the_last_tenth():
    texts = [f"doc {i}" for i in range(25)]
    train, held = split_texts(texts)
    assert train == texts[:23] and held == texts[23:]
    with pytest.raises(ValueError, match=r"--data x\.txt holds 9 documents; need at least 10"):
        split_texts(texts[:9], "--data x.txt")
