"""One training per run directory: a lock file naming the holder's pid and host.

Two trainings writing one run directory interleave their logs and swap each
other's checkpoints away; the second one is refused at once with RunLockedError
naming the holder. The record and its judgement (live holder: refuse; holder
dead on this host: warn and take over) are the store lock's (store/lock.py). The
lock is re-entrant within a process, so a Trainer built again on the same run
directory in the same process (resume in a notebook, tests) is not refused.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from sae_hooks.store.lock import LOCK_ATTR, LockedError, check_lock, holder_record

LOCK_FILE = ".lock"


class RunLockedError(LockedError):
    """Another live process is training into this run directory."""


def acquire(run_dir: Path) -> None:
    """Hold run_dir for this process, or raise RunLockedError naming the live holder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    record = json.dumps({LOCK_ATTR: holder_record()}).encode()
    try:  # the common case, atomic: nobody holds it
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        holder = _holder(path)
        if _is_this_process(holder):
            return
        check_lock(
            {LOCK_ATTR: holder},
            str(run_dir),
            error=RunLockedError,
            what="run directory",
            unlock=f"delete {path}",
        )
        tmp = path.with_name(f"{LOCK_FILE}.{os.getpid()}")
        tmp.write_bytes(record)
        os.replace(tmp, path)  # take over the stale lock
        return
    with os.fdopen(fd, "wb") as f:
        f.write(record)


def release(run_dir: Path) -> None:
    """Drop the lock if this process holds it."""
    path = run_dir / LOCK_FILE
    if _is_this_process(_holder(path)):
        path.unlink(missing_ok=True)


def _holder(path: Path) -> dict[str, Any] | None:
    """The holder record, or None when the file is gone or torn (a kill mid-write)."""
    try:
        holder = json.loads(path.read_text()).get(LOCK_ATTR)
    except (OSError, ValueError, AttributeError):
        return None
    return holder if isinstance(holder, dict) else None


def _is_this_process(holder: dict[str, Any] | None) -> bool:
    return (
        holder is not None
        and holder.get("pid") == os.getpid()
        and holder.get("host") == socket.gethostname()
    )
