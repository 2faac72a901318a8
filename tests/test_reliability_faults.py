"""Faults survived: SIGKILL mid-capture and mid-training, full or unwritable disks,
non-finite activations, exceptions inside hooks. Nothing lost, nothing doubled.

Kill points are drawn from a seed, fixed by default (SAE_HOOKS_FAULT_SEED picks
another); every failure report shows it. The child process announces the point it
reached and waits there; the parent kills it on that announcement (tests/helpers.py).
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr.storage._local as zarr_local
from helpers import POINTS, D, kill_on_announcement, make_batch, spawn

from sae_hooks.hooks import ZeroLatents, capture, capture_batch, splice
from sae_hooks.sae import TopKSAE
from sae_hooks.store import StoreWriter, capture_to_store, open_store
from sae_hooks.store import lock as store_lock
from sae_hooks.train import TensorSource, TrainConfig, Trainer, train

DEFAULT_FAULT_SEED = 20240611
SEED = int(os.environ.get("SAE_HOOKS_FAULT_SEED", DEFAULT_FAULT_SEED))
THREADS = 1  # parent and children alike, so float sums agree bit for bit


@pytest.fixture(autouse=True)
def fault_seed_in_report(request):
    """Every failure report of this module shows the seed that replays it."""
    request.node.add_report_section(
        "call", "fault seed", f"SAE_HOOKS_FAULT_SEED={SEED} replays this run"
    )


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: on a loaded machine two spin-waiting threads make tiny steps 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def kill_rng(salt: str) -> random.Random:
    return random.Random(f"{SEED}-{salt}")


def hook_count(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


# ------------------------------------------------------------------ capture, SIGKILL

N_BATCHES = 30


def tiny_model() -> torch.nn.Module:
    """The tiny GPT-2 of conftest, rebuilt identically in a child process."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=512, n_positions=64, n_embd=64, n_layer=4, n_head=4)
    return GPT2LMHeadModel(cfg).eval()


class TokenBatches:
    """Deterministic right-padded token batches, as (doc_offset, inputs) pairs."""

    def iter_from(self, start: int):
        for i in range(start, N_BATCHES):
            g = torch.Generator().manual_seed(i)
            ids = torch.randint(0, 512, (3, 16), generator=g)
            mask = torch.ones_like(ids)
            mask[1, 11:] = 0
            yield 3 * i, {"input_ids": ids, "attention_mask": mask}

    def __iter__(self):
        return self.iter_from(0)


CAPTURE_SCRIPT = """
import torch
torch.set_num_threads({threads})
from test_reliability_faults import TokenBatches, tiny_model
from sae_hooks.store import StoreWriter, capture_to_store
from sae_hooks.store.commit import CommitThread
StoreWriter.__init__.__kwdefaults__["commit_interval"] = 0.0  # many commits to land among
step, calls = getattr(CommitThread, {step!r}), []
def stop_at_target(self, *args):  # the writer thread stops mid-protocol, at call {target}
    calls.append(1)
    if len(calls) == {target}:
        announce_and_wait(len(calls))
    return step(self, *args)
setattr(CommitThread, {step!r}, stop_at_target)
capture_to_store(tiny_model(), ["resid_post.1", "resid_mid.2"], TokenBatches(),
                 {path!r}, progress=False, chunk_rows=32)
"""


@pytest.mark.slow
def test_sigkill_during_capture_then_resume_keeps_every_row_once(tmp_path):
    """Killed just before a data write or just before a commit's attribute write."""
    path = str(tmp_path / "killed")
    points = ["resid_post.1", "resid_mid.2"]
    rng = kill_rng("capture")
    step = rng.choice(["_write", "_commit"])
    target = rng.randrange(1, N_BATCHES - 3)
    child = CAPTURE_SCRIPT.format(threads=THREADS, path=path, step=step, target=target)
    kill_on_announcement(spawn(child), f"(seed {SEED}: {step} call {target})")
    model = tiny_model()
    reference = capture_to_store(
        model, points, TokenBatches(), tmp_path / "whole", progress=False, chunk_rows=32
    )
    if Path(path, "zarr.json").exists():
        killed = open_store(path)
        assert killed.n_rows < reference.n_rows, f"seed {SEED}"
        assert killed.verify() == [], f"seed {SEED}"
    with pytest.warns(UserWarning, match="stale writer lock") if Path(path).exists() else _none():
        resumed = capture_to_store(model, points, TokenBatches(), path, progress=False)
    np.testing.assert_array_equal(resumed.token_ids(), reference.token_ids(), f"seed {SEED}")
    np.testing.assert_array_equal(resumed.doc_index(), reference.doc_index())
    np.testing.assert_array_equal(resumed.position(), reference.position())
    for p in points:
        np.testing.assert_allclose(resumed.read(p), reference.read(p), rtol=1e-5, atol=1e-5)
    assert resumed.committed_inputs == N_BATCHES and resumed.verify() == []


