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


# -- the data path: chunk reads into a buffer, one gather per batch ---------------------


def _write(path, ids: range, *, chunk: int, dtype: str = "float32", step: int = 37) -> None:
    """Rows whose every feature is derived from the row's id (exact in bfloat16 below 256)."""
    with StoreWriter(path, points=["p"], chunk_rows=chunk, dtype=dtype) as w:
        for s in range(ids.start, ids.stop, step):
            rows = torch.arange(s, min(s + step, ids.stop))
            acts = torch.stack([rows.float(), -rows.float(), rows.float() / 2], 1)
            w.append(
                SimpleNamespace(acts={"p": acts}, token_ids=rows, doc_index=rows, position=rows)
            )


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    """A float32 store, a bfloat16 store, and a 3-rank sharded store of uneven ranks."""
    from sae_hooks.store.layout import SHARDED_ATTR, open_group, rank_location

    base = tmp_path_factory.mktemp("kinds")
    _write(base / "f32", range(0, 230), chunk=16)
    _write(base / "bf16", range(0, 200), chunk=8, dtype="bfloat16")
    open_group(base / "sh", "w-", attributes={SHARDED_ATTR: {"version": 1, "world_size": 3}})
    for rank, ids in enumerate([range(0, 70), range(70, 75), range(75, 180)]):
        _write(rank_location(base / "sh", rank), ids, chunk=12, step=11)
    # 1024 rows x 3 float32 = 12 KiB chunk files, whole pages: read through the row map
    _write(base / "f32map", range(0, 2600), chunk=1024, step=300)
    return {name: open_store(base / name) for name in ("f32", "bf16", "sh", "f32map")}


def _split_rows(store, split: str, val_fraction: float) -> np.ndarray:
    n = store.n_rows
    boundary = n - int(np.ceil(n * val_fraction))
    lo, hi = (0, boundary) if split == "train" else (boundary, n)
    return store.read("p", lo, hi)


def _sorted(rows: np.ndarray) -> np.ndarray:
    return rows[np.argsort(rows[:, 0], kind="stable")]


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    given = None


if given is not None:

    @settings(
        max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        kind=st.sampled_from(["f32", "bf16", "sh", "f32map"]),
        batch=st.integers(1, 70),
        buffer_chunks=st.integers(1, 5),
        val_fraction=st.sampled_from([0.0, 0.1, 0.37]),
        split=st.sampled_from(["train", "val"]),
        seed=st.integers(0, 3),
        shuffle=st.booleans(),
        drop_last=st.booleans(),
        stop_frac=st.floats(0.0, 1.0),
    )
    def test_property_epoch_is_the_split_once_and_resume_is_exact(
        kinds, kind, batch, buffer_chunks, val_fraction, split, seed, shuffle, drop_last, stop_frac
    ):
        """Over an epoch the multiset of rows is the split's rows (all of them unless
        drop_last drops the tail), and stopping after any batch resumes to the same batches."""
        store = kinds[kind]
        want = _split_rows(store, split, val_fraction)
        kw = dict(
            split=split,
            val_fraction=val_fraction,
            seed=seed,
            shuffle=shuffle,
            drop_last=drop_last,
            buffer_chunks=buffer_chunks,
        )
        if len(want) == 0 or (drop_last and len(want) < batch):
            with pytest.raises(ValueError, match="too few for one batch"):
                ActivationLoader(store, "p", batch, **kw)
            return
        loader = ActivationLoader(store, "p", batch, **kw)
        batches = list(loader)
        assert len(batches) == len(loader)
        got = torch.cat(batches).numpy()
        assert got.dtype == np.float32 and got.shape[1] == 3
        if drop_last:
            assert len(got) == len(want) // batch * batch
            ids = got[:, 0].astype(np.int64)
            assert len(np.unique(ids)) == len(ids) and np.isin(ids, want[:, 0]).all()
            np.testing.assert_array_equal(_sorted(got), want[np.isin(want[:, 0], ids)])
        else:
            np.testing.assert_array_equal(_sorted(got), _sorted(want))
        if not shuffle:
            np.testing.assert_array_equal(got, want[: len(got)])
        # resume after any batch, in a fresh loader, gives the remaining batches exactly
        stop = round(stop_frac * len(batches))
        first = ActivationLoader(store, "p", batch, **kw)
        it = iter(first)
        for _ in range(stop):
            next(it)
        it.close()
        resumed = ActivationLoader(store, "p", batch, **kw)
        resumed.load_state_dict(first.state_dict())
        rest = list(resumed)
        assert len(rest) == len(batches) - stop
        for a, b in zip(rest, batches[stop:], strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["f32", "bf16", "sh"])
def test_read_raw_into_out_equals_read_raw(kinds, kind):
    store = kinds[kind]
    for a, b in [(0, store.n_rows), (3, 71), (69, 76), (5, 5)]:
        want = store.read_raw("p", a, b)
        out = np.full_like(want, 7)
        assert store.read_raw("p", a, b, out=out) is out
        np.testing.assert_array_equal(out, want)
    with pytest.raises(ValueError, match=r"out must be a C-contiguous .* shape \(4, 3\)"):
        store.read_raw("p", 0, 4, out=np.empty((5, 3), want.dtype))
    with pytest.raises(ValueError, match="out must be"):
        store.read_raw("p", 0, 4, out=np.empty((4, 3), np.float64))


