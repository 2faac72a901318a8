"""Several processes: sharded capture, data-parallel training, the merged store view.

The multi-process half runs this file as a script under `accelerate launch` with 2
CPU processes (gloo) once per session (`launched`), then compares what the ranks
wrote with the same work done here in one process. `accelerate launch --cpu` never
starts more than one process on CPU (it needs MPI for that), so the launch uses the
torchrun path (`--multi_gpu`), which on a host without GPUs makes gloo processes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import Interrupted

from sae_hooks.data import text_batches
from sae_hooks.store import (
    ActivationLoader,
    ShardedStore,
    capture_to_store,
    capture_to_store_distributed,
    open_store,
)
from sae_hooks.train import TrainConfig, Trainer, read_log, train

POINTS = ["resid_post.1", "resid_post.2"]
HALF = 12  # the 2-process run stops here; one process resumes it to the end


def config(architecture: str) -> TrainConfig:
    return TrainConfig(
        architecture=architecture,
        point=POINTS[1],
        expansion_factor=2,
        k_per_token=4,
        batch_size=64,
        steps=24,
        log_every=6,
        val_every=None,
        checkpoint_every=None,
        init_rows=256,
        progress=False,
    )


def make_data(texts, tokenizer):
    return text_batches(texts, tokenizer, context_length=32, batch_size=4)


def rows_by_token(store, point):
    """(doc_index, position, token_ids, acts) sorted by (doc_index, position)."""
    docs, pos = store.doc_index(), store.position()
    order = np.lexsort((pos, docs))
    return docs[order], pos[order], store.token_ids()[order], store.read(point)[order]


def assert_same_rows(a, b):
    for p in POINTS:
        for x, y in zip(rows_by_token(a, p), rows_by_token(b, p)):
            np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------------------- one process


@pytest.fixture()
def data(texts, tokenizer):
    return make_data(texts[:16], tokenizer)


def test_ranks_as_independent_jobs_on_memory_url(tiny_gpt2, data):
    """Two ranks, one interrupted and resumed, on fsspec memory://: one store's rows."""
    base = f"memory://sae-hooks-dist/{uuid.uuid4().hex}"
    single = capture_to_store(tiny_gpt2, POINTS, data, f"{base}/single", progress=False)
    kw = dict(world_size=2, chunk_rows=32, progress=False)
    capture_to_store_distributed(tiny_gpt2, POINTS, data, f"{base}/sharded", rank=0, **kw)
    with pytest.raises(KeyboardInterrupt):
        capture_to_store_distributed(
            tiny_gpt2, POINTS, Interrupted(data, 3), f"{base}/sharded", rank=1, **kw
        )
    rank1 = capture_to_store_distributed(tiny_gpt2, POINTS, data, f"{base}/sharded", rank=1, **kw)
    assert 0 < rank1.committed_inputs < single.committed_inputs

    merged = open_store(f"{base}/sharded")
    assert isinstance(merged, ShardedStore) and len(merged.shards) == 2
    assert merged.n_rows == single.n_rows and merged.points == POINTS
    assert merged.committed_inputs == single.committed_inputs
    assert_same_rows(merged, single)
    for p in POINTS:
        m, q = merged.stats(p), single.stats(p)
        torch.testing.assert_close(m.mean, q.mean, rtol=1e-6, atol=1e-6)
        assert m.mean_sq_norm == pytest.approx(q.mean_sq_norm, rel=1e-12)
    cut = merged.shards[0].n_rows  # reads across the rank boundary are stitched
    np.testing.assert_array_equal(
        merged.read(POINTS[0], cut - 5, cut + 5),
        np.concatenate([merged.shards[0].read(POINTS[0], cut - 5), rank1.read(POINTS[0], 0, 5)]),
    )
    assert merged.verify() == []
    assert merged.read(POINTS[0], merged.n_rows).shape == (0, merged.d_model(POINTS[0]))
    assert len(merged.doc_index(cut, cut)) == 0
    with pytest.raises(IndexError, match="outside"):
        merged.read(POINTS[0], 0, merged.n_rows + 1)


def test_loader_and_trainer_read_a_sharded_store(tiny_gpt2, data, tmp_path):
    for rank in range(2):
        capture_to_store_distributed(
            tiny_gpt2, POINTS, data, tmp_path / "s", rank=rank, world_size=2, progress=False
        )
    store = open_store(tmp_path / "s")
    loader = ActivationLoader(store, POINTS[0], 50, shuffle=False, drop_last=False, val_fraction=0)
    np.testing.assert_array_equal(torch.cat(list(loader)).numpy(), store.read(POINTS[0]))
    sae = train(dataclasses.replace(config("topk"), steps=3), store, tmp_path / "run")
    assert sae.input_size == store.d_model(POINTS[1])