class _none:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------ training, SIGKILL

TRAIN_CONFIG = {
    "architecture": "batchtopk",
    "nb_concepts": 64,
    "k_per_token": 2,
    "batch_size": 64,
    "steps": 100,  # a kill lands <= 30 steps after a checkpoint, twice: never past the end
    "lr": 5e-3,
    "dead_tokens": 256,  # AuxK switches on mid-run: its state must survive the kill too
    "log_every": 5,
    "val_every": 25,
    "init_rows": 512,
    "checkpoint_every": 10,
    "progress": False,
}


def train_rows() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    atoms = torch.nn.functional.normalize(torch.randn(48, 16, generator=g), dim=-1)
    codes = torch.rand(2048, 48, generator=g) * (torch.rand(2048, 48, generator=g) < 0.05)
    return 3 * codes @ atoms + 0.5


TRAIN_SCRIPT = """
import torch
torch.set_num_threads({threads})
from test_reliability_faults import TRAIN_CONFIG, train_rows
from sae_hooks.train import TensorSource, TrainConfig, Trainer
trainer = Trainer(TrainConfig(**TRAIN_CONFIG), TensorSource(train_rows()), {path!r})
step, calls = trainer.train_step, []
def stop_at_target(x):  # step {target} of this process never runs: the kill lands before it
    calls.append(1)
    if len(calls) == {target}:
        announce_and_wait(len(calls))
    step(x)
trainer.train_step = stop_at_target
trainer.fit()
"""


@pytest.mark.slow
def test_sigkill_during_training_then_resume_equals_uninterrupted_run(tmp_path):
    run_dir = tmp_path / "killed"
    rng = kill_rng("train")
    # 100 steps, a checkpoint every 10: killed after <= 40 steps, resumed from <= 40 and
    # killed again <= 30 steps later, the run is never finished before its second kill.
    for target in (rng.randrange(11, 41), rng.randrange(1, 31)):
        child = TRAIN_SCRIPT.format(threads=THREADS, path=str(run_dir), target=target)
        kill_on_announcement(spawn(child), f"(seed {SEED}: step {target})")
        assert not (run_dir / "sae").exists(), f"the run finished before the kill (seed {SEED})"
    config = TrainConfig(**TRAIN_CONFIG)
    resumed = train(config, TensorSource(train_rows()), run_dir)
    whole = train(config, TensorSource(train_rows()), tmp_path / "whole")
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=f"{name} (seed {SEED})")


def test_interrupted_training_never_leaves_a_half_written_checkpoint(tmp_path, monkeypatch):
    """A crash inside the checkpoint write (here: the disk fills) keeps the previous one."""
    from sae_hooks.train import checkpoint as ckpt

    config = TrainConfig(**TRAIN_CONFIG)
    trainer = Trainer(config, TensorSource(train_rows()), tmp_path)
    trainer.fit(until_step=20)
    real = ckpt._save_tensors

    def full(path, tensors):
        if path.name == "optimizer.safetensors":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, tensors)

    monkeypatch.setattr(ckpt, "_save_tensors", full)
    with pytest.raises(OSError, match="No space left"):
        trainer.fit(until_step=30)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".checkpoint")] == []
    resumed = train(config, TensorSource(train_rows()), tmp_path)  # resumes from step 20
    whole = train(config, TensorSource(train_rows()), tmp_path / "whole")
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ full or unwritable disk


def expected_tokens(n_inputs: int) -> np.ndarray:
    return torch.cat([make_batch(i).token_ids for i in range(n_inputs)]).numpy()


def fail_writes_after(monkeypatch, budget: int, error: int) -> None:
    """Every file write past `budget` bytes fails like a full (or read-only) disk."""
    real, written = zarr_local._put, [0]

    def put(path, value, exclusive=False):
        written[0] += len(value)
        if written[0] > budget:
            raise OSError(error, os.strerror(error), str(path))
        return real(path, value, exclusive=exclusive)

    monkeypatch.setattr(zarr_local, "_put", put)


