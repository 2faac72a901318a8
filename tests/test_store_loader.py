"""ActivationLoader: exactly-once epochs, determinism, splits, resume from state_dict."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sae_hooks.store import ActivationLoader, StoreWriter, open_store

N_ROWS, D, CHUNK = 1000, 4, 64


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Rows whose first feature is their row index, so batches reveal which rows they hold."""
    path = tmp_path_factory.mktemp("loader") / "s"
    with StoreWriter(path, points=["p"], chunk_rows=CHUNK, dtype="float32") as w:
        for start in range(0, N_ROWS, 37):
            rows = torch.arange(start, min(start + 37, N_ROWS))
            acts = torch.stack(
                [rows.float(), rows.float() * 2, -rows.float(), rows.float() + 0.5], 1
            )
            w.append(
                SimpleNamespace(acts={"p": acts}, token_ids=rows, doc_index=rows, position=rows)
            )
    return open_store(path)


def row_ids(batches) -> list[np.ndarray]:
    return [b[:, 0].long().numpy() for b in batches]


def epoch_rows(loader) -> np.ndarray:
    return np.concatenate(row_ids(loader))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("buffer_chunks", [1, 3])
def test_every_row_once_per_epoch_and_splits_disjoint(store, shuffle, buffer_chunks):
    kw = dict(val_fraction=0.1, shuffle=shuffle, buffer_chunks=buffer_chunks, drop_last=False)
    train = epoch_rows(ActivationLoader(store, "p", 48, split="train", **kw))
    val = epoch_rows(ActivationLoader(store, "p", 48, split="val", **kw))
    np.testing.assert_array_equal(np.sort(train), np.arange(900))
    np.testing.assert_array_equal(np.sort(val), np.arange(900, 1000))
    if not shuffle:
        np.testing.assert_array_equal(train, np.arange(900))


def test_batches_are_shuffled_across_chunks(store):
    loader = ActivationLoader(store, "p", 128, val_fraction=0.0, buffer_chunks=4)
    first = row_ids(loader)[0]
    assert len(np.unique(first // CHUNK)) >= 3  # mixes several chunks
    assert not np.all(np.diff(first) == 1)


def test_batch_shape_dtype_and_values(store):
    loader = ActivationLoader(store, "p", 50, dtype=torch.float64, val_fraction=0.0)
    assert len(loader) == N_ROWS // 50
    batches = list(loader)
    assert all(b.shape == (50, D) and b.dtype == torch.float64 for b in batches)
    b = batches[0]
    torch.testing.assert_close(b[:, 1], 2 * b[:, 0])


def test_deterministic_given_seed_and_epoch(store):
    a = ActivationLoader(store, "p", 64, seed=3)
    b = ActivationLoader(store, "p", 64, seed=3)
    e0a, e0b = epoch_rows(a), epoch_rows(b)
    np.testing.assert_array_equal(e0a, e0b)
    assert a.epoch == 1
    e1 = epoch_rows(a)
    assert not np.array_equal(e0a, e1)  # each epoch reshuffles
    assert not np.array_equal(e0a, epoch_rows(ActivationLoader(store, "p", 64, seed=4)))


@pytest.mark.parametrize("stop_after", [0, 1, 5, 14])
def test_state_dict_resume_yields_the_remaining_batches(store, stop_after):
    reference = ActivationLoader(store, "p", 64, seed=7, buffer_chunks=2)
    full = row_ids(reference)
    interrupted = ActivationLoader(store, "p", 64, seed=7, buffer_chunks=2)
    it = iter(interrupted)
    for _ in range(stop_after):
        next(it)
    it.close()  # the training run stops here
    state = interrupted.state_dict()
    assert state["batch"] == stop_after and state["epoch"] == 0
    resumed = ActivationLoader(store, "p", 64, seed=7, buffer_chunks=2)
    resumed.load_state_dict(state)
    rest = row_ids(resumed)
    assert len(rest) == len(full) - stop_after
    for got, want in zip(rest, full[stop_after:], strict=True):
        np.testing.assert_array_equal(got, want)
    assert resumed.epoch == 1 and resumed.state_dict()["batch"] == 0


def test_infinite_batches_cross_epochs(store):
    loader = ActivationLoader(store, "p", 256, val_fraction=0.0)
    n = len(loader)
    stream = loader.batches()
    got = [next(stream) for _ in range(2 * n + 1)]
    assert loader.epoch == 2 and loader.state_dict()["batch"] == 1
    assert all(b.shape == (256, D) for b in got)


def test_bfloat16_store_converts_exactly(tmp_path):
    x = torch.randn(300, 8).bfloat16()
    rows = torch.arange(300)
    with StoreWriter(tmp_path / "s", dtype="bfloat16", chunk_rows=32) as w:
        w.append(SimpleNamespace(acts={"p": x}, token_ids=rows, doc_index=rows, position=rows))
    loader = ActivationLoader(tmp_path / "s", "p", 300, val_fraction=0.0, shuffle=False)
    (batch,) = list(loader)
    assert batch.dtype == torch.float32 and torch.equal(batch, x.float())


def test_errors(store):
    with pytest.raises(KeyError, match="stored: \\['p'\\]"):
        ActivationLoader(store, "q", 8)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        ActivationLoader(store, "p", 8, split="test")
    with pytest.raises(ValueError, match="too few for one batch"):
        ActivationLoader(store, "p", 64, split="val", val_fraction=0.01)
    with pytest.raises(ValueError, match="val_fraction"):
        ActivationLoader(store, "p", 8, val_fraction=1.0)
    loader = ActivationLoader(store, "p", 8, seed=1)
    with pytest.raises(ValueError, match="saved seed=0"):
        loader.load_state_dict(ActivationLoader(store, "p", 8).state_dict())
