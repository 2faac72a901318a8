"""Sizes refused up front, JSON of any depth, and the clear messages of issue 30 items
15 and 16. Each test failed before its fix (a hang, a 59.6 GiB MemoryError, a
RecursionError, an UnpicklingError or SafetensorError, a message that was wrong)."""

from __future__ import annotations

import errno
import json
import os
import pickle
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import zarr.storage._local as zarr_local

from sae_hooks.cli import main
from sae_hooks.data import text_batches
from sae_hooks.store import StoreWriter, capture_to_store, open_store
from sae_hooks.train import TrainConfig, read_sweep
from sae_hooks.train.checkpoint import read_state
from sae_hooks.train.runlock import acquire, release

DEEP = "[" * 100_000 + "]" * 100_000


def rows(n, d):
    return SimpleNamespace(
        acts={"p": torch.zeros(n, d)},
        token_ids=torch.arange(n),
        doc_index=torch.zeros(n, dtype=torch.int64),
        position=torch.arange(n),
    )


# ------------------------------------------------------------------ 15: sizes


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"shard_chunks": 10**7}, "shard_chunks=10,000,000 is too many .* limit is 65,536"),
        ({"chunk_rows": 10**9}, r"a chunk of 1,000,000,000 rows .* over the limit of 2 GiB"),
        ({"chunk_rows": 2**20, "points": ["p"], "d_model": 4096}, r"16\.0 GiB, over the limit"),
        ({"shard_chunks": 4096, "points": ["p"], "d_model": 1024}, r"a shard .* limit of 8 GiB"),
    ],
)
def test_writer_sizes_are_refused_up_front(settings, message, tmp_path):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        StoreWriter(tmp_path / "s", **settings)
    assert time.perf_counter() - start < 5 and not list(tmp_path.iterdir())  # nothing made


def test_a_chunk_too_large_for_the_first_batch_is_refused_before_allocating(tmp_path):
    with StoreWriter(tmp_path / "s", chunk_rows=2**20) as w:  # width unknown until then
        with pytest.raises(ValueError, match=r"1,048,576 rows x 16,384 bytes is 16\.0 GiB"):
            w.append(rows(3, 4096))
        assert w.committed_rows == 0


def test_deeply_nested_json_is_a_clear_error_everywhere(tmp_path):
    """SAE configs, run.json, TrainConfig, checkpoint state, zarr.json, sweep.json."""
    from sae_hooks.runrecord import read_run_record
    from sae_hooks.sae import TopKSAE, load_sae

    sae = tmp_path / "sae"
    TopKSAE(8, 16, top_k=2).save(sae)
    (sae / "config.json").write_text(DEEP)
    run = tmp_path / "run"
    (run / "store").mkdir(parents=True)
    (run / "run.json").write_text(DEEP)
    (run / "store" / "zarr.json").write_text(DEEP)
    (run / "sweep.json").write_text(DEEP)
    (run / "state.json").write_text(DEEP)
    (run / "config.json").write_text(DEEP)
    cases = [
        (lambda: load_sae(sae), "config.json"),
        (lambda: read_run_record(run / "store"), "run.json"),
        (lambda: TrainConfig.from_json(run / "config.json"), "config.json"),
        (lambda: read_state(run), "state.json"),
        (lambda: open_store(run / "store"), "zarr.json is nested too deeply"),
        (lambda: read_sweep(run), "sweep.json"),
    ]
    for call, named in cases:
        with pytest.raises(ValueError, match=r"nested too deeply|recursion depth") as caught:
            call()
        assert named in str(caught.value)


def test_a_deeply_nested_lock_file_is_a_torn_one(tmp_path):
    (tmp_path / ".lock").write_text(DEEP)  # as if torn: no holder named, taken
    acquire(tmp_path)
    release(tmp_path)


# ------------------------------------------------------------------ 16: model directories


