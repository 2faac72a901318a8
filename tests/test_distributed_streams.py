"""Rank-disjoint reading: S streams, N | S ranks, each reading only its streams.

The loader runs here on an in-memory StoreReader that records every read, so the
properties are checked for many shapes quickly: the union of the ranks' rows at step
t is the one-process batch at step t, each rank's reads lie inside its streams'
rows (and at most S - 1 chunks are shared by two streams), resume under another N.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sae_hooks.store import ActivationLoader
from sae_hooks.store.streams import default_streams, split_streams


class RecordingStore:
    """A float32 store in memory whose row r has r in every column; reads are recorded."""

    dtype = "float32"

    def __init__(self, n_rows: int, chunk: int, d: int = 2) -> None:
        self.points = ["p"]
        self.n_rows, self._chunk, self._d = n_rows, chunk, d
        self.reads: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def chunk_rows(self, point: str) -> int:
        return self._chunk

    def d_model(self, point: str) -> int:
        return self._d

    def read_raw(self, point, start=0, stop=None, *, out=None):
        stop = self.n_rows if stop is None else stop
        with self._lock:
            self.reads.append((start, stop))
        rows = np.repeat(np.arange(start, stop, dtype=np.float32)[:, None], self._d, 1)
        if out is None:
            return rows
        out[...] = rows
        return out

    def chunks_read(self) -> set[int]:
        return {
            c for a, b in self.reads for c in range(a // self._chunk, (b - 1) // self._chunk + 1)
        }


def ids(batch) -> np.ndarray:
    return batch[:, 0].long().numpy()


def epoch(loader) -> list[np.ndarray]:
    return [ids(b) for b in loader]


shapes = st.builds(
    lambda s_exp, n_exp, part, chunk, n_rows, buffer: (
        2**s_exp,
        2 ** min(n_exp, s_exp),
        part * 2**s_exp,
        chunk,
        n_rows,
        buffer,
    ),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(1, 12),
    st.integers(3, 40),
    st.integers(60, 700),
    st.integers(1, 5),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes, seed=st.integers(0, 3))
def test_ranks_together_read_the_one_process_batches(shape, seed):
    streams, world, batch, chunk, n_rows, buffer = shape
    if n_rows < batch:
        n_rows = batch + 7
    kw = dict(val_fraction=0.0, seed=seed, buffer_chunks=buffer, streams=streams)
    one_store = RecordingStore(n_rows, chunk)
    one = epoch(ActivationLoader(one_store, "p", batch, **kw))
    assert len(one) == n_rows // batch and all(len(b) == batch for b in one)
    assert len(np.unique(np.concatenate(one))) == len(one) * batch  # no row twice
    stream_rows = n_rows if streams == 1 else len(one) * batch // streams  # S=1 reads all
    for rank in range(world):
        store = RecordingStore(n_rows, chunk)
        loader = ActivationLoader(store, "p", batch, **kw).read_share(rank, world)
        mine = epoch(loader)
        assert len(mine) == len(one)
        for t, (got, whole) in enumerate(zip(mine, one, strict=True)):
            assert len(got) == batch // world
            parts = whole.reshape(streams, -1)[rank::world]  # streams rank, rank + N, ...
            np.testing.assert_array_equal(got, parts.reshape(-1), err_msg=f"step {t}")
        # every read lies inside this rank's streams' rows of the epoch
        allowed = _stream_rows(loader, 0, stream_rows)[rank::world]
        owned = set().union(*allowed)
        for a, b in store.reads:
            assert set(range(a, b)) <= owned, (a, b)
        if streams > 1:  # one stream reads ahead to the buffer after the epoch's last row
            assert sum(b - a for a, b in store.reads) == sum(len(r) for r in allowed)


def _stream_rows(loader, epoch_index, stream_rows):
    """The store rows of each stream in epoch `epoch_index`, from the loader's chunk order."""
    order = np.random.default_rng([loader.seed, epoch_index]).permutation(len(loader._blocks))
    blocks = [loader._blocks[i] for i in order]
    return [
        {r for a, b in pieces for r in range(a, b)}
        for pieces in split_streams(blocks, loader.streams, stream_rows)
    ]