@pytest.mark.parametrize(
    ("budget", "error"),
    [(3_000, errno.ENOSPC), (12_000, errno.ENOSPC), (25_000, errno.ENOSPC), (9_000, errno.EROFS)],
)
def test_full_disk_keeps_the_last_committed_state(tmp_path, monkeypatch, budget, error):
    path = tmp_path / "s"
    w = StoreWriter(path, points=POINTS, d_model=D, chunk_rows=16, commit_interval=0)
    w.append(make_batch(0))
    w.flush()
    fail_writes_after(monkeypatch, budget, error)
    with pytest.raises(OSError) as caught:
        for i in range(1, 60):
            w.append(make_batch(i))
        w.flush()
    assert caught.value.errno == error
    message = str(caught.value)
    assert str(path) in message and "last committed state" in message and "resume" in message
    with pytest.warns(UserWarning, match="lock"), pytest.raises(OSError):
        w.close()  # the lock cannot be released on a full disk either
    monkeypatch.undo()

    store = open_store(path)
    assert 1 <= store.committed_inputs < 60
    np.testing.assert_array_equal(store.token_ids(), expected_tokens(store.committed_inputs))
    assert store.verify() == []
    monkeypatch.setattr(store_lock, "pid_alive", lambda pid: False)  # as after a restart
    with pytest.warns(UserWarning, match="stale writer lock"):
        resumed = StoreWriter(path, mode="resume")
    with resumed:
        for i in range(resumed.committed_inputs, 60):
            resumed.append(make_batch(i))
    store.refresh()
    np.testing.assert_array_equal(store.token_ids(), expected_tokens(60))
    assert store.verify() == []


def test_a_commit_is_one_atomic_metadata_write(tmp_path, monkeypatch):
    """committed_rows and committed_inputs must change together: a kill between two
    metadata writes would make a resume skip the wrong number of input batches."""
    w = StoreWriter(tmp_path / "s", points=POINTS, d_model=D, chunk_rows=16, commit_interval=0)
    w.append(make_batch(0))
    w.flush()
    real, group_writes = zarr_local._put, []

    def put(path, value, exclusive=False):
        if path == tmp_path / "s" / "zarr.json":
            group_writes.append(path)
        return real(path, value, exclusive=exclusive)

    monkeypatch.setattr(zarr_local, "_put", put)
    w.append(make_batch(1))
    w.flush()
    assert len(group_writes) == 1
    w.close()


def test_unwritable_location_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(NotADirectoryError, match="cannot create an activation store at"):
        StoreWriter(tmp_path / "a_file" / "s", points=POINTS, d_model=D)
    fail_writes_after(monkeypatch, 0, errno.EACCES)  # a read-only directory (tests run as root)
    with pytest.raises(PermissionError, match=r"cannot create an activation store at .*denied"):
        StoreWriter(tmp_path / "ro", points=POINTS, d_model=D)
    with pytest.raises(PermissionError, match="cannot create an activation store"):
        capture_to_store(tiny_model(), "resid_post.0", TokenBatches(), tmp_path / "ro2")


def test_bad_settings_leave_nothing_on_disk(tmp_path):
    with pytest.raises(ValueError, match="cannot hold dtype"):
        StoreWriter(tmp_path / "s", points=POINTS, dtype="int8")
    assert not (tmp_path / "s").exists()


def test_store_killed_while_being_created_resumes(tmp_path):
    """A kill between creating the group and its arrays leaves a resumable empty store."""
    w = StoreWriter(tmp_path / "s", points=POINTS, d_model=D, chunk_rows=16)
    w._committer.stop()  # the process dies before any row is written
    arr = tmp_path / "s" / "acts" / POINTS[1]
    for f in sorted(arr.rglob("*"), reverse=True):  # ...and before the last array existed
        f.unlink() if f.is_file() else f.rmdir()
    arr.rmdir()
    with pytest.warns(UserWarning, match="stale writer lock"):
        _resume_as_if_restarted(tmp_path / "s")


def _resume_as_if_restarted(path):
    real = store_lock.pid_alive
    store_lock.pid_alive = lambda pid: False
    try:
        w = StoreWriter(path, mode="resume")
    finally:
        store_lock.pid_alive = real
    with w:
        for i in range(5):
            w.append(make_batch(i))
    np.testing.assert_array_equal(open_store(path).token_ids(), expected_tokens(5))


