"""Locks admit exactly one holder (issue 30 item 12): simultaneous starts, stale, torn
and reused-pid locks, for a training's run directory and a store's writer. Each test
here failed before its fix (the old locks checked, then wrote)."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest
from helpers import POINTS, D, make_batch

from sae_hooks.store import StoreLockedError, StoreWriter, open_store
from sae_hooks.store.lock import holder_record, process_start
from sae_hooks.train import runlock
from sae_hooks.train.runlock import LOCK_FILE, RunLockedError

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
@pytest.mark.parametrize("lock", ["run", "store"])
def test_simultaneous_starts_admit_exactly_one(tmp_path, monkeypatch, lock):
    """bench/bench_locks.py's harness, 20 trials of 4 processes per state (the full 100
    trials are in docs/reliability.md)."""
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("bench_locks", None)
    from bench_locks import STATES, race

    found = race(lock, STATES, trials=20, procs=4, root=tmp_path)
    assert {state: set(wins) for state, wins in found.items()} == {s: {1} for s in STATES}


def reused_pid_record() -> dict:
    """A holder record naming a live process (this one's parent) that started at another
    time than the one that locked: the pid was reused."""
    pid = os.getppid()
    assert process_start(pid) is not None and process_start(pid) != 1
    return {"pid": pid, "host": socket.gethostname(), "since": time.time(), "started": 1}


def test_a_run_lock_naming_a_reused_pid_is_stale(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"writer": reused_pid_record()}))
    with pytest.warns(UserWarning, match=f"stale writer lock .*pid {os.getppid()}"):
        runlock.acquire(tmp_path)
    assert json.loads((tmp_path / LOCK_FILE).read_text())["writer"]["pid"] == os.getpid()
    runlock.release(tmp_path)
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_store_lock_naming_a_reused_pid_is_stale(tmp_path):
    with StoreWriter(tmp_path / "s", points=POINTS, d_model=D) as w:
        w.append(make_batch(0))
    meta = tmp_path / "s" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["writer"] = reused_pid_record()
    meta.write_text(json.dumps(doc))
    with (
        pytest.warns(UserWarning, match="stale writer lock"),
        StoreWriter(tmp_path / "s", mode="resume") as w,
    ):
        w.append(make_batch(1))
    assert open_store(tmp_path / "s").committed_inputs == 2


def test_a_record_without_a_start_time_naming_a_live_pid_is_respected(tmp_path):
    """Locks written by an older sae-hooks name a pid only: a live one still holds."""
    holder = {k: v for k, v in holder_record().items() if k != "started"}
    holder["pid"] = os.getppid()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"writer": holder}))
    with pytest.raises(RunLockedError, match=f"pid {os.getppid()}"):
        runlock.acquire(tmp_path)
    assert (tmp_path / LOCK_FILE).exists()  # another holder's file is left alone


def test_a_store_held_by_another_process_is_refused_and_its_lock_file_goes_on_close(tmp_path):
    import subprocess

    code = (
        "import sys, time\n"
        "from sae_hooks.store import StoreWriter\n"
        "w = StoreWriter(sys.argv[1], points=['p'], d_model=4)\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "s")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        with pytest.raises(StoreLockedError, match=rf"{tmp_path / 's'} .*pid {child.pid}"):
            StoreWriter(tmp_path / "s", mode="resume")
    finally:
        child.kill()
        child.wait()
    with pytest.warns(UserWarning, match=f"stale writer lock .*pid {child.pid}"):
        StoreWriter(tmp_path / "s", mode="resume").close()  # its holder died: taken over
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no lock file left