@pytest.mark.slow
def test_bad_sharded_requests_are_refused(tiny_gpt2, data, tmp_path):
    where = tmp_path / "s"
    capture_to_store_distributed(
        tiny_gpt2, POINTS, data, where, rank=0, world_size=2, progress=False
    )
    with pytest.raises(FileNotFoundError, match=r"rank 1 of the 2-rank store .* is missing"):
        open_store(where)
    with pytest.raises(ValueError, match="captured by 2 ranks, not 3"):
        capture_to_store_distributed(
            tiny_gpt2, POINTS, data, where, rank=0, world_size=3, progress=False
        )
    with pytest.raises(TypeError, match="no max_rows"):
        capture_to_store_distributed(tiny_gpt2, POINTS, data, where, max_rows=10)
    with pytest.raises(ValueError, match="both rank and world_size"):
        capture_to_store_distributed(tiny_gpt2, POINTS, data, where, rank=0)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\)"):
        capture_to_store_distributed(tiny_gpt2, POINTS, data, where, rank=2, world_size=2)
    capture_to_store(tiny_gpt2, POINTS, data, tmp_path / "plain", progress=False)
    with pytest.raises(ValueError, match="other than a sharded activation store"):
        capture_to_store_distributed(
            tiny_gpt2, POINTS, data, tmp_path / "plain", rank=0, world_size=2
        )


# ------------------------------------------------------------------------- two processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launched(tmp_path_factory, tiny_gpt2, tokenizer_dir, texts):
    """Run this file under `accelerate launch` with 2 CPU processes; return its folder."""
    root = tmp_path_factory.mktemp("launched")
    tiny_gpt2.save_pretrained(root / "model")
    (root / "texts.json").write_text(json.dumps(texts[:24]))
    (root / "tokenizer").symlink_to(tokenizer_dir)
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [
        str(accelerate),
        "launch",
        "--multi_gpu",
        "--num_processes=2",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        f"--main_process_port={_free_port()}",
        __file__,
        str(root),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    tic = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    (root / "wall_s").write_text(f"{time.perf_counter() - tic:.1f}")
    return root


@pytest.mark.slow
def test_two_process_capture_holds_every_row_once(launched, tiny_gpt2, tokenizer, texts, tmp_path):
    data = make_data(texts[:24], tokenizer)
    single = capture_to_store(tiny_gpt2, POINTS, data, tmp_path / "one", progress=False)
    merged = open_store(launched / "cap")
    assert isinstance(merged, ShardedStore) and len(merged.shards) == 2
    assert all(s.n_rows > 0 for s in merged.shards)
    assert merged.n_rows == single.n_rows
    assert_same_rows(merged, single)
    ranks = [set(np.unique(s.doc_index())) for s in merged.shards]
    assert not ranks[0] & ranks[1]  # each rank read its own input batches


@pytest.mark.slow
def test_data_parallel_training_equals_one_process(launched, tmp_path):
    """Same global batches, averaged gradients: the 2-process SAE is the 1-process SAE."""
    from safetensors.torch import load_file

    reference = train(config("topk"), open_store(launched / "cap"), tmp_path / "run")
    two = load_file(launched / "run-topk" / "sae" / "model.safetensors")
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(two[name], value, rtol=1e-5, atol=1e-5, msg=name)
    log = read_log(launched / "run-topk")
    assert [r["step"] for r in log if "loss" in r] == [6, 12, 18, 24]  # rank 0 logs, once


@pytest.mark.slow
def test_resume_under_another_world_size(launched, tmp_path):
    """A checkpoint of the 2-process run at step HALF finishes in one process, exactly."""
    import shutil

    from safetensors.torch import load_file

    run = tmp_path / "half"
    shutil.copytree(launched / "half", run)
    store = open_store(launched / "cap")
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == HALF
    resumed = Trainer(config("topk"), store, run).fit()
    straight = load_file(launched / "run-topk" / "sae" / "model.safetensors")
    for name, value in resumed.state_dict().items():
        torch.testing.assert_close(value, straight[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.slow
def test_batchtopk_ranks_stay_identical(launched):
    """Per-rank budgets, averaged threshold: both replicas end bit-identical."""
    from safetensors.torch import load_file

    from sae_hooks.sae import load_sae

    ranks = [load_file(launched / f"state-batchtopk-{r}.safetensors") for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    for name in ranks[0]:
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0, msg=name)
    sae = load_sae(launched / "run-batchtopk" / "sae")
    assert sae.top_k == 4 * 64  # saved with the global budget, not the per-rank one
    assert float(sae.running_threshold) > 0
    log = read_log(launched / "run-batchtopk")
    assert log[-1]["val/l0"] > 0 and log[-2]["fvu"] < 1.0


# ------------------------------------------------------------------------- the launched script


def _worker(root: Path) -> None:
    """What each of the 2 processes runs."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from sae_hooks.distributed import processes

    torch.set_num_threads(1)
    rank = processes().rank
    model = GPT2LMHeadModel.from_pretrained(root / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    data = make_data(json.loads((root / "texts.json").read_text()), tokenizer)
    capture_to_store_distributed(model, POINTS, data, root / "cap", chunk_rows=64, progress=False)
    store = open_store(root / "cap")
    for arch in ("topk", "batchtopk"):
        sae = train(config(arch), store, root / f"run-{arch}")
        save_file(sae.state_dict(), str(root / f"state-{arch}-{rank}.safetensors"))
    Trainer(config("topk"), store, root / "half").fit(until_step=HALF)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
