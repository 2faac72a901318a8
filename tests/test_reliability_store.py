"""No silent data loss in stores and captures (issue 23, store side): each test here
failed before its fix. Continuing a cut capture, resuming with other settings, missing
chunks, half-created folders, a lock kept after a full disk, empty stores, bad input."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
import torch
import zarr.storage._local as zarr_local
from helpers import POINTS, D, make_batch

from sae_hooks.data import load_texts, text_batches
from sae_hooks.hooks import capture_batch
from sae_hooks.store import (
    StoreDamagedError,
    StoreLockedError,
    StoreMismatchError,
    StoreWriter,
    capture_to_store,
    open_store,
)

CAPTURE_POINTS = ["resid_post.1", "resid_mid.2"]


@pytest.fixture()
def data(texts, tokenizer):
    return text_batches(texts[:24], tokenizer, context_length=32, batch_size=5)


def same_rows(a, b) -> None:
    np.testing.assert_array_equal(a.token_ids(), b.token_ids())
    np.testing.assert_array_equal(a.doc_index(), b.doc_index())
    np.testing.assert_array_equal(a.position(), b.position())
    for p in a.points:
        np.testing.assert_array_equal(a.read(p), b.read(p))


def capture(model, data, path, **kw):
    return capture_to_store(model, CAPTURE_POINTS, data, path, progress=False, chunk_rows=32, **kw)


# ------------------------------------------------------------------ 1: max_rows, continued


def test_continuing_a_capture_cut_at_max_rows_equals_an_uninterrupted_one(
    tiny_gpt2, data, tmp_path
):
    whole = capture(tiny_gpt2, data, tmp_path / "whole")
    cut = capture(tiny_gpt2, data, tmp_path / "cut", max_rows=100)
    assert cut.n_rows == 100 and cut.attrs["partial_input_rows"] > 0  # cut inside a batch
    more = capture(tiny_gpt2, data, tmp_path / "cut", max_rows=130)
    assert more.n_rows == 130
    continued = capture(tiny_gpt2, data, tmp_path / "cut")
    assert continued.n_rows == whole.n_rows and continued.attrs["partial_input_rows"] == 0
    same_rows(continued, whole)
    for p in CAPTURE_POINTS:
        torch.testing.assert_close(continued.stats(p).mean, whole.stats(p).mean)


# ------------------------------------------------------------------ 2: fingerprint


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"batch_size": 4}, "batch_size"),
        ({"context_length": 24}, "context_length"),
        ({"docs": 20}, "documents"),
    ],
)
def test_resume_with_other_data_settings_is_refused(
    tiny_gpt2, texts, tokenizer, tmp_path, change, field
):
    settings = {"context_length": 32, "batch_size": 5, "docs": 24}

    def make(s):
        return text_batches(
            texts[: s["docs"]],
            tokenizer,
            context_length=s["context_length"],
            batch_size=s["batch_size"],
        )

    capture(tiny_gpt2, make(settings), tmp_path / "s", max_rows=60)
    with pytest.raises(StoreMismatchError, match=rf"{field}: stored .*overwrite=True") as caught:
        capture(tiny_gpt2, make({**settings, **change}), tmp_path / "s")
    assert field in caught.value.fields
    assert open_store(tmp_path / "s").n_rows == 60  # nothing appended


def test_resume_with_another_model_of_the_same_class_is_refused(tiny_gpt2, data, tmp_path):
    capture(tiny_gpt2, data, tmp_path / "s", max_rows=60)
    other = type(tiny_gpt2)(tiny_gpt2.config).eval()  # same class, same name, other weights
    with pytest.raises(StoreMismatchError, match="model_sha256: stored"):
        capture(other, data, tmp_path / "s")
    with pytest.raises(StoreMismatchError, match="drop_bos: stored False, now True"):
        capture(tiny_gpt2, data, tmp_path / "s", drop_bos=True)
    # the flag the message names resolves it
    assert capture(other, data, tmp_path / "s", overwrite=True).n_rows > 60


def test_store_without_a_fingerprint_resumes_with_a_warning(tiny_gpt2, data, tmp_path):
    whole = capture(tiny_gpt2, data, tmp_path / "whole")
    capture(tiny_gpt2, data, tmp_path / "old", max_rows=60)
    meta = tmp_path / "old" / "zarr.json"
    doc = json.loads(meta.read_text())
    del doc["attributes"]["fingerprint"]  # as written by an older sae-hooks
    meta.write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="no fingerprint"):
        same_rows(capture(tiny_gpt2, data, tmp_path / "old"), whole)


# ------------------------------------------------------------------ 3: missing chunks


def test_a_missing_chunk_of_committed_rows_fails_loudly(tmp_path):
    path = tmp_path / "s"
    with StoreWriter(path, points=POINTS, d_model=D, chunk_rows=16) as w:
        for i in range(10):
            w.append(make_batch(i))
    (path / "acts" / POINTS[0] / "c" / "2" / "0").unlink()
    (path / "token_ids" / "c" / "3").unlink()
    store = open_store(path)
    np.testing.assert_array_equal(store.read(POINTS[0], 0, 32).shape, (32, D[POINTS[0]]))
    with pytest.raises(StoreDamagedError, match=r"rows \[32, 48\).*missing.*verify\(\)") as e:
        store.read(POINTS[0])
    assert e.value.rows == (32, 48) and e.value.array == f"acts/{POINTS[0]}"
    with pytest.raises(StoreDamagedError, match="token_ids"):
        store.token_ids(40, 60)
    from sae_hooks.store import ActivationLoader

    loader = ActivationLoader(store, POINTS[0], batch_size=8, val_fraction=0.0)
    with pytest.raises(StoreDamagedError, match=str(path)):
        list(loader)


def test_an_all_zero_chunk_is_stored_and_reads_back(tmp_path):
    batch = make_batch(0, n=20)
    batch.acts[POINTS[0]].zero_()  # zarr would skip a chunk equal to its fill value
    with StoreWriter(tmp_path / "s", points=POINTS, d_model=D, chunk_rows=16) as w:
        w.append(batch)
    store = open_store(tmp_path / "s")
    assert (store.read(POINTS[0]) == 0).all() and store.verify() == []


# ------------------------------------------------------------------ 4 and 21.2: leftovers


def test_a_folder_left_before_zarr_json_is_replaced_by_the_same_command(tiny_gpt2, data, tmp_path):
    whole = capture(tiny_gpt2, data, tmp_path / "whole")
    (tmp_path / "s").mkdir()  # killed after mkdir, before the group's zarr.json
    (tmp_path / "s" / "zarr.0123abcd.partial").write_bytes(b'{"zarr_fo')  # its temp file
    with pytest.raises(FileNotFoundError, match="creation was interrupted"):
        open_store(tmp_path / "s")
    same_rows(capture(tiny_gpt2, data, tmp_path / "s"), whole)
    (tmp_path / "w").mkdir()
    with StoreWriter(tmp_path / "w", mode="resume", points=POINTS, d_model=D) as w:
        w.append(make_batch(0))
    assert open_store(tmp_path / "w").n_rows == make_batch(0).token_ids.numel()


def test_a_folder_with_user_files_is_never_taken_for_a_half_made_store(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an activation store"):
        StoreWriter(tmp_path / "s", mode="resume")
    assert (tmp_path / "s" / "notes.txt").read_text() == "mine"


def test_a_failed_capture_leaves_nothing_on_disk(tiny_gpt2, data, tmp_path):
    with pytest.raises(ValueError, match="out of range"):
        capture_to_store(tiny_gpt2, "resid_post.9", data, tmp_path / "a", progress=False)
    bad = [{"input_ids": torch.full((1, 8), 10_000)}]  # outside the vocabulary
    with pytest.raises(ValueError, match="must lie in"):
        capture_to_store(tiny_gpt2, "resid_post.1", bad, tmp_path / "b", progress=False)
    nan_model_inputs = [{"input_ids": torch.ones(1, 8, dtype=torch.long)}]
    with pytest.raises(ValueError, match="NaN or inf"), torch.no_grad():
        tiny_gpt2.transformer.h[0].ln_1.weight[0] = float("nan")
        try:
            capture_to_store(tiny_gpt2, "resid_post.1", nan_model_inputs, tmp_path / "c")
        finally:
            tiny_gpt2.transformer.h[0].ln_1.weight[0] = 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------ 5: lock after a full disk


def test_after_a_full_disk_the_suggested_resume_works_in_the_same_process(tmp_path, monkeypatch):
    path = tmp_path / "s"
    w = StoreWriter(path, points=POINTS, d_model=D, chunk_rows=16, commit_interval=0)
    w.append(make_batch(0))
    w.flush()
    real = zarr_local._put

    def full(p, value, exclusive=False):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(p))

    monkeypatch.setattr(zarr_local, "_put", full)
    with pytest.raises(OSError, match="resume"):
        for i in range(1, 40):
            w.append(make_batch(i))
        w.flush()
    with pytest.warns(UserWarning, match="could not release the lock"), pytest.raises(OSError):
        w.close()
    monkeypatch.setattr(zarr_local, "_put", real)  # space freed
    with pytest.warns(UserWarning, match="stale writer lock.*this process"):
        resumed = StoreWriter(path, mode="resume")
    with resumed:
        with pytest.raises(StoreLockedError, match="already open for writing in this process"):
            StoreWriter(path, mode="resume")
        for i in range(resumed.committed_inputs, 12):
            resumed.append(make_batch(i))
    tokens = torch.cat([make_batch(i).token_ids for i in range(12)]).numpy()
    np.testing.assert_array_equal(open_store(path).token_ids(), tokens)


# ------------------------------------------------------------------ 8: empty stores


def test_a_store_before_its_first_batch_reads_as_empty(tmp_path):
    StoreWriter(tmp_path / "s", points=POINTS).close()  # widths unknown: no arrays yet
    StoreWriter(tmp_path / "t", points=POINTS, d_model=D).close()
    for name, width in [("s", 0), ("t", D[POINTS[0]])]:
        store = open_store(tmp_path / name)
        assert store.n_rows == 0 and store.verify() == []
        assert store.read(POINTS[0]).shape == (0, width)
        assert store.token_ids().shape == (0,) and store.doc_index().dtype == np.int64
    with pytest.raises(ValueError, match=r"no rows for 'resid_post\.1' yet"):
        open_store(tmp_path / "s").d_model(POINTS[0])


def test_training_on_an_empty_store_is_a_clear_error(tmp_path):
    from sae_hooks.train import TrainConfig, train

    StoreWriter(tmp_path / "s", points=POINTS).close()
    config = TrainConfig(
        architecture="topk", nb_concepts=8, top_k=2, batch_size=4, steps=2, point=POINTS[0]
    )
    with pytest.raises(ValueError, match="rows") as caught:
        train(config, tmp_path / "s", tmp_path / "run")
    assert not isinstance(caught.value, KeyError)


# ------------------------------------------------------------------ 9: bad stores and data


def _edit_attrs(path, **changes) -> None:
    meta = path / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"].update(changes)
    meta.write_text(json.dumps(doc))


@pytest.fixture()
def small_store(tmp_path):
    with StoreWriter(tmp_path / "s", points=POINTS, d_model=D, chunk_rows=16) as w:
        for i in range(4):
            w.append(make_batch(i))
    return tmp_path / "s"


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"committed_rows": 10**6}, StoreDamagedError, "committed_rows=1000000 but the array"),
        ({"committed_rows": -3}, ValueError, r"committed_rows=-3 .*int >= 0"),
        ({"committed_inputs": "7"}, ValueError, "committed_inputs='7'"),
        ({"d_model": {POINTS[0]: 99, POINTS[1]: 8}}, StoreDamagedError, "d_model=99 disagrees"),
        ({"d_model": {POINTS[0]: 0}}, ValueError, "d_model=.*ints >= 1"),
        ({"points": "resid"}, ValueError, "points='resid'"),
    ],
)
def test_store_attributes_no_writer_leaves_are_refused(small_store, changes, error, match):
    _edit_attrs(small_store, **changes)
    with pytest.raises(error, match=match):
        open_store(small_store).read(POINTS[0])


@pytest.mark.parametrize("which", ["zarr.json", f"acts/{POINTS[0]}/zarr.json"])
def test_garbled_zarr_json_is_named(small_store, which):
    (small_store / which).write_text('{"zarr_format": 3, "node_ty')
    with pytest.raises(ValueError, match=r"zarr\.json") as caught:
        open_store(small_store).read(POINTS[0])
    assert str(small_store) in str(caught.value)


def test_writer_refuses_a_list_and_other_location_types(tmp_path):
    with pytest.raises(TypeError, match="store location must be a path or a URL string, got list"):
        StoreWriter([str(tmp_path / "s")], points=POINTS)
    with pytest.raises(TypeError, match="points must be a str or a list of str"):
        StoreWriter(tmp_path / "s", points=[1, 2])
    with (
        StoreWriter(tmp_path / "s", points=POINTS, d_model=D) as w,
        pytest.raises(TypeError, match="ActivationBatch-like"),
    ):
        w.append([make_batch(0)])
    with StoreWriter(tmp_path / "one", points=POINTS[0], d_model=12) as w:  # one point, as a str
        assert w.points == [POINTS[0]]


@pytest.mark.parametrize("shape", [(1, 0), (0, 8), ()])
def test_capture_batch_refuses_zero_length_input_ids(tiny_gpt2, shape):
    ids = torch.zeros(shape, dtype=torch.long)
    with pytest.raises(ValueError, match="hold no tokens"):
        capture_batch(tiny_gpt2, "resid_post.0", {"input_ids": ids})


def test_non_utf8_and_non_string_data_files_are_named(tmp_path):
    (tmp_path / "latin.txt").write_bytes("caf\xe9 au lait".encode("latin1"))
    with pytest.raises(ValueError, match=r"latin.txt is not UTF-8 text \(byte 0xe9 at offset 3\)"):
        load_texts(tmp_path / "latin.txt")
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl is not UTF-8"):
        load_texts(tmp_path / "bad.jsonl")
    (tmp_path / "num.jsonl").write_text('{"text": "ok"}\n\n{"text": 5}\n')
    with pytest.raises(ValueError, match=r"num.jsonl:3: 'text' must be a string, got int 5"):
        load_texts(tmp_path / "num.jsonl")
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match=r"a.txt is not UTF-8"):
        load_texts(folder)
