"""Two "nodes" on one host: two torchrun agents joined by a c10d rendezvous on 127.0.0.1.

Each node is its own `torchrun --nnodes 2 --nproc-per-node 1 --node-rank R
--rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT` process running this file.
The first launch captures a tiny GPT-2 into a 2-rank store, trains a TopK SAE to
the end, then starts a second run that the rank-1 node's training process
SIGKILLs itself in, mid-run (between two checkpoints). The other node then fails
too (its peer is gone). A second launch of both nodes resumes that run from its
last checkpoint. Both SAEs must equal a one-process run on the same store.

Marked slow: two launches of two agents and two workers, each importing torch;
measured 160-180 s wall (about 50 s of CPU) on 2 cores shared at a load average of 17.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_hooks.data import text_batches
from sae_hooks.store import ShardedStore, capture_to_store, capture_to_store_distributed, open_store
from sae_hooks.train import TrainConfig, Trainer, train

POINTS = ["resid_post.1"]
KILL_AT = 14  # the killed run's last step; its last checkpoint is at step 12
CONFIG = dict(
    architecture="topk",
    point=POINTS[0],
    expansion_factor=2,
    k_per_token=4,
    batch_size=64,
    steps=24,
    log_every=6,
    val_every=None,
    checkpoint_every=4,
    init_rows=256,
    progress=False,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(root: Path, phase: str) -> list[subprocess.CompletedProcess]:
    """Both nodes, each a torchrun agent of its own; wait for both."""
    torchrun = Path(sys.executable).parent / "torchrun"
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    nodes = [
        subprocess.Popen(
            [
                str(torchrun),
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={r}",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{port}",
                "--rdzv-id=nodes-test",
                "--max-restarts=0",
                __file__,
                str(root),
                phase,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    done = []
    for p in nodes:
        out, err = p.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


@pytest.mark.slow
def test_two_nodes_capture_train_and_resume_after_a_node_is_killed(
    tmp_path, tiny_gpt2, tokenizer_dir, tokenizer, texts
):
    from safetensors.torch import load_file

    root = tmp_path
    tiny_gpt2.save_pretrained(root / "model")
    (root / "texts.json").write_text(json.dumps(texts[:24]))
    (root / "tokenizer").symlink_to(tokenizer_dir)

    first = _launch(root, "first")
    logs = "\n".join(p.stdout[-2000:] + p.stderr[-4000:] for p in first)
    assert (root / "killed").exists(), logs  # rank 1 died by SIGKILL at step KILL_AT
    assert all(p.returncode != 0 for p in first), logs  # and took the job down
    state = json.loads((root / "killed-run" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 12  # the last checkpoint before the kill
    second = _launch(root, "resume")
    assert all(p.returncode == 0 for p in second), "\n".join(p.stderr[-4000:] for p in second)

    merged = open_store(root / "cap")
    assert isinstance(merged, ShardedStore) and len(merged.shards) == 2
    data = text_batches(texts[:24], tokenizer, context_length=32, batch_size=4)
    single = capture_to_store(tiny_gpt2, POINTS, data, tmp_path / "one", progress=False)
    order = [np.lexsort((s.position(), s.doc_index())) for s in (merged, single)]
    np.testing.assert_array_equal(
        merged.read(POINTS[0])[order[0]], single.read(POINTS[0])[order[1]]
    )
    reference = train(TrainConfig(**CONFIG), merged, tmp_path / "ref").state_dict()
    for run in ("full-run", "killed-run"):
        two = load_file(root / run / "sae" / "model.safetensors")
        for name, value in reference.items():
            torch.testing.assert_close(two[name], value, rtol=1e-5, atol=1e-5, msg=f"{run} {name}")


def _worker(root: Path, phase: str) -> None:
    """One node's process: capture (a no-op when done), then train."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from sae_hooks.distributed import processes

    torch.set_num_threads(1)
    rank = processes().rank
    if phase == "first":
        model = GPT2LMHeadModel.from_pretrained(root / "model").eval()
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
        texts = json.loads((root / "texts.json").read_text())
        data = text_batches(texts, tokenizer, context_length=32, batch_size=4)
        capture_to_store_distributed(
            model, POINTS, data, root / "cap", chunk_rows=64, progress=False
        )
    store = open_store(root / "cap")
    if phase == "first":
        train(TrainConfig(**CONFIG), store, root / "full-run")
        trainer = Trainer(TrainConfig(**CONFIG), store, root / "killed-run")
        after_step = trainer.after_step

        def maybe_die(bar=None):
            after_step(bar)
            if rank == 1 and trainer.step == KILL_AT:
                (root / "killed").write_text(str(time.time()))
                os.kill(os.getpid(), signal.SIGKILL)

        trainer.after_step = maybe_die
        trainer.fit()
    else:
        Trainer(TrainConfig(**CONFIG), store, root / "killed-run").fit()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2])