def test_streams_share_at_most_s_minus_one_chunks():
    blocks = [(a, min(a + 64, 10_000)) for a in range(0, 10_000, 64)]
    pieces = split_streams(blocks, 8, 1200)
    assert [sum(b - a for a, b in p) for p in pieces] == [1200] * 8
    chunks = [{a // 64 for a, _ in p} for p in pieces]
    shared = sum(len(chunks[i] & chunks[j]) for i in range(8) for j in range(i + 1, 8))
    assert 0 < shared <= 7


def test_one_stream_is_the_loader_before_streams():
    """S = 1 reproduces the pre-streams batches: the plan and the seeds of old."""
    store = RecordingStore(900, 50)
    loader = ActivationLoader(store, "p", 64, val_fraction=0.0, streams=1, buffer_chunks=3)
    got = epoch(loader)
    order = np.random.default_rng([0, 0]).permutation(18)
    blocks = [(50 * i, 50 * i + 50) for i in order]
    rows = []
    for k in range(6):
        buf = np.concatenate([np.arange(a, b) for a, b in blocks[3 * k : 3 * k + 3]])
        rows.append(buf[np.random.default_rng([0, 0, k]).permutation(len(buf))])
    flat = np.concatenate(rows)
    np.testing.assert_array_equal(np.concatenate(got), flat[: len(got) * 64])


def test_default_streams_and_refusals():
    assert default_streams(10, 64, 8) == 2  # 2 whenever the batch is even
    assert default_streams(64, 64, 8) == 4 and default_streams(128, 4096, 8) == 8
    assert default_streams(10_000, 4096, 8) == 8  # at most 8, and at most buffer_chunks
    assert default_streams(10_000, 4096, 4) == 4 and default_streams(10_000, 6, 8) == 2
    assert default_streams(10_000, 63, 8) == 1
    store = RecordingStore(2000, 50)
    loader = ActivationLoader(store, "p", 64, val_fraction=0.0, streams=8)
    with pytest.raises(
        ValueError, match=r"^3 processes cannot share .* 8 streams; valid .*: 1, 2, 4, 8"
    ):
        loader.read_share(0, 3)
    with pytest.raises(ValueError, match="does not divide batch_size"):
        ActivationLoader(store, "p", 60, streams=8)
    assert ActivationLoader(store, "p", 64, shuffle=False).streams == 1


def _take(loader, n):
    it = iter(loader)
    out = [ids(next(it)) for _ in range(n)]
    it.close()
    return out


def test_resume_under_another_world_size():
    """A position saved by one process resumes in 2, and one saved by 2 in one: the
    same global batches as one uninterrupted process."""
    store = RecordingStore(3000, 40)
    kw = dict(val_fraction=0.0, streams=4, seed=5)
    straight = [np.sort(b) for b in epoch(ActivationLoader(store, "p", 64, **kw))]
    first = ActivationLoader(store, "p", 64, **kw)
    got = _take(first, 10)  # one process: steps 0-9
    ranks = [ActivationLoader(store, "p", 64, **kw).read_share(r, 2) for r in range(2)]
    for r in ranks:
        r.load_state_dict(first.state_dict())
    for _ in range(20):  # two processes: steps 10-29
        got.append(np.concatenate([_take(r, 1)[0] for r in ranks]))
    assert ranks[0].state_dict() == ranks[1].state_dict()
    last = ActivationLoader(store, "p", 64, **kw)
    last.load_state_dict(ranks[1].state_dict())
    got += epoch(last)  # one process again: the rest of the epoch
    assert len(got) == len(straight) == 3000 // 64
    for t, (a, b) in enumerate(zip(got, straight, strict=True)):
        np.testing.assert_array_equal(np.sort(a), b, err_msg=f"step {t}")


def test_resume_adopts_the_saved_streams_unless_chosen():
    store = RecordingStore(3000, 40)
    saved = ActivationLoader(store, "p", 64, val_fraction=0.0, streams=1).state_dict()
    saved.pop("streams")  # a position saved before streams existed: one stream
    auto = ActivationLoader(store, "p", 64, val_fraction=0.0).read_share(1, 2)
    assert auto.streams == 4  # the default for 75 chunks
    auto.load_state_dict(saved)
    assert auto.streams == 1  # then every rank reads whole batches and keeps its slice
    whole = epoch(ActivationLoader(store, "p", 64, val_fraction=0.0, streams=1))
    np.testing.assert_array_equal(ids(next(iter(auto))), whole[0][32:])
    chosen = ActivationLoader(store, "p", 64, val_fraction=0.0, streams=4)
    with pytest.raises(ValueError, match="set streams=1"):
        chosen.load_state_dict(saved)
