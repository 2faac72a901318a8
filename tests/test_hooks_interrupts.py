"""Hooks under Ctrl-C at any instant, and two threads on one model (issue 30, items 9-10).

The random harness is bench/hooks_interrupts.py (imported here): a real SIGINT at a
random instant of each of ~1,000 capture / splice blocks, most with an empty body so
that the instants inside ``__enter__``/``__exit__`` come up often. The big run and its
figures are in docs/reliability.md. The deterministic tests below raise the SIGINT at
one chosen place each: between two hook registrations, while an SAE's mode is set,
between two hook removals.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import threading
from pathlib import Path

import pytest
import torch
from torch.utils.hooks import RemovableHandle

from sae_hooks.hooks import capture, lifetime, splice
from sae_hooks.sae import TopKSAE

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "hooks_interrupts.py"
SEED = int(os.environ.get("SAE_HOOKS_FAULT_SEED", 20240611))
MODELS = {"tiny_gpt2": 1000, "tiny_hooked_transformer": 600}  # blocks: about 2 s each


def harness():
    spec = importlib.util.spec_from_file_location("hooks_interrupts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return harness()


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def ctrl_c():
    """SIGINT raises KeyboardInterrupt (Python's default) for the test, whatever ran before."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def tokens(n: int = 4) -> torch.Tensor:
    return torch.randint(0, 512, (1, n), generator=torch.Generator().manual_seed(0))


def hooks_on(model: torch.nn.Module) -> list[tuple[int, int]]:
    """Hooks per module: compared before/after, as transformers 5 adds hooks of its own
    (on the first output_hidden_states forward)."""
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


@pytest.mark.parametrize("name", MODELS)
def test_random_sigint_leaves_no_hook(name, request, bench, one_thread, ctrl_c):
    model, n = request.getfixturevalue(name), MODELS[name]
    before = hooks_on(model)
    tally = bench.interrupt_blocks(model, 64, tokens(), n, SEED, forward_share=0.1)
    summary = f"seed {SEED}: {tally}"
    assert sum(tally.blocks.values()) == n
    assert sum(tally.interrupted.values()) > n // 2, summary  # the interrupts did land inside
    assert all(tally.interrupted[b] > 0 for b in tally.blocks), summary
    assert tally.total_leaked == 0, summary
    assert tally.active == 0, summary
    assert tally.state == 0, summary  # grad mode, SAE modes, the SIGINT handler
    assert tally.lost == 0, summary  # every Ctrl-C raised, none swallowed
    assert hooks_on(model) == before


@pytest.mark.parametrize("name", MODELS)
def test_two_threads_see_only_their_own_hooks(name, request, bench):
    """Thread A splices while thread B runs plain forwards, captures and capture_batch
    (stop early): 100 calls each, every result equal to the same call made alone, and
    no stop-early exception in A."""
    got = bench.thread_interference(request.getfixturevalue(name), 64, tokens(8), 100)
    assert got.calls == 200
    assert (got.spliced_wrong, got.plain_wrong, got.captures_wrong) == (0, 0, 0), got
    assert not got.errors, got


def test_sigint_between_two_registrations_removes_the_first(tiny_gpt2, monkeypatch, ctrl_c):
    """The Ctrl-C waits until both hooks are in, then both go out and it is raised."""
    before = hooks_on(tiny_gpt2)
    added = []

    def add_then_interrupt(loc, fn):
        added.append(loc.point)
        handle = real_add(loc, fn)
        if len(added) == 1:
            signal.raise_signal(signal.SIGINT)  # handled here, between hook 1 and hook 2
        return handle

    real_add = lifetime.add_hook
    monkeypatch.setattr(lifetime, "add_hook", add_then_interrupt)
    ran = []
    with pytest.raises(KeyboardInterrupt), capture(tiny_gpt2, ["resid_pre.1", "resid_post.2"]):
        ran.append(True)
    assert added == ["resid_pre.1", "resid_post.2"] and not ran
    assert hooks_on(tiny_gpt2) == before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class ModeSwitchInterrupted(TopKSAE):
    """An SAE whose train()/eval() is hit by a Ctrl-C (splice sets its mode on entry)."""

    def train(self, mode: bool = True):
        out = super().train(mode)
        signal.raise_signal(signal.SIGINT)
        return out


def test_sigint_while_the_sae_mode_is_set(tiny_gpt2, ctrl_c):
    before = hooks_on(tiny_gpt2)
    sae = ModeSwitchInterrupted(64, 96, top_k=8)
    assert sae.training
    with pytest.raises(KeyboardInterrupt), splice(tiny_gpt2, "resid_post.1", sae):
        pytest.fail("the block must not run")
    assert hooks_on(tiny_gpt2) == before
    assert sae.training  # its mode is back


def test_sigint_between_two_removals_removes_the_second(tiny_gpt2, monkeypatch, ctrl_c):
    before = hooks_on(tiny_gpt2)
    removed = []
    real_remove = RemovableHandle.remove

    def remove_then_interrupt(handle):
        real_remove(handle)
        removed.append(handle.id)
        if len(removed) == 1:
            signal.raise_signal(signal.SIGINT)

    sae = TopKSAE(64, 96, top_k=8)
    block = splice(tiny_gpt2, {"resid_post.0": sae, "resid_post.2": sae})
    with pytest.raises(KeyboardInterrupt), block:
        monkeypatch.setattr(RemovableHandle, "remove", remove_then_interrupt)
        tiny_gpt2(tokens())
    monkeypatch.undo()
    assert len(removed) == 2 and hooks_on(tiny_gpt2) == before


def test_ctrl_c_in_the_block_is_raised_at_once(tiny_gpt2, ctrl_c):
    """Only the block's own enter and exit are deferred: in the forward, Ctrl-C stops it."""
    before = hooks_on(tiny_gpt2)
    after = []
    with pytest.raises(KeyboardInterrupt), capture(tiny_gpt2, "resid_post.3"):
        signal.raise_signal(signal.SIGINT)
        after.append(True)
    assert not after and hooks_on(tiny_gpt2) == before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_block_is_entered_once(tiny_gpt2):
    before = hooks_on(tiny_gpt2)
    block = capture(tiny_gpt2, "resid_post.0")
    with block:
        tiny_gpt2(tokens())
    with pytest.raises(RuntimeError, match="entered once"), block:
        pass
    assert hooks_on(tiny_gpt2) == before


def test_capture_names_forwards_it_saw_from_other_threads(tiny_gpt2):
    """A capture entered in one thread ignores another thread's forward, and says so."""
    before = hooks_on(tiny_gpt2)
    block = capture(tiny_gpt2, "resid_post.0")
    with pytest.raises(RuntimeError, match=r"never fired.*other threads"), block:
        worker = threading.Thread(target=tiny_gpt2, args=(tokens(),))
        worker.start()
        worker.join()
    assert hooks_on(tiny_gpt2) == before


def test_blocks_work_where_sigint_is_not_python_s(tiny_gpt2):
    """SIG_IGN (e.g. under nohup) or a block in a worker thread: no handler is touched."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with capture(tiny_gpt2, "resid_post.0") as acts:
            tiny_gpt2(tokens())
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
    assert acts["resid_post.0"].shape == (1, 4, 64)


def test_splice_warns_when_only_other_threads_ran_the_model(tiny_gpt2):
    """The forward of another thread is left alone, and the block that saw only such
    forwards says so rather than look as if it had spliced them."""
    before = hooks_on(tiny_gpt2)
    got = {}

    def forward():
        with torch.no_grad():
            got["logits"] = tiny_gpt2(tokens()).logits

    block = splice(tiny_gpt2, "resid_post.1", TopKSAE(64, 96, top_k=8))
    with pytest.warns(RuntimeWarning, match="none from the thread that entered"), block:
        worker = threading.Thread(target=forward)
        worker.start()
        worker.join()
    with torch.no_grad():
        assert torch.equal(got["logits"], tiny_gpt2(tokens()).logits)
    assert hooks_on(tiny_gpt2) == before
