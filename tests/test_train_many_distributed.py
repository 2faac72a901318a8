"""train_many under data parallel: 2 gloo processes equal one, with one all-reduce per step.

Runs this file as a script under `accelerate launch` (2 CPU processes, the torchrun
path, as tests/test_distributed.py does), then trains the same sweep in this process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sae_hooks.train import Sweep, TrainConfig, read_log, train, train_many

STEPS = 8


def sweep(point: str) -> Sweep:
    base = TrainConfig(
        point=point,
        batch_size=64,
        steps=STEPS,
        log_every=4,
        val_every=None,
        checkpoint_every=None,
        init_rows=256,
        progress=False,
    )
    return Sweep(base, {"architecture": ["batchtopk", "topk", "jumprelu"], "nb_concepts": [32, 64]})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_data_parallel_sweep_equals_one_process(tmp_path):
    from safetensors.torch import load_file
    from test_train_many import POINTS, write_store

    store = write_store(tmp_path / "store")
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
        store,
        str(tmp_path / "two"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]

    one = train_many(sweep(POINTS[1]), store, tmp_path / "one")
    for name, sae in one.items():
        two = load_file(tmp_path / "two" / name / "sae" / "model.safetensors")
        alone = load_file(tmp_path / "two" / "alone" / name / "sae" / "model.safetensors")
        for key, value in sae.state_dict().items():
            # under 2 processes, each SAE of the sweep is the SAE train() gives there
            torch.testing.assert_close(two[key], alone[key], rtol=0, atol=1e-6, msg=key)
            if "batchtopk" not in name:  # its budget is per rank: not the 1-process SAE
                torch.testing.assert_close(two[key], value, rtol=1e-5, atol=1e-5, msg=key)
        assert [r["step"] for r in read_log(tmp_path / "two" / name) if "loss" in r] == [4, 8]
    calls = json.loads((tmp_path / "two" / "syncs-0.json").read_text())
    # one all-reduce per step for the 6 SAEs together, none per SAE
    assert calls == {"sync_all": STEPS, "sync_replicas": STEPS, "per_sae": 0}


def _worker(store: str, out: str) -> None:
    """What each of the 2 processes runs: the sweep, counting the per-step all-reduces."""
    import sae_hooks.train.many as many
    import sae_hooks.train.trainer as trainer
    from sae_hooks.distributed import processes

    torch.set_num_threads(1)
    counts = {"sync_all": 0, "sync_replicas": 0, "per_sae": 0}
    sync_all, sync_replicas = many.sync_all_, many.sync_replicas_

    def counted_all(*args):
        counts["sync_all"] += 1
        return sync_all(*args)

    def counted_replicas(*args):
        counts["sync_replicas"] += 1
        return sync_replicas(*args)

    def counted_per_sae(*args):
        counts["per_sae"] += 1
        return sync_replicas(*args)

    many.sync_all_, many.sync_replicas_ = counted_all, counted_replicas
    trainer.sync_replicas_ = counted_per_sae
    sys.path.insert(0, str(Path(__file__).parent))
    from test_train_many import POINTS

    train_many(sweep(POINTS[1]), store, out)
    rank = processes().rank
    (Path(out) / f"syncs-{rank}.json").write_text(json.dumps(counts))
    for cfg, name in zip(sweep(POINTS[1]).configs(), sweep(POINTS[1]).names()):
        train(cfg, store, Path(out) / "alone" / name)


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
