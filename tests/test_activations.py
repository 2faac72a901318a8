"""The one type of rows with metadata (ActivationBatch) and paired training batches
(RowPair): slicing, defaults, the report reading rows in memory, the intake helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_hooks.activations import (
    ActivationBatch,
    RowPair,
    full_batches,
    n_rows,
    take_rows,
    to_training,
)
from sae_hooks.hooks.capture import ActivationBatch as CaptureBatch
from sae_hooks.report.dashboard import as_rows
from sae_hooks.train.sources import PairedLoader, TensorLoader


def _batch(n: int = 6) -> ActivationBatch:
    return ActivationBatch(
        acts={"a": torch.randn(n, 4), "b": torch.randn(n, 3)},
        token_ids=torch.arange(10, 10 + n),
        doc_index=torch.arange(n) // 2,
        position=torch.arange(n) % 2,
    )


def test_the_capture_type_is_the_one_type():
    assert CaptureBatch is ActivationBatch


def test_rows_slice_every_point_and_the_metadata():
    batch = _batch()
    assert batch.rows(0, 6) is batch
    part = batch.rows(2, 5)
    assert part.n_rows == 3 and part.points == ["a", "b"]
    for p in batch.points:
        assert torch.equal(part.acts[p], batch.acts[p][2:5])
    assert part.token_ids.tolist() == [12, 13, 14]
    assert part.doc_index.tolist() == [1, 1, 2] and part.position.tolist() == [0, 1, 0]


def test_of_rows_fills_missing_metadata_and_checks_what_is_given():
    rows = ActivationBatch.of_rows(np.ones((3, 2), np.float32), doc_index=[0, 0, 1])
    assert rows.points == ["acts"] and rows.acts["acts"].shape == (3, 2)
    assert rows.token_ids.tolist() == [-1, -1, -1] and rows.position.tolist() == [0, 0, 0]
    assert rows.doc_index.dtype == torch.int64 and rows.doc_index.tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match=r"token_ids has shape \(2,\), expected \(3,\)"):
        ActivationBatch.of_rows(torch.ones(3, 2), token_ids=[1, 2])
    with pytest.raises(TypeError, match="position must hold integers"):
        ActivationBatch.of_rows(torch.ones(3, 2), position=[0.5, 1.0, 2.0])
    with pytest.raises(ValueError, match="floating rows of shape"):
        ActivationBatch.of_rows(torch.ones(3, dtype=torch.int64))


def test_the_report_reads_a_batch_as_it_reads_the_mapping_form():
    batch = _batch()
    from_batch = as_rows(batch, "b", max_rows=4)
    mapping = {
        "acts": batch.acts["b"],
        "token_ids": batch.token_ids,
        "doc_index": batch.doc_index,
        "position": batch.position,
    }
    from_mapping = as_rows(mapping, max_rows=4)
    for rows in (from_batch, from_mapping):
        assert (rows.n_rows, rows.d_model) == (4, 3)
        assert torch.equal(next(rows.chunks())[1], batch.acts["b"][:4])
    for field in ("token_ids", "doc_index", "position"):
        np.testing.assert_array_equal(getattr(from_batch, field), getattr(from_mapping, field))
    with pytest.raises(ValueError, match="pass point= to choose one"):
        as_rows(batch)


def test_pair_helpers_treat_both_sides_alike():
    pair = RowPair(torch.randn(8, 3), torch.randn(8, 2))
    x, y = pair
    assert n_rows(pair) == 8 == n_rows(x)
    part = take_rows(pair, slice(2, 4))
    assert torch.equal(part.x, x[2:4]) and torch.equal(part.y, y[2:4])
    scaled = to_training(RowPair(x.double(), y.half()), "cpu", 2.0)
    assert scaled.x.dtype == scaled.y.dtype == torch.float32
    assert torch.equal(scaled.x, x * 2.0) and torch.equal(scaled.y, y.half().float() * 2.0)
    assert torch.equal(to_training(x, "cpu"), x)


def test_paired_loaders_yield_pairs_of_full_batches():
    x, y = torch.randn(20, 3), torch.randn(20, 2)
    loader = PairedLoader(
        TensorLoader(x, 8, seed=1, shuffle=True), TensorLoader(y, 8, seed=1, shuffle=True)
    )
    batches = full_batches(loader, 8)
    first = next(batches)
    assert isinstance(first, RowPair) and (n_rows(first), first.y.shape[1]) == (8, 2)
    together = TensorLoader(RowPair(x, y), 8, seed=1, shuffle=True)
    assert all(
        torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
        for a, b in zip(
            PairedLoader(*[TensorLoader(t, 8, seed=1, shuffle=True) for t in (x, y)]), together
        )
    )