def test_dtype_none_keeps_bfloat16_and_equals_the_widened_rows(kinds):
    store = kinds["bf16"]
    raw = ActivationLoader(store, "p", 32, val_fraction=0.0, dtype=None, seed=2)
    wide = ActivationLoader(store, "p", 32, val_fraction=0.0, seed=2)
    a, b = list(raw), list(wide)
    assert raw.dtype == torch.bfloat16 and all(x.dtype == torch.bfloat16 for x in a)
    assert all(y.dtype == torch.float32 for y in b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.float(), y)


def test_a_held_batch_is_never_overwritten(kinds):
    """Batches are fresh arrays, not views of the reused scratch buffers."""
    loader = ActivationLoader(kinds["f32"], "p", 16, val_fraction=0.0, buffer_chunks=1)
    it = iter(loader)
    first = next(it)
    snapshot = first.clone()
    rest = list(it)
    assert len(rest) == len(loader) - 1
    assert torch.equal(first, snapshot)
    assert all(b.untyped_storage().data_ptr() != first.untyped_storage().data_ptr() for b in rest)


def test_reader_without_out_falls_back_to_a_copy(kinds):
    class Plain:
        """A StoreReader whose read_raw has no out= (a third-party reader)."""

        def __init__(self, store):
            self._s = store

        def __getattr__(self, name):
            return getattr(self._s, name)

        def read_raw(self, point, start=0, stop=None):
            return self._s.read_raw(point, start, stop)

    store = kinds["sh"]
    plain = ActivationLoader(Plain(store), "p", 20, seed=5)
    assert not plain._reads_into
    for x, y in zip(plain, ActivationLoader(store, "p", 20, seed=5), strict=True):
        assert torch.equal(x, y)


def test_pinned_cuda_path_keeps_stored_dtype_until_the_device(kinds, monkeypatch):
    """The CUDA branch (pinned batches in the stored dtype, converted after the copy),
    run on the CPU by standing in an ordinary allocation for the pinned one."""
    from sae_hooks.store import loader as loader_module

    real_empty = torch.empty
    made = []

    def empty(*args, pin_memory=False, **kw):
        t = real_empty(*args, **kw)
        made.append((t.dtype, pin_memory))
        return t

    store = kinds["bf16"]
    want = list(ActivationLoader(store, "p", 24, val_fraction=0.0, seed=1))
    loader = ActivationLoader(store, "p", 24, val_fraction=0.0, seed=1)
    loader._pin = True  # what a CUDA target sets
    monkeypatch.setattr(loader_module.torch, "empty", empty)
    got = list(loader)
    monkeypatch.undo()
    assert made and all(m == (torch.bfloat16, True) for m in made)  # bf16 crosses the bus
    assert all(g.dtype == torch.float32 for g in got)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


def test_cuda_target_without_cuda_is_a_clear_error(kinds):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    loader = ActivationLoader(kinds["f32"], "p", 16, device="cuda")
    with pytest.raises((RuntimeError, AssertionError), match=r"(?i)cuda"):
        next(iter(loader))


def test_chunk_file_fast_path_reads_exactly_and_refuses_absent_and_short_chunks(tmp_path):
    """read_raw(out=) reads raw chunk files directly; an all-zero chunk is stored and reads
    back as zeros, while a deleted chunk or a short file is damage, as without out=."""
    x = torch.randn(48, 3)
    x[16:32] = 0  # all zero: written all the same (a missing chunk must never read as zeros)
    rows = torch.arange(48)
    with StoreWriter(tmp_path / "s", points=["p"], chunk_rows=16, dtype="float32") as w:
        w.append(SimpleNamespace(acts={"p": x}, token_ids=rows, doc_index=rows, position=rows))
    store = open_store(tmp_path / "s")
    chunks = {
        p.parts[-2]: p
        for p in (tmp_path / "s" / "acts" / "p").rglob("*")
        if p.is_file() and p.parts[-3] == "c"  # acts/p/c/<row chunk>/0
    }
    assert set(chunks) == {"0", "1", "2"}
    out = np.full((48, 3), 7, np.float32)
    np.testing.assert_array_equal(store.read_raw("p", out=out), x.numpy())
    chunks["2"].write_bytes(chunks["2"].read_bytes()[:100])
    with pytest.raises(ValueError, match="damaged"):
        store.read_raw("p", 32, 48, out=np.empty((16, 3), np.float32))
    with pytest.raises(ValueError, match="damaged"):
        store.read_raw("p", 32, 48)
    chunks["1"].unlink()
    fresh = open_store(tmp_path / "s")
    with pytest.raises(ValueError, match="missing"):
        fresh.read_raw("p", 16, 32, out=np.empty((16, 3), np.float32))


