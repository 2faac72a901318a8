"""Property-based fault harness: kill a capture at random points, many times, resume,
and the final store equals an uninterrupted capture exactly.

One child process (started once: importing torch is the slow part) builds the tiny
GPT-2 and forks a fresh capture per trial. Each capture gets one kill point drawn
from a seed: the k-th file write (chunk data, array metadata, a commit of the group's
zarr.json, the lock), the k-th atomic rename of a written file into place (the
commit swap: the temporary file is complete, the rename not done), or the k-th
folder creation (a store folder without its zarr.json). The capture announces the
point and waits; the parent kills it on that announcement (SIGKILL, no timers), checks
what is on disk, and starts the next trial, which resumes the same store. Some
trials also stop at a random max_rows. The seed is fixed by default
(SAE_HOOKS_FAULT_SEED picks another) and every failure names it.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import CHILD_PRELUDE, KILL_MARK, REPO

from sae_hooks.store import open_store

DEFAULT_FAULT_SEED = 20240611
SEED = int(os.environ.get("SAE_HOOKS_FAULT_SEED", DEFAULT_FAULT_SEED))
TRIALS = 10
POINTS = ["resid_post.1", "resid_mid.2"]
STEPS = ("write", "swap", "mkdir")

SERVER = """
import json, os, pathlib, sys, warnings
warnings.filterwarnings("ignore", message="breaking the stale writer lock")  # expected here
import torch
torch.set_num_threads(1)
import zarr.storage._local as zarr_local
from test_reliability_faults import N_BATCHES, TokenBatches, tiny_model
from sae_hooks.store import StoreWriter, capture_to_store
StoreWriter.__init__.__kwdefaults__["commit_interval"] = 0.0  # a commit per input batch
model = tiny_model()

def kill_point(step, target):
    calls = []
    def reached(what):
        calls.append(1)
        if len(calls) == target:
            announce_and_wait(f"{os.getpid()} {step} call {target}: {what}")
    if step == "write":
        real_put = zarr_local._put
        def put(path, value, exclusive=False):
            reached(path)
            return real_put(path, value, exclusive=exclusive)
        zarr_local._put = put
    elif step == "swap":
        real_replace = pathlib.Path.replace
        def replace(self, target_path):
            reached(target_path)
            return real_replace(self, target_path)
        pathlib.Path.replace = replace
    else:
        real_mkdir = pathlib.Path.mkdir
        def mkdir(self, *args, **kwargs):
            real_mkdir(self, *args, **kwargs)
            reached(self)
        pathlib.Path.mkdir = mkdir

print("READY", N_BATCHES, flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            if cmd["step"]:
                kill_point(cmd["step"], cmd["target"])
            capture_to_store(model, POINTS, TokenBatches(), cmd["path"], progress=False,
                             chunk_rows=32, max_rows=cmd["max_rows"])
            print("DONE", flush=True)
        except BaseException as err:
            print("ERROR", repr(err).replace(chr(10), " "), flush=True)
        sys.stdout.flush()
        os._exit(0)
    os.waitpid(pid, 0)
    print("EXITED", flush=True)
"""


class Server:
    """The forking capture server and a line reader with a deadline (no hang on failure)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD_PRELUDE + SERVER.replace("POINTS", repr(POINTS))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        self.buf = b""
        ready = self.line(120)
        assert ready.startswith("READY"), ready
        self.n_batches = int(ready.split()[1])

    def line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(
                    f"the capture server said nothing for {timeout}s (seed {SEED})"
                )
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"the capture server ended (seed {SEED})")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def run(self, path, step=None, target=0, max_rows=None) -> str:
        """One forked capture; 'killed ...', 'DONE' or 'ERROR ...'."""
        cmd = {"path": str(path), "step": step, "target": target, "max_rows": max_rows}
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()
        outcome = None
        while (line := self.line(120)) != "EXITED":
            if line.startswith(KILL_MARK):
                pid, what = line[len(KILL_MARK) :].split(maxsplit=1)
                os.kill(int(pid), signal.SIGKILL)
                outcome = f"killed at {what}"
            elif line.startswith(("DONE", "ERROR")):
                outcome = line
        return outcome or "ended silently"

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def assert_prefix(path, reference, context: str) -> None:
    """What a kill leaves is a valid store whose rows are the start of the reference's."""
    if not (path / "zarr.json").exists():
        return  # killed before the group existed: nothing, or a folder the resume replaces
    store = open_store(path)
    n = store.n_rows
    assert store.verify() == [], context
    np.testing.assert_array_equal(store.token_ids(), reference.token_ids(0, n), context)
    for p in POINTS:
        np.testing.assert_array_equal(store.read(p), reference.read(p, 0, n), context)


@pytest.mark.slow
def test_random_kills_during_capture_never_lose_nor_double_a_row(tmp_path):
    rng = random.Random(f"{SEED}-store-harness")
    server = Server()
    try:
        assert server.run(tmp_path / "reference") == "DONE"
        reference = open_store(tmp_path / "reference")
        path, history = tmp_path / "killed", []
        kills = 0
        # First the store's creation: right after its folder is made (no zarr.json yet),
        # then with the group's zarr.json written but not yet renamed into place.
        fixed = [("mkdir", 1, None), ("swap", 1, None)]
        for trial in range(TRIALS):
            step = rng.choice(STEPS)
            target = rng.randrange(1, 12) if step == "mkdir" else rng.randrange(1, 90)
            max_rows = rng.randrange(30, reference.n_rows) if rng.random() < 0.25 else None
            if trial < len(fixed):
                step, target, max_rows = fixed[trial]
            outcome = server.run(path, step, target, max_rows)
            history.append(f"trial {trial}: {step} {target} max_rows={max_rows} -> {outcome}")
            context = f"(seed {SEED}; SAE_HOOKS_FAULT_SEED={SEED} replays)\n" + "\n".join(history)
            assert outcome.startswith(("killed", "DONE")), context
            kills += outcome.startswith("killed")
            assert_prefix(path, reference, context)
        final = server.run(path)
        history.append(f"final -> {final}")
        context = f"(seed {SEED})\n" + "\n".join(history)
        assert final == "DONE", context
    finally:
        server.close()
    store = open_store(path)
    assert kills >= TRIALS // 2, context  # the kill points were reached, not skipped
    assert store.committed_inputs == server.n_batches and store.verify() == [], context
    for name in ("token_ids", "doc_index", "position"):
        np.testing.assert_array_equal(getattr(store, name)(), getattr(reference, name)(), context)
    for p in POINTS:
        np.testing.assert_array_equal(store.read(p), reference.read(p), context)
        np.testing.assert_allclose(
            store.stats(p).mean.numpy(), reference.stats(p).mean.numpy(), rtol=1e-6, atol=1e-6
        )
    print(f"seed {SEED}: {kills} kills survived of {TRIALS} trials\n" + "\n".join(history))
