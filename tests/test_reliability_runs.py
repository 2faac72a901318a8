"""Faults of a training run directory: two trainings, kills mid-checkpoint, reruns, full disks.

One training per run directory (a live second one is refused naming its holder, a
dead one's lock is taken over); a kill inside a checkpoint write leaves a temporary
that the next start removes; a rerun of a finished run, or of one killed at its
very end, logs nothing twice; a full disk during a checkpoint is one OSError and
the previous checkpoint stays usable.
"""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from helpers import kill_on_announcement, spawn
from safetensors import SafetensorError

from sae_hooks.train import TensorSource, TrainConfig, Trainer, read_log, train
from sae_hooks.train import checkpoint as ckpt
from sae_hooks.train.runlock import LOCK_FILE, RunLockedError

CONFIG = {
    "architecture": "topk",
    "nb_concepts": 32,
    "k_per_token": 2,
    "batch_size": 32,
    "steps": 20,
    "lr": 1e-3,
    "log_every": 5,
    "val_every": 10,
    "val_batches": 1,
    "checkpoint_every": 10,
    "init_rows": 64,
    "progress": False,
}


def rows() -> torch.Tensor:
    return torch.randn(1024, 8, generator=torch.Generator().manual_seed(1))


def config() -> TrainConfig:
    return TrainConfig(**CONFIG)


CHILD = """
import torch
from test_reliability_runs import config, rows
from sae_hooks.train import TensorSource, Trainer
from sae_hooks.train import checkpoint as ckpt
trainer = Trainer(config(), TensorSource(rows()), {path!r})
{patch}
trainer.fit()
"""

PAUSE_AT_STEP = """
step = trainer.train_step
def pause(x):
    if trainer.step == 3:
        announce_and_wait(trainer.step)
    step(x)
trainer.train_step = pause
"""

PAUSE_IN_CHECKPOINT = """
save = ckpt._save_tensors
def pause(path, tensors):
    if path.name == "optimizer.safetensors":  # the temporary directory exists by now
        announce_and_wait(path.parent.name)
    save(path, tensors)
ckpt._save_tensors = pause
"""


def val_steps(run_dir) -> list[int]:
    return [r["step"] for r in read_log(run_dir) if "val/fvu" in r]


def assert_log_in_order(run_dir) -> None:
    steps = [r["step"] for r in read_log(run_dir)]
    assert steps == sorted(steps), steps


@pytest.mark.slow
def test_a_second_training_on_a_live_run_directory_is_refused(tmp_path):
    run = tmp_path / "run"
    child = spawn(CHILD.format(path=str(run), patch=PAUSE_AT_STEP))
    try:
        assert child.stdout is not None
        assert child.stdout.readline().split()[-1] == "3"  # the child holds the run, mid-way
        with pytest.raises(RunLockedError, match=rf"run directory {run} .* pid {child.pid}"):
            train(config(), TensorSource(rows()), run)
        assert read_log(run) == []  # the refused training wrote nothing
    finally:
        child.kill()
        child.wait()
    # its holder is dead now: the lock is taken over with a warning, the run completes
    with pytest.warns(UserWarning, match=rf"stale writer lock .*pid {child.pid}"):
        train(config(), TensorSource(rows()), run)
    assert val_steps(run) == [10, 20]
    assert_log_in_order(run)
    assert not (run / LOCK_FILE).exists()  # released at the end


def test_the_lock_is_reentrant_in_one_process_and_released_on_a_failed_start(tmp_path):
    first = Trainer(config(), TensorSource(rows()), tmp_path)
    first.fit(until_step=10)
    assert not (tmp_path / LOCK_FILE).exists()
    second = Trainer(config(), TensorSource(rows()), tmp_path)  # same process: allowed
    assert (tmp_path / LOCK_FILE).exists()
    second.fit()
    changed = TrainConfig(**{**CONFIG, "lr": 5e-3})
    with pytest.raises(ValueError, match="config differs"):
        Trainer(changed, TensorSource(rows()), tmp_path)
    assert not (tmp_path / LOCK_FILE).exists()  # a refused start holds nothing


@pytest.mark.slow
def test_a_kill_inside_a_checkpoint_write_leaves_nothing_on_the_next_start(tmp_path):
    run = tmp_path / "run"
    child = spawn(CHILD.format(path=str(run), patch=PAUSE_IN_CHECKPOINT))
    temporary = kill_on_announcement(child, "checkpoint write")
    assert temporary.startswith(".checkpoint-") and (run / temporary).is_dir()
    with pytest.warns(UserWarning, match="stale writer lock"):
        resumed = train(config(), TensorSource(rows()), run)
    assert [p.name for p in run.iterdir() if p.name.startswith(".checkpoint")] == []
    whole = train(config(), TensorSource(rows()), tmp_path / "whole")
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert without_timing(run) == without_timing(tmp_path / "whole")


def without_timing(run_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_log(run_dir)]


def test_rerunning_a_finished_run_logs_nothing_twice(tmp_path):
    train(config(), TensorSource(rows()), tmp_path)
    before = (tmp_path / "log.jsonl").read_text()
    again = train(config(), TensorSource(rows()), tmp_path)
    assert (tmp_path / "log.jsonl").read_text() == before
    assert val_steps(tmp_path) == [10, 20]
    assert again.input_scale.item() != 1.0  # still the finished SAE, on raw activations


def test_a_run_killed_at_its_very_end_logs_its_final_validation_once(tmp_path, monkeypatch):
    """Killed inside the last checkpoint write, after the final validation line."""
    trainer = Trainer(config(), TensorSource(rows()), tmp_path)
    save, calls = trainer.save_checkpoint, []

    def killed_in_the_last_save():
        calls.append(trainer.step)
        if calls.count(20) == 2:  # the loop's step-20 checkpoint, then the final one
            raise KeyboardInterrupt
        return save()

    trainer.save_checkpoint = killed_in_the_last_save
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    trainer.log.close()
    assert val_steps(tmp_path) == [10, 20]
    train(config(), TensorSource(rows()), tmp_path)
    assert val_steps(tmp_path) == [10, 20]
    assert_log_in_order(tmp_path)


ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
RUST_ENOSPC = SafetensorError(
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
    'left on device" })'
)


@pytest.mark.parametrize("error", [ENOSPC, RUST_ENOSPC], ids=["OSError", "SafetensorError"])
def test_a_full_disk_during_a_checkpoint_is_one_oserror_and_keeps_the_previous(
    tmp_path, monkeypatch, error
):
    trainer = Trainer(config(), TensorSource(rows()), tmp_path)
    trainer.fit(until_step=10)
    previous = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    real = ckpt.save_file

    def full(tensors, path, *args, **kwargs):
        if path.endswith("optimizer.safetensors"):
            raise error
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(OSError, match=r"cannot write a checkpoint in .*No space left") as err:
        trainer.fit()
    assert err.value.errno == errno.ENOSPC
    assert "previous checkpoint" in str(err.value) and "intact" in str(err.value)
    monkeypatch.undo()
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text()) == previous
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".checkpoint")] == []
    assert not (tmp_path / LOCK_FILE).exists()
    train(config(), TensorSource(rows()), tmp_path)  # resumes from step 10 and finishes
    assert val_steps(tmp_path) == [10, 20]