class Marker:
    """Unpickling this creates a file: proof that a pickle ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def model_dir(tmp_path, tiny_gpt2):
    path = tmp_path / "model"
    path.mkdir()
    tiny_gpt2.config.save_pretrained(path)
    return path


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_capture_model_dir_weights_are_checked(tmp_path, capsys, monkeypatch, tiny_gpt2):
    monkeypatch.setenv("SAE_HOOKS_CACHE", str(tmp_path / "cache"))
    path = model_dir(tmp_path, tiny_gpt2)
    marker = tmp_path / "ran"
    (path / "pytorch_model.bin").write_bytes(pickle.dumps(Marker(marker)))
    argv = ["capture", "--model", path, "--point", "resid_post.1", "--run", "r", "--quiet"]
    code, _, err = cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1, err
    assert "pytorch_model.bin is a pickle" in err and "never unpickles" in err
    assert "safetensors" in err and not marker.exists()
    (path / "model.safetensors").write_bytes(b"")
    code, _, err = cli(capsys, *argv)
    assert code == 2 and "model.safetensors is not a readable safetensors file (it is empty)" in err
    (path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage}")
    code, _, err = cli(capsys, *argv)
    assert code == 2 and f"{path / 'model.safetensors'} is not a readable" in err, err
    assert not (tmp_path / "cache" / "r" / "store").exists()


# ------------------------------------------------------------------ 16: messages


def test_a_full_disk_that_removes_a_new_store_says_capture_again(
    tiny_gpt2, tokenizer, texts, tmp_path, monkeypatch
):
    data = text_batches(texts[:6], tokenizer, context_length=32, batch_size=3)
    real = zarr_local._put

    def full(path, value, exclusive=False):
        if "/c/" in str(path):  # chunk data: the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, value, exclusive)

    monkeypatch.setattr(zarr_local, "_put", full)
    with warnings.catch_warnings():  # and no warning repeating the error's "resume it"
        warnings.simplefilter("error")
        with pytest.raises(OSError, match=r"was removed; free space .* capture again") as caught:
            capture_to_store(
                tiny_gpt2, "resid_post.1", data, tmp_path / "s", chunk_rows=16, progress=False
            )
    assert caught.value.errno == errno.ENOSPC and "resume" not in str(caught.value)
    assert not (tmp_path / "s").exists()


def test_the_resume_refusal_names_overwrite_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SAE_HOOKS_CACHE", str(tmp_path))
    argv = ["capture", "--family", "gpt2", "--tiny", "--point", "resid_post.1", "--run", "r"]
    argv += ["--max-rows", "100", "--quiet"]
    assert cli(capsys, *argv, "--context-length", "32")[0] == 0
    for change in (
        ["--context-length", "32", "--store-dtype", "float16", "--max-rows", "200"],
        ["--context-length", "16", "--max-rows", "200"],
    ):
        code, _, err = cli(capsys, *argv, *change)  # another dtype; another fingerprint
        assert code == 2 and err.count("--overwrite") == 1 and "--run OTHER" in err, err


def test_a_full_disk_while_writing_the_run_lock_names_the_lock_file(tmp_path, monkeypatch):
    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(OSError, match=r"cannot write the lock file .*\.lock") as caught:
        acquire(tmp_path / "run")
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.undo()
    acquire(tmp_path / "run")  # nothing held after the failure
    release(tmp_path / "run")


def test_train_config_refuses_impossible_sparsity_and_a_transcoder_onto_itself():
    with pytest.raises(ValueError, match="target_l0=100 exceeds nb_concepts=32"):
        TrainConfig(architecture="jumprelu", nb_concepts=32, target_l0=100, steps=1)
    config = TrainConfig(architecture="jumprelu", expansion_factor=1, target_l0=40, steps=1)
    with pytest.raises(ValueError, match="target_l0=40 exceeds nb_concepts=32"):
        config.resolve(32)  # known once the width is
    with pytest.raises(ValueError, match="is the transcoder's own input point"):
        TrainConfig(architecture="transcoder", point="mlp_out.1", target_point="mlp_out.1", steps=1)
    json.dumps(
        TrainConfig(architecture="jumprelu", nb_concepts=32, target_l0=32, steps=1).to_dict()
    )
