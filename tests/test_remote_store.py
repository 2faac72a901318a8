"""Stores on a real S3-compatible server (moto's server mode, tests/s3_server.py) via s3fs.

Capture into s3://bucket/run/store (one store and a sharded one), a capture killed
with SIGKILL and resumed to the rows of an uninterrupted one, training and a sweep
from the bucket, the one-writer lock object under simultaneous starts, and one
clear error (by URL, never the secret) for each kind of bad location.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_hooks.activations import ActivationBatch
from sae_hooks.data import text_batches
from sae_hooks.store import StoreWriter, capture_to_store, open_store
from sae_hooks.store.lock import StoreLockedError
from sae_hooks.store.remote import ObjectStoreError, lock_key

POINT = "resid_post.1"
BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_remote.py"


@pytest.fixture()
def data(texts, tokenizer):
    return text_batches(texts[:24], tokenizer, context_length=32, batch_size=4)


def rows(store):
    return store.read(POINT), store.token_ids(), store.doc_index()


def assert_same(a, b):
    for x, y in zip(rows(a), rows(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_capture_into_a_bucket_equals_a_local_capture(s3_server, tiny_gpt2, data, tmp_path):
    url = f"s3://{s3_server.new_bucket()}/run/store"
    local = capture_to_store(tiny_gpt2, POINT, data, tmp_path / "s", progress=False, chunk_rows=64)
    remote = capture_to_store(
        tiny_gpt2, POINT, data, url, progress=False, chunk_rows=64,
        storage_options=s3_server.options(),
    )  # fmt: skip
    assert remote.n_rows == local.n_rows > 64
    assert_same(open_store(url, storage_options=s3_server.options()), local)
    assert remote.verify() == []


@pytest.mark.slow
def test_sharded_capture_into_a_bucket(s3_server, tiny_gpt2, data, tmp_path):
    from sae_hooks.store import capture_to_store_distributed

    url = f"s3://{s3_server.new_bucket()}/run/store"
    opts = s3_server.options()
    for rank in range(2):  # two independent jobs (a SLURM array), one rank store each
        capture_to_store_distributed(
            tiny_gpt2, [POINT], data, url, rank=rank, world_size=2, progress=False,
            chunk_rows=64, storage_options=opts,
        )  # fmt: skip
    sharded = open_store(url, storage_options=opts)
    local = capture_to_store(tiny_gpt2, POINT, data, tmp_path / "s", progress=False)
    assert type(sharded).__name__ == "ShardedStore" and sharded.n_rows == local.n_rows
    assert (sharded.read_threads, local.read_threads) == (16, None)  # many requests in flight
    order = np.lexsort((sharded.position(), sharded.doc_index()))
    np.testing.assert_array_equal(sharded.read(POINT)[order], local.read(POINT))
    assert sharded.verify() == []


KILLED_CAPTURE = textwrap.dedent(
    """
    import sys, time
    from sae_hooks.data import pydoc_texts, text_batches
    from sae_hooks.models import pydoc_tokenizer, tiny_model
    from sae_hooks.store import capture_to_store

    class Slow:  # announces each batch handed out, then lets the parent kill us
        def __init__(self, data):
            self.data = data
        def __iter__(self):
            for i, batch in enumerate(self.data):
                print(i, flush=True)
                time.sleep(0.3)
                yield batch

    tok = pydoc_tokenizer(512, max_length=64)
    data = text_batches(pydoc_texts(64, min_chars=81)[:24], tok, context_length=32, batch_size=4)
    model = tiny_model("gpt2", d_model=64, n_layers=4, context=64)
    capture_to_store(model, "resid_post.1", Slow(data), sys.argv[1], progress=False,
                     chunk_rows=64)  # credentials and endpoint: the AWS_* variables
    print("DONE", flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_mid_capture_resumes_exactly(s3_server, tiny_gpt2, data, tmp_path):
    """A capture into the bucket killed with SIGKILL (no cleanup, its lock object left
    behind) and resumed by another process ends with the rows of an uninterrupted one."""
    url = f"s3://{s3_server.new_bucket()}/run/store"
    opts = s3_server.options()
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_CAPTURE, url],
        stdout=subprocess.PIPE, text=True, env=s3_server.env(),
    )  # fmt: skip
    try:
        for line in proc.stdout:
            if line.strip() == "3":  # batches 0-2 appended; some committed
                break
        time.sleep(1.5)  # past a commit interval
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(60)
    killed = open_store(url, storage_options=opts)
    assert 0 < killed.committed_inputs < len(list(data))
    with pytest.warns(UserWarning, match="stale writer lock"):
        resumed = capture_to_store(
            tiny_gpt2, POINT, data, url, progress=False, storage_options=opts
        )
    full = capture_to_store(tiny_gpt2, POINT, data, tmp_path / "full", progress=False)
    assert_same(resumed, full)
    assert resumed.committed_inputs == full.committed_inputs


