"""Test helpers shared by several test modules (import them: `from helpers import ...`).

One section per concern: stand-in SAEs; activation batches for the store tests, a
data source that dies mid-capture, and the kill protocol of the fault tests (a child
process announces the point it reached and waits there; the parent kills it on that
announcement, never on a timer).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from sae_hooks.sae import SAEOutput

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"

POINTS = ["resid_post.1", "blocks.2.hook_resid_post"]
D = {"resid_post.1": 12, "blocks.2.hook_resid_post": 8}


def batch_rows(i: int) -> int:
    return 5 + (i * 7) % 13  # odd sizes, never chunk-aligned


def make_batch(i: int, points=POINTS, d=D, n: int | None = None) -> SimpleNamespace:
    """Input batch i as StoreWriter takes it: deterministic rows, token ids unique per batch."""
    n = batch_rows(i) if n is None else n
    g = torch.Generator().manual_seed(i)
    acts = {p: torch.randn(n, d[p], generator=g) * (1 + k) for k, p in enumerate(points)}
    return SimpleNamespace(
        acts=acts,
        token_ids=torch.arange(n, dtype=torch.int64) + 1000 * i,
        doc_index=torch.full((n,), i, dtype=torch.int64),
        position=torch.arange(n, dtype=torch.int64),
    )


class Interrupted:
    """A resumable data source whose run dies (Ctrl-C) after `n` batches."""

    def __init__(self, data: Any, n: int) -> None:
        self.data, self.n = data, n

    def iter_from(self, start: int) -> Iterator[Any]:
        for i, batch in enumerate(self.data.iter_from(start)):
            if i == self.n:
                raise KeyboardInterrupt
            yield batch


# -- killing a child process at a point it announces -----------------------------------

KILL_MARK = "KILL-ME"

#: Child-side code: `announce_and_wait(what)` prints the mark and blocks until killed.
CHILD_PRELUDE = f"""
import sys, time
sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(TESTS)!r})
def announce_and_wait(what):
    print({KILL_MARK!r}, what, flush=True)
    while True:
        time.sleep(60)
"""


def spawn(script: str) -> subprocess.Popen:
    """Run `script` (CHILD_PRELUDE is prepended) in a fresh interpreter, stdout piped."""
    return subprocess.Popen(
        [sys.executable, "-c", CHILD_PRELUDE + script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def kill_on_announcement(proc: subprocess.Popen, context: str = "") -> str:
    """SIGKILL `proc` once it announces its kill point; what it announced.

    Fails (naming `context`, e.g. the fault seed) if the child ends without announcing.
    """
    lines: Iterable[str] = proc.stdout if proc.stdout is not None else []
    for line in lines:
        if line.startswith(KILL_MARK):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert proc.returncode == -signal.SIGKILL, f"the child outlived its kill {context}"
            return line[len(KILL_MARK) :].strip()
    proc.wait()
    raise AssertionError(
        f"the child ended (exit {proc.returncode}) without reaching its kill point {context}"
    )


# ------------------------------------------------------------------ stand-in SAEs


class IdentitySAE(nn.Module):
    """A perfect "SAE" with the sae_hooks.sae contract: the latents are the coordinates.

    It reconstructs exactly (splice is a no-op, FVU 0), and on non-negative inputs its
    codes are the inputs themselves, so answers computed from its latents are known in
    advance. Its one parameter, a unit scale, gives code that looks up an SAE's device
    or dtype something to find.
    """

    def __init__(self, d: int = 64) -> None:
        super().__init__()
        self.input_size = self.nb_concepts = d
        self.scale = nn.Parameter(torch.ones(()))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def forward(self, x: torch.Tensor) -> SAEOutput:
        return SAEOutput(x, x, x)


# -- the gradients a Trainer hands Adam --------------------------------------------------


def adam_gradients(
    trainers: list, batches: torch.Tensor, *, buffers: bool = True
) -> list[list[dict[str, torch.Tensor]]]:
    """Per trainer, the gradients it hands Adam at each batch, every step taken from the
    first trainer's weights (and buffers, unless buffers=False). Compared before Adam:
    its first step is lr * sign(g), which turns float noise in ~0 gradients into steps."""
    seen: list[list[dict[str, torch.Tensor]]] = [[] for _ in trainers]
    for trainer, log in zip(trainers, seen):
        step = trainer.optimizer.step

        def recording(*args, trainer=trainer, log=log, step=step, **kwargs):
            log.append({n: p.grad.clone() for n, p in trainer.sae.named_parameters()})
            return step(*args, **kwargs)

        trainer.optimizer.step = recording
    for x in batches:
        for other in trainers[1:]:
            with torch.no_grad():
                for p, q in zip(other.sae.parameters(), trainers[0].sae.parameters()):
                    p.copy_(q)
                if buffers:
                    for a, b in zip(other.sae.buffers(), trainers[0].sae.buffers()):
                        a.copy_(b)
        for trainer in trainers:
            trainer.train_step(x)
    return seen