# ------------------------------------------------------------------ NaN / inf activations


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_rows_are_refused_with_a_count(tmp_path, dtype, bad):
    path = tmp_path / "s"
    with StoreWriter(path, points=POINTS, d_model=D, dtype=dtype, chunk_rows=16) as w:
        for i in range(3):
            w.append(make_batch(i))
        poisoned = make_batch(3)
        poisoned.acts[POINTS[1]][[1, 4], 2] = bad
        with pytest.raises(ValueError) as caught:
            w.append(poisoned)
        message = str(caught.value)
        assert f"2 at {POINTS[1]!r} (first: row 1)" in message and "NaN or inf" in message
        assert str(path) in message
        w.append(make_batch(3))  # the writer goes on with good batches
    store = open_store(path)
    np.testing.assert_array_equal(store.token_ids(), expected_tokens(4))
    assert all(np.isfinite(store.read(p)).all() for p in POINTS)
    assert store.verify() == []


def test_float16_overflow_is_named(tmp_path):
    batch = make_batch(0)
    batch.acts[POINTS[0]][0, 0] = 1e6  # finite in float32, inf in float16
    with (
        StoreWriter(tmp_path / "s", points=POINTS, dtype="float16") as w,
        pytest.raises(ValueError, match=r"65504.*1 at 'resid_post.1' \(first: row 0\)"),
    ):
        w.append(batch)
    assert open_store(tmp_path / "s").n_rows == 0


def test_training_refuses_nonfinite_rows(tmp_path):
    rows = train_rows()
    rows[[5, 700], 3] = float("nan")
    rows[9, :2] = float("inf")
    config = TrainConfig(**{**TRAIN_CONFIG, "steps": 10, "checkpoint_every": None})
    with pytest.raises(ValueError, match=r"4 NaN/inf values in 3 of \d+ rows"):
        train(config, TensorSource(rows), tmp_path)


def test_a_diverging_loss_stops_training_with_a_pointer_to_the_checkpoint(tmp_path):
    config = TrainConfig(**{**TRAIN_CONFIG, "steps": 10, "log_every": 5, "lr": 1e30})
    with pytest.raises(FloatingPointError, match="last checkpoint"):
        train(config, TensorSource(train_rows()), tmp_path)


# ------------------------------------------------------------------ hooks never leak


class FaultySAE(TopKSAE):
    def encode(self, x):
        raise RuntimeError("SAE fault")


class FaultyEdit(ZeroLatents):
    def edit(self, values):
        raise RuntimeError("edit fault")


def model_fault(model: torch.nn.Module, block: str):
    """A forward hook on a later block that fails, as a device error would."""

    def boom(*args):
        raise RuntimeError("model fault")

    return model.get_submodule(block).register_forward_hook(boom)


@pytest.mark.parametrize(
    ("name", "later_block"),
    [("tiny_gpt2", "transformer.h.2"), ("tiny_hooked_transformer", "blocks.2")],
)
def test_no_hook_survives_an_exception(name, later_block, request):
    model = request.getfixturevalue(name)
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    forward = (lambda: model(ids)) if "hooked" in name else (lambda: model(ids).logits)
    with torch.no_grad():
        clean = forward()
    before = hook_count(model)
    good = TopKSAE(64, 96, top_k=8)

    def check():
        assert hook_count(model) == before
        with torch.no_grad():
            assert torch.equal(forward(), clean)

    fault = model_fault(model, later_block)
    try:
        with pytest.raises(RuntimeError, match="model fault"), splice(model, "resid_post.1", good):
            forward()
        with pytest.raises(RuntimeError, match="model fault"), capture(model, ["resid_post.3"]):
            forward()  # the fault fires before the point is reached
    finally:
        fault.remove()
    check()
    with (
        pytest.raises(RuntimeError, match="SAE fault"),
        splice(model, "resid_post.1", FaultySAE(64, 96, top_k=8)),
    ):
        forward()
    check()
    with (
        pytest.raises(RuntimeError, match="edit fault"),
        splice(model, "resid_post.1", good, edit=FaultyEdit(0), error_term=True),
    ):
        forward()
    check()
    with (
        pytest.raises(ValueError, match="out of range"),
        splice(model, {"resid_post.0": good, "resid_post.2": good}, edit=ZeroLatents(96)),
    ):
        forward()
    check()
    with pytest.raises(KeyboardInterrupt), capture(model, ["resid_post.0", "resid_post.2"]):
        raise KeyboardInterrupt  # Ctrl-C in the block
    check()
    with pytest.raises(ValueError, match="longer than the model's context"):
        capture_batch(model, "resid_post.0", torch.zeros(1, 65, dtype=torch.long))
    check()