def test_simultaneous_writers_exactly_one_wins(s3_server):
    """10 trials of 3 processes taking one store's lock at the same instant (a barrier):
    exactly one wins each time (bench/bench_remote.py --locks 100 is the long run)."""
    spec = importlib.util.spec_from_file_location("bench_remote", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(locks=10, procs=3, atomic=False)
    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    assert bench.locks(args, port, s3_server.options()) == 10


def test_second_writer_in_this_process_is_refused_and_lock_released(s3_server):
    url, opts = f"s3://{s3_server.new_bucket()}/run/store", s3_server.options()
    batch = ActivationBatch(
        acts={"p": torch.ones(10, 4)}, token_ids=torch.arange(10),
        doc_index=torch.zeros(10, dtype=torch.long), position=torch.arange(10),
    )  # fmt: skip
    with StoreWriter(url, points=["p"], d_model=4, storage_options=opts) as w:
        w.append(batch)
        with pytest.raises(StoreLockedError, match="already open"):
            StoreWriter(url, mode="resume", storage_options=opts)
    with StoreWriter(url, mode="resume", storage_options=opts) as w:  # released: free again
        w.append(batch)
    assert open_store(url, storage_options=opts).n_rows == 20


def test_loader_from_the_bucket_keeps_more_chunk_requests_in_flight(s3_server, tmp_path):
    """On an object store the loader reads up to REMOTE_READ_THREADS chunks of a buffer at
    once (more than the cores' READ_THREADS: the requests wait on the network), and its
    batches are exactly those of the same rows on local disk."""
    import threading

    from sae_hooks.store import ActivationLoader
    from sae_hooks.store.loader import READ_THREADS
    from sae_hooks.store.reader import REMOTE_READ_THREADS

    url, opts = f"s3://{s3_server.new_bucket()}/run/store", s3_server.options()
    x = torch.randn(1024, 8)
    batch = ActivationBatch(
        acts={"p": x}, token_ids=torch.arange(1024), doc_index=torch.arange(1024),
        position=torch.zeros(1024, dtype=torch.long),
    )  # fmt: skip
    for where, so in [(tmp_path / "s", None), (url, opts)]:
        with StoreWriter(where, points=["p"], d_model=8, chunk_rows=64, storage_options=so) as w:
            w.append(batch)
    local, remote = open_store(tmp_path / "s"), open_store(url, storage_options=opts)
    assert (local.read_threads, remote.read_threads) == (None, REMOTE_READ_THREADS)
    lock, now, most, read = threading.Lock(), [0], [0], remote.read_raw

    def counted(point, start=0, stop=None, *, out=None):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        try:
            time.sleep(0.05)  # a request's latency: the reads of one buffer overlap
            return read(point, start, stop, out=out)
        finally:
            with lock:
                now[0] -= 1

    remote.read_raw = counted
    got = [
        list(ActivationLoader(s, "p", 128, val_fraction=0.0, buffer_chunks=8, dtype=None))
        for s in (local, remote)
    ]
    assert len(got[0]) == len(got[1]) == 8
    for a, b in zip(*got, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert READ_THREADS < most[0] <= REMOTE_READ_THREADS


@pytest.mark.slow
def test_train_and_sweep_from_the_bucket(s3_server, tiny_gpt2, data, tmp_path):
    """Train (the CLI, credentials from AWS_* variables) and a sweep from a store in the
    bucket; no secret in the run's files or the output."""
    url = f"s3://{s3_server.new_bucket()}/run/store"
    capture_to_store(tiny_gpt2, POINT, data, url, progress=False, chunk_rows=64,
                     storage_options=s3_server.options())  # fmt: skip
    env = {**s3_server.env(), "SAE_HOOKS_CACHE": str(tmp_path / "cache")}
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        "[sweep]\nexpansion_factor = [2]\nk_per_token = [4, 8]\n"
        "[train]\ntotal_tokens = 2000\nbatch_size = 64\n"
    )
    for cmd in (
        ["train", "--run", "r", "--store", url, "--total-tokens", "2000", "--batch-size", "64",
         "--expansion-factor", "2", "--k-per-token", "4"],
        ["sweep", str(sweep), "--run", "r", "--store", url],
    ):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "sae_hooks", *cmd], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert s3_server.writer["secret"] not in done.stdout + done.stderr
    run = tmp_path / "cache" / "r"
    assert (run / "train" / "sae").is_dir() and (run / "sweep").is_dir()
    for f in run.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".jsonl", ".toml", ".txt", ".md"):
            assert s3_server.writer["secret"] not in f.read_text(errors="replace"), f


