"""One training per run directory: a flock on `<run>/.lock`, which names its holder.

Two trainings writing one run directory interleave their logs and swap each
other's checkpoints away; the second one is refused at once with RunLockedError
naming the holder. The lock is the store lock's (store/lock.py): an flock the kernel
gives to one process at a time and drops when its holder dies, so simultaneous
starts admit exactly one, and a file left by a dead holder is taken over (with a
warning naming it). A file written by an older sae-hooks (no flock) whose holder
still runs is respected. The lock is re-entrant within a process, so a Trainer built
again on the same run directory in the same process (resume in a notebook, tests)
is not refused.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from sae_hooks.store.lock import (
    LOCK_ATTR,
    LockedError,
    check_lock,
    hold_file,
    holder_record,
    read_record,
    refusal,
    release_file,
    write_record,
)

LOCK_FILE = ".lock"

#: Run directories this process holds (their lock file paths).
_held: set[str] = set()


class RunLockedError(LockedError):
    """Another live process is training into this run directory."""


def acquire(run_dir: Path) -> None:
    """Hold run_dir for this process, or raise RunLockedError naming the live holder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    if str(path) in _held:
        return
    if not hold_file(path):
        raise refusal(str(run_dir), "run directory", read_record(path), RunLockedError)
    try:
        holder = read_record(path)
        if holder is not None and not _is_this_process(holder):
            check_lock(  # a dead holder's file: warn; an older sae-hooks' live one: refuse
                {LOCK_ATTR: holder},
                str(run_dir),
                error=RunLockedError,
                what="run directory",
                unlock=f"delete {path}",
            )
        write_record(path, holder_record())
    except BaseException:
        release_file(path, remove=False)  # it may name another holder
        raise
    _held.add(str(path))


def release(run_dir: Path) -> None:
    """Drop the lock if this process holds it."""
    path = run_dir / LOCK_FILE
    if str(path) in _held:
        _held.discard(str(path))
        release_file(path)


def _is_this_process(holder: dict[str, Any] | None) -> bool:
    return (
        holder is not None
        and holder.get("pid") == os.getpid()
        and holder.get("host") == socket.gethostname()
    )
