"""Lock race harness: N processes start at one instant (a barrier); exactly one may hold.

For each lock (a training's run directory, a store's writer) and each state the lock
is found in (none; a stale one naming a dead pid; a torn, half-written one; one naming
a live pid that a new process reuses), every trial releases `--procs` waiting
processes at once into the lock's acquire, holds every winner until all have tried,
and counts the winners. Prints the count of trials that admitted exactly one.

    .venv/bin/python bench/bench_locks.py --trials 100 --procs 4

tests/test_reliability_store_locks.py runs the same harness with 20 trials.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import time
import warnings
from pathlib import Path

LOCKS = ("run", "store")
STATES = ("fresh", "stale", "torn", "reused")


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = mp.get_context("spawn").Process(target=time.sleep, args=(0,))
    proc.start()
    proc.join()
    return proc.pid


def record(state: str, dead: int) -> dict | str:
    """The holder record left in the lock for `state` (a str: the torn bytes)."""
    host = socket.gethostname()
    if state == "stale":
        return {"pid": dead, "host": host, "since": time.time(), "started": 12345}
    if state == "reused":  # a live pid (this process), but not the process that locked
        return {"pid": os.getpid(), "host": host, "since": time.time(), "started": 1}
    return '{"writer": {"pid": 12'


def prepare(lock: str, state: str, target: Path, dead: int) -> None:
    """Leave `target` (a run directory or a store) in `state` before a trial."""
    from sae_hooks.store import StoreWriter

    if lock == "store":
        import torch

        with StoreWriter(target, points=["p"], d_model=4) as w:
            batch = type("B", (), {})()
            batch.acts = {"p": torch.ones(3, 4)}
            batch.token_ids = batch.doc_index = batch.position = torch.zeros(3, dtype=torch.long)
            w.append(batch)
    else:
        target.mkdir(parents=True)
    if state == "fresh":
        return
    held = record(state, dead)
    if lock == "store" and isinstance(held, dict):
        meta = target / "zarr.json"
        doc = json.loads(meta.read_text())
        doc["attributes"]["writer"] = held
        meta.write_text(json.dumps(doc))
        return
    path = target.parent / f".{target.name}.lock" if lock == "store" else target / ".lock"
    path.write_text(held if isinstance(held, str) else json.dumps({"writer": held}))


def contender(lock: str, ready, done, results, targets) -> None:
    """One process of the race: for each trial, wait at `ready`, try the lock, report,
    hold it until every contender has tried (`done`), release it."""
    from sae_hooks.store import StoreWriter
    from sae_hooks.store.lock import LockedError
    from sae_hooks.train import runlock

    warnings.simplefilter("ignore")  # stale locks are taken over with a warning
    while True:
        target = targets.get()
        if target is None:
            return
        ready.wait()  # every contender is past its setup: they start together
        held = None
        try:
            if lock == "store":
                held = StoreWriter(Path(target), mode="resume")
            else:
                runlock.acquire(Path(target))
                held = target
        except LockedError:
            pass
        results.put(held is not None)
        done.wait()
        if isinstance(held, StoreWriter):
            held.close()
        elif held is not None:
            runlock.release(Path(held))


def race(
    lock: str, states: tuple[str, ...], trials: int, procs: int, root: Path
) -> dict[str, list[int]]:
    """Winners in each of `trials` simultaneous starts of `procs` processes, per state
    the lock is found in (one pool of contenders serves every trial)."""
    ctx = mp.get_context("spawn")
    ready, done = ctx.Barrier(procs + 1), ctx.Barrier(procs + 1)
    results, targets = ctx.Queue(), ctx.Queue()
    workers = [
        ctx.Process(target=contender, args=(lock, ready, done, results, targets))
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    dead, winners = dead_pid(), {state: [] for state in states}
    try:
        for state in states:
            for trial in range(trials):
                target = root / f"{lock}-{state}-{trial}"
                prepare(lock, state, target, dead)
                for _ in range(procs):
                    targets.put(str(target))
                ready.wait(timeout=300)
                got = [results.get(timeout=300) for _ in range(procs)]
                done.wait(timeout=300)
                winners[state].append(sum(got))
    finally:
        for _ in range(procs):
            targets.put(None)
        for w in workers:
            w.join(timeout=60)
            if w.is_alive():
                w.kill()
    return winners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--procs", type=int, default=4)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_locks import race as imported_race  # spawned workers import it by name

    print(f"{args.trials} trials of {args.procs} simultaneous starts each\n")
    print("| lock | state found | trials admitting exactly one | winners seen |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-locks-") as tmp:
        for lock in LOCKS:
            found = imported_race(lock, STATES, args.trials, args.procs, Path(tmp))
            for state, wins in found.items():
                exact = sum(w == 1 for w in wins)
                print(f"| {lock} | {state} | {exact}/{args.trials} | {sorted(set(wins))} |")


if __name__ == "__main__":
    main()
