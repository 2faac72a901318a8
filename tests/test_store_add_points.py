"""A hook point added to a store that holds others: same rows, same order, or a refusal."""

from __future__ import annotations

import numpy as np
import pytest

from sae_hooks.data import text_batches
from sae_hooks.store import capture_to_store, open_store

POINTS = ["resid_post.1", "resid_post.2"]


@pytest.fixture()
def data(texts, tokenizer):
    return text_batches(texts[:8], tokenizer, context_length=32, batch_size=5)


@pytest.mark.parametrize("max_rows", [None, 60])
def test_added_point_equals_capturing_both_in_one_pass(tiny_gpt2, data, tmp_path, max_rows):
    """Row i of the added point comes from the token of row i of the old one: the store
    equals a one-pass capture of both points (a store cut at max_rows included)."""
    kw = {"progress": False, "chunk_rows": 64, "max_rows": max_rows}
    both = capture_to_store(tiny_gpt2, POINTS, data, tmp_path / "both", **kw)
    capture_to_store(tiny_gpt2, POINTS[0], data, tmp_path / "s", **kw)
    added = capture_to_store(tiny_gpt2, POINTS, data, tmp_path / "s", **kw)
    assert added.points == POINTS and added.n_rows == both.n_rows
    assert (max_rows is None) == (both.n_rows > 60)
    for name in ("token_ids", "doc_index", "position"):
        np.testing.assert_array_equal(getattr(added, name)(), getattr(both, name)())
    for p in POINTS:
        np.testing.assert_array_equal(added.read(p), both.read(p))
        np.testing.assert_allclose(added.stats(p).mean, both.stats(p).mean, rtol=1e-6)
    assert added.committed_inputs == both.committed_inputs


def test_added_point_alone_keeps_the_old_ones(tiny_gpt2, data, tmp_path):
    capture_to_store(tiny_gpt2, POINTS[0], data, tmp_path / "s", progress=False)
    store = capture_to_store(tiny_gpt2, POINTS[1], data, tmp_path / "s", progress=False)
    assert store.points == POINTS and store.n_rows == open_store(tmp_path / "s").n_rows
    assert store.read(POINTS[1]).shape == store.read(POINTS[0]).shape


def test_added_point_from_other_data_is_refused(tiny_gpt2, texts, tokenizer, data, tmp_path):
    capture_to_store(tiny_gpt2, POINTS[0], data, tmp_path / "s", progress=False)
    other = text_batches(texts[:8], tokenizer, context_length=16, batch_size=5)
    with pytest.raises(ValueError, match="cannot"):
        capture_to_store(tiny_gpt2, POINTS, other, tmp_path / "s", progress=False)
    store = open_store(tmp_path / "s")
    assert store.points == POINTS[:1]  # nothing listed: the store is as it was