def test_a_run_directory_on_the_bucket_is_refused(s3_server, tmp_path):
    from sae_hooks.train import TrainConfig, train

    with pytest.raises(ValueError, match="shared filesystem"):
        train(TrainConfig(point="p", total_tokens=10, batch_size=2), torch.zeros(10, 4),
              f"s3://{s3_server.new_bucket()}/run")  # fmt: skip
    assert not Path("s3:").exists()


# -- bad locations: one clear error each, nothing left that blocks a rerun -----------


def bad_locations(server):
    bucket = server.new_bucket()
    fast = {"config_kwargs": {"retries": {"max_attempts": 1}}}
    secret = {"key": server.writer["key"], "secret": "NOT-THE-SECRET-0123456789"}
    return bucket, {
        "unreachable": (
            f"s3://{bucket}/s",
            server.options(endpoint_url="http://127.0.0.1:9", **fast),
            "cannot reach",
        ),
        "wrong credentials": (f"s3://{bucket}/s", server.options(secret), "refused"),
        "missing bucket": ("s3://no-such-bucket-here/s", server.options(), "does not exist"),
        "read-only user": (f"s3://{bucket}/s", server.options(server.reader), "refused"),
    }


def test_bad_locations_fail_clearly_and_leave_nothing(s3_server):
    import s3fs

    bucket, cases = bad_locations(s3_server)
    for name, (url, opts, says) in cases.items():
        with pytest.raises(ObjectStoreError, match=says) as info:
            StoreWriter(url, points=["p"], d_model=4, storage_options=opts)
        text = str(info.value)
        assert url in text, name
        assert opts.get("secret", "") not in text and "NOT-THE-SECRET" not in text, name
    fs = s3fs.S3FileSystem(**s3_server.options())
    assert fs.ls(bucket) == []  # nothing half-written: a rerun with good settings starts clean
    with StoreWriter(f"s3://{bucket}/s", points=["p"], d_model=4,
                     storage_options=s3_server.options()):  # fmt: skip
        pass


def test_reading_with_bad_settings_fails_clearly(s3_server):
    bucket, cases = bad_locations(s3_server)
    with StoreWriter(f"s3://{bucket}/s", points=["p"], d_model=4,
                     storage_options=s3_server.options()):  # fmt: skip
        pass
    for name in ("unreachable", "wrong credentials"):
        url, opts, says = cases[name]
        with pytest.raises(ObjectStoreError, match=says) as info:
            open_store(url, storage_options=opts)
        assert url in str(info.value) and "NOT-THE-SECRET" not in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"bucket 'no-such-bucket-here' .* does not exist"):
        open_store(cases["missing bucket"][0], storage_options=s3_server.options())


def test_lock_object_names_the_holder(s3_server):
    url, opts = f"s3://{s3_server.new_bucket()}/run/store", s3_server.options()
    import s3fs

    fs = s3fs.S3FileSystem(**opts)
    with StoreWriter(url, points=["p"], d_model=4, storage_options=opts):
        record = json.loads(fs.cat(lock_key(url).split("://")[1]))["writer"]
        assert record["pid"] == os.getpid() and record["token"]
