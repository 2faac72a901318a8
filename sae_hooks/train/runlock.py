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
import shutil
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
TRASH = ".overwritten"
"""Where `clear` moves a run's entries before deleting them."""

#: What a training writes in its directory: a folder holding one of these is a training's.
TRAINING_ENTRIES = ("config.json", "log.jsonl", "sae", "checkpoint", "checkpoint.old")

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


def clear(run_dir: Path) -> None:
    """Empty a training directory for a fresh start (`train --overwrite`) and hold its
    lock from here on (the training started next in this process takes it, re-entrant).

    Refused, with nothing deleted: RunLockedError naming the pid while another live
    process trains there; ValueError when the folder holds entries but no training
    (none of TRAINING_ENTRIES): it is not the run's to delete.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"refusing to overwrite {run_dir}: it is a file, not a training directory")
    _check_training(run_dir)
    acquire(run_dir)  # RunLockedError naming the pid while a live process trains there
    try:
        _check_training(run_dir)  # again, under the lock
        _empty(run_dir)
    except BaseException:
        release(run_dir)
        raise


def _empty(run_dir: Path) -> None:
    """Move every entry into TRASH, then delete it: an interrupt while moving puts them
    all back; one while deleting leaves a directory holding no training, only TRASH,
    which the next clear removes. Never half a training beside half the old one."""
    trash = run_dir / TRASH
    if trash.exists():
        shutil.rmtree(trash)  # left by a clear interrupted while deleting
    trash.mkdir()
    moved: list[str] = []
    try:
        for entry in sorted(run_dir.iterdir()):
            if entry.name not in (LOCK_FILE, TRASH):
                entry.rename(trash / entry.name)
                moved.append(entry.name)
    except BaseException:
        for name in moved:
            (trash / name).rename(run_dir / name)
        trash.rmdir()
        raise
    shutil.rmtree(trash)


def _check_training(run_dir: Path) -> None:
    """Refuse a folder holding anything when none of it is a training's."""
    entries = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    entries = [n for n in entries if n not in (LOCK_FILE, TRASH)]
    if entries and not any(n in TRAINING_ENTRIES for n in entries):
        more = f" and {len(entries) - 4} more" if len(entries) > 4 else ""
        raise ValueError(
            f"refusing to overwrite {run_dir}: it holds {', '.join(entries[:4])}{more} but no "
            f"training ({', '.join(TRAINING_ENTRIES)}); move it away or pick another name"
        )