# -- mapped chunk files: the gather reads the page cache directly --------------------


def test_row_map_only_where_chunk_files_are_raw_whole_pages(kinds, tmp_path):
    mapped = kinds["f32map"].row_map("p")
    assert mapped is not None and not mapped.flags.writeable
    np.testing.assert_array_equal(mapped, kinds["f32map"].read_raw("p"))
    assert kinds["f32"].row_map("p") is None  # 16 x 3 float32 chunk files: not whole pages
    _write(tmp_path / "z", range(0, 2048), chunk=1024)
    assert open_store(tmp_path / "z").row_map("p") is not None
    with StoreWriter(tmp_path / "c", points=["p"], chunk_rows=1024, compressors="lz4") as w:
        rows = torch.arange(2048)
        w.append(
            SimpleNamespace(
                acts={"p": torch.randn(2048, 3)}, token_ids=rows, doc_index=rows, position=rows
            )
        )
    assert open_store(tmp_path / "c").row_map("p") is None  # compressed chunks


def test_row_map_refuses_a_short_chunk_file_and_names_a_missing_one(tmp_path):
    _write(tmp_path / "s", range(0, 3000), chunk=1024, step=500)
    chunk = tmp_path / "s" / "acts" / "p" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:4096])
    assert open_store(tmp_path / "s").row_map("p") is None  # never mapped past a file's end
    chunk.unlink()
    with pytest.raises(ValueError, match="missing"):
        open_store(tmp_path / "s").row_map("p")


@pytest.mark.parametrize("shuffle", [True, False])
def test_mapped_loader_gives_the_batches_of_the_read_path(kinds, monkeypatch, shuffle):
    """The same plan cut either way: batches equal, so resume across versions is exact."""
    store = kinds["f32map"]
    kw = dict(seed=4, buffer_chunks=2, shuffle=shuffle, drop_last=False)
    mapped = ActivationLoader(store, "p", 96, **kw)
    assert mapped._mapped() is not None
    got = list(mapped)
    monkeypatch.setattr(type(store), "row_map", lambda self, point: None)
    read = ActivationLoader(store, "p", 96, **kw)
    assert read._mapped() is None
    want = list(read)
    assert len(got) == len(want) == len(mapped)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_bfloat16_default_codec_is_lz4_bitshuffle_and_zstd_stores_still_load(tmp_path):
    """New bfloat16 stores get the faster codec; a store of the old default reads the same."""
    from zarr.codecs import BloscCodec

    x = torch.randn(600, 8).bfloat16()
    rows = torch.arange(600)
    for name, compressors in [("new", "auto"), ("old", "zstd")]:
        with StoreWriter(
            tmp_path / name, dtype="bfloat16", chunk_rows=128, compressors=compressors
        ) as w:
            w.append(SimpleNamespace(acts={"p": x}, token_ids=rows, doc_index=rows, position=rows))
    (new_codec,) = open_store(tmp_path / "new").array("p").metadata.codecs[1:]
    (old_codec,) = open_store(tmp_path / "old").array("p").metadata.codecs[1:]
    assert isinstance(new_codec, BloscCodec) and new_codec.cname.value == "lz4"
    assert new_codec.shuffle.value == "bitshuffle"
    assert old_codec.cname.value == "zstd"
    batches = {
        name: list(ActivationLoader(tmp_path / name, "p", 50, val_fraction=0.0, seed=1))
        for name in ("new", "old")
    }
    for a, b in zip(batches["new"], batches["old"], strict=True):
        assert torch.equal(a, b)
    got = torch.cat(batches["new"])
    assert torch.equal(got.sort(0).values, x.float().sort(0).values)  # every row, once


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_gather_in_parts_equals_one_take(monkeypatch, threads):
    from concurrent.futures import ThreadPoolExecutor

    from sae_hooks.store import loader as loader_module

    monkeypatch.setattr(loader_module, "GATHER_THREADS", threads)
    monkeypatch.setattr(loader_module, "GATHER_PART_ROWS", 4)
    src = np.arange(200 * 3, dtype=np.float32).reshape(200, 3)
    idx = np.random.default_rng(0).permutation(200)[:37]
    dest = np.zeros((37, 3), np.float32)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        loader_module._gather(src, idx, dest, pool)
    np.testing.assert_array_equal(dest, src[idx])


def test_large_batches_cut_in_parallel_parts_equal_the_read_path(kinds, monkeypatch):
    store = kinds["f32map"]
    monkeypatch.setattr("sae_hooks.store.loader.GATHER_THREADS", 2)
    got = list(ActivationLoader(store, "p", 1100, seed=9, drop_last=False))
    monkeypatch.setattr(type(store), "row_map", lambda self, point: None)
    want = list(ActivationLoader(store, "p", 1100, seed=9, drop_last=False))
    assert [len(b) for b in got] == [1100, 1100, 374]
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    ids = torch.cat(got)[:, 0].long().sort().values
    assert torch.equal(ids, torch.arange(2574))  # val_fraction 0.01 of 2600 rows: 26 held out
