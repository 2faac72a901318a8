"""StoreWriter / ActivationStore: round trips, statistics, commits, resume, locks, damage."""

from __future__ import annotations

import json
import os
import uuid

import numpy as np
import pytest
import torch
import zarr
from helpers import POINTS, D, batch_rows, kill_on_announcement, make_batch, spawn

from sae_hooks.store import StoreLockedError, StoreWriter, open_store
from sae_hooks.store import lock as store_lock


def expected(n_inputs: int, dtype: torch.dtype = torch.float32):
    batches = [make_batch(i) for i in range(n_inputs)]
    acts = {p: torch.cat([b.acts[p] for b in batches]).to(dtype) for p in POINTS}
    tokens = torch.cat([b.token_ids for b in batches]).numpy()
    return acts, tokens


def write_store(path, n_inputs, *, dtype="float32", chunk_rows=16, **kw):
    with StoreWriter(path, points=POINTS, dtype=dtype, chunk_rows=chunk_rows, **kw) as w:
        for i in range(n_inputs):
            w.append(make_batch(i))
    return open_store(path)


TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({4: torch.int32, 2: torch.int16}[t.element_size()])


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
def test_round_trip_is_exact_per_dtype(tmp_path, dtype):
    store = write_store(tmp_path / "s", 9, dtype=dtype)
    acts, tokens = expected(9, TORCH_DTYPES[dtype])
    assert store.n_rows == len(tokens) and store.committed_inputs == 9
    assert store.dtype == dtype and store.points == POINTS
    for p in POINTS:
        assert store.d_model(p) == D[p]
        got = store.read_tensor(p)
        assert got.dtype == TORCH_DTYPES[dtype]
        assert torch.equal(bits(got), bits(acts[p]))
        np.testing.assert_array_equal(store.read(p, 3, 40), acts[p][3:40].float().numpy())
    np.testing.assert_array_equal(store.token_ids(), tokens)
    np.testing.assert_array_equal(store.position(0, 5), np.arange(5))
    if dtype == "bfloat16":
        arr = zarr.open_group(tmp_path / "s", mode="r")[f"acts/{POINTS[0]}"]
        assert arr.dtype == np.uint16 and "uint16" in arr.attrs["encoding"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_stats_equal_numpy_on_stored_data(tmp_path, dtype):
    store = write_store(tmp_path / "s", 11, dtype=dtype)
    for p in POINTS:
        x = store.read(p).astype(np.float64)
        mean, msn = store.stats(p)
        np.testing.assert_allclose(mean.numpy(), x.mean(0), rtol=1e-6, atol=1e-7)
        assert msn == pytest.approx((x**2).sum(1).mean(), rel=1e-12)
        assert store.attrs["stats"][p]["count"] == len(x)


@pytest.mark.parametrize("shard_chunks", [None, 3])
def test_chunk_aligned_appends_with_odd_batch_sizes(tmp_path, shard_chunks):
    store = write_store(tmp_path / "s", 13, chunk_rows=8, shard_chunks=shard_chunks)
    _, tokens = expected(13)
    np.testing.assert_array_equal(store.token_ids(), tokens)
    arr = store.array(POINTS[0])
    assert arr.chunks[0] == 8 and arr.shape[0] == store.n_rows
    assert (arr.shards or arr.chunks)[0] == 8 * (shard_chunks or 1)
    assert store.verify() == []


def test_flush_commits_tail_and_writes_continue_unaligned(tmp_path):
    with StoreWriter(tmp_path / "s", points=POINTS, chunk_rows=16) as w:
        w.append(make_batch(0, n=5))
        w.flush()
        assert open_store(tmp_path / "s").n_rows == 5
        for i in range(1, 6):
            w.append(make_batch(i))
    _, tokens = expected(6)
    tokens[:5] = np.arange(5)
    np.testing.assert_array_equal(open_store(tmp_path / "s").token_ids(), tokens)


def test_readers_see_only_committed_rows_while_writing(tmp_path):
    w = StoreWriter(tmp_path / "s", points=POINTS, chunk_rows=16)
    for i in range(6):
        w.append(make_batch(i))
    w.flush()
    n_flushed = w.committed_rows
    w.append(make_batch(6, n=3))  # buffered, not yet on disk
    store = open_store(tmp_path / "s")
    assert store.n_rows == n_flushed and store.attrs["writer"]["pid"] == os.getpid()
    with pytest.raises(IndexError, match="committed rows"):
        store.read(POINTS[0], 0, n_flushed + 1)
    w.close()
    store.refresh()
    assert store.n_rows == n_flushed + 3 and store.attrs["writer"] is None


def test_resume_after_interruption_writes_each_row_once(tmp_path, monkeypatch):
    path = tmp_path / "s"
    w = StoreWriter(path, points=POINTS, chunk_rows=16, commit_interval=0)
    for i in range(10):
        w.append(make_batch(i))
    w._committer.stop()  # the writer thread dies here: its buffered tail is lost
    crashed = open_store(path)
    appended = sum(batch_rows(i) for i in range(10))
    assert 0 < crashed.n_rows < appended and crashed.committed_inputs < 10
    assert crashed.array(POINTS[0]).shape[0] > crashed.n_rows  # garbage past the commit

    monkeypatch.setattr(store_lock, "pid_alive", lambda pid: False)  # as if w's process died
    with pytest.warns(UserWarning, match="stale writer lock"):
        w2 = StoreWriter(path, mode="resume")
    with w2:
        for i in range(w2.committed_inputs, 14):
            w2.append(make_batch(i))
    store = open_store(path)
    acts, tokens = expected(14)
    np.testing.assert_array_equal(store.token_ids(), tokens)
    np.testing.assert_array_equal(store.read(POINTS[1]), acts[POINTS[1]].numpy())
    x = acts[POINTS[0]].double().numpy()
    np.testing.assert_allclose(store.stats(POINTS[0]).mean.numpy(), x.mean(0), atol=1e-6)
    assert store.stats(POINTS[0]).mean_sq_norm == pytest.approx((x**2).sum(1).mean(), rel=1e-9)


KILL_SCRIPT = """
from sae_hooks.store import StoreWriter
from helpers import POINTS, make_batch
with StoreWriter({path!r}, points=POINTS, chunk_rows=16, commit_interval=0) as w:
    for i in range(40):
        w.append(make_batch(i))
        if i >= 12 and w.committed_rows > 0:
            announce_and_wait(i)  # killed here: batches after 12 are never appended
"""


def test_sigkill_mid_write_then_resume_matches_uninterrupted_run(tmp_path):
    path = str(tmp_path / "killed")
    reached = kill_on_announcement(spawn(KILL_SCRIPT.format(path=path)))
    assert int(reached) >= 12
    killed = open_store(path)
    assert 0 < killed.committed_inputs < 40
    with pytest.warns(UserWarning, match="stale writer lock"):
        w = StoreWriter(path, mode="resume")
    with w:
        for i in range(w.committed_inputs, 40):
            w.append(make_batch(i))
    reference = write_store(tmp_path / "reference", 40)
    resumed = open_store(path)
    np.testing.assert_array_equal(resumed.token_ids(), reference.token_ids())
    np.testing.assert_array_equal(resumed.read(POINTS[0]), reference.read(POINTS[0]))
    assert resumed.verify() == []


def test_memory_url_store():
    url = f"memory://sae-hooks-test/{uuid.uuid4().hex}"
    store = write_store(url, 5, dtype="bfloat16")
    _, tokens = expected(5)
    np.testing.assert_array_equal(open_store(url).token_ids(), tokens)
    assert store.verify() == []


def test_not_a_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing there"):
        open_store(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"is not an activation store.*schema_version"):
        open_store(tmp_path / "junk")
    zarr.open_group(tmp_path / "plain", mode="w")
    with pytest.raises(ValueError, match="without 'schema_version'"):
        open_store(tmp_path / "plain")


def test_schema_from_the_future(tmp_path):
    write_store(tmp_path / "s", 2)
    zarr.open_group(tmp_path / "s", mode="r+").attrs["schema_version"] = 99
    with pytest.raises(ValueError, match=r"schema_version 99.*upgrade"):
        open_store(tmp_path / "s")


def test_d_model_mismatch(tmp_path):
    with StoreWriter(tmp_path / "s", points=POINTS, d_model=D, chunk_rows=16) as w:
        w.append(make_batch(0))
        bad = make_batch(1, d={POINTS[0]: 12, POINTS[1]: 9})
        with pytest.raises(ValueError, match=r"d_model mismatch for 'blocks.2.hook_resid_post'"):
            w.append(bad)
        with pytest.raises(ValueError, match="missing"):
            w.append(make_batch(1, points=POINTS[:1]))
    with pytest.raises(ValueError, match=r"d_model mismatch.*holds d_model=12, got 16"):
        StoreWriter(tmp_path / "s", mode="resume", d_model={POINTS[0]: 16})
    assert open_store(tmp_path / "s").n_rows == batch_rows(0)  # the errors lost nothing


def test_bad_dtype_and_mode(tmp_path):
    with pytest.raises(
        ValueError, match="cannot hold dtype 'int8'; valid dtypes: float32, float16, bfloat16"
    ):
        StoreWriter(tmp_path / "s", dtype="int8")
    with pytest.raises(ValueError, match="unknown mode"):
        StoreWriter(tmp_path / "s", mode="append")
    write_store(tmp_path / "t", 1)
    with pytest.raises(FileExistsError, match="mode='resume'"):
        StoreWriter(tmp_path / "t")
    with pytest.raises(ValueError, match="holds float32, cannot resume it as bfloat16"):
        StoreWriter(tmp_path / "t", mode="resume", dtype="bfloat16")


def test_second_writer_refused(tmp_path):
    with StoreWriter(tmp_path / "s", points=POINTS, chunk_rows=16) as w:
        w.append(make_batch(0))
        for mode in ("resume", "overwrite"):
            with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
                StoreWriter(tmp_path / "s", mode=mode)
    StoreWriter(tmp_path / "s", mode="resume").close()  # released on close


def test_writer_thread_errors_reach_the_caller(tmp_path, monkeypatch):
    w = StoreWriter(tmp_path / "s", points=POINTS, chunk_rows=4)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(w._committer, "_write", broken)
    with pytest.raises(OSError, match="disk full"):
        for i in range(50):
            w.append(make_batch(i))
        w.close()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_verify_reports_damaged_and_missing_chunks(tmp_path, dtype):
    path = tmp_path / "s"
    store = write_store(path, 12, dtype=dtype)
    assert store.verify() == []
    chunk = path / "acts" / POINTS[0] / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:37])
    (path / "token_ids" / "c" / "2").unlink()
    damaged = store.verify()
    assert [(d.array, d.chunk, d.rows) for d in damaged] == [
        (f"acts/{POINTS[0]}", 1, (16, 32)),
        ("token_ids", 2, (32, 48)),
    ]
    assert "missing" in damaged[1].error
    json.dumps([d.__dict__ for d in damaged])  # reportable as is
