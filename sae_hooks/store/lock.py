"""One writer per store: a `writer` attribute naming the holder's pid and host.

An attribute (not a lock file) works on every fsspec backend. Two writers racing
to start within the same instant are not excluded, which is acceptable for the
failure it guards against: a second capture started by mistake on a live store.
`check_lock` judges any holder record (pid, host, since): training run
directories use it for their lock file (sae_hooks/train/runlock.py).
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from typing import Any

import zarr

LOCK_ATTR = "writer"

#: Stores a StoreWriter of this process holds open right now (their `describe()` names).
#: A lock naming this process but absent here was left by a writer of this process that
#: failed to release it (a full disk): it is stale, and the same process may take it.
_open_here: set[str] = set()


class LockedError(RuntimeError):
    """Another live process holds this store or run directory."""


class StoreLockedError(LockedError):
    """Another live process is writing this store."""


def pid_alive(pid: int) -> bool:
    """Whether `pid` names a running (not zombie) process on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def holder_record() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}


def check_lock(
    attrs: dict[str, Any],
    where: str,
    *,
    error: type[LockedError] = StoreLockedError,
    what: str = "store",
    unlock: str = f"delete the '{LOCK_ATTR}' attribute of the store's group",
) -> None:
    """Raise `error` if a live process holds `where`; warn and allow if its holder died.

    attrs[LOCK_ATTR] is the holder record; `what` names the thing locked and `unlock`
    says how to free it by hand when its holder died on another host.
    """
    holder = attrs.get(LOCK_ATTR)
    if not holder:
        return
    pid, host = holder.get("pid"), holder.get("host")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    # Stores only: a run directory's lock (train/runlock.py) has no in-process registry.
    mine = what == "store" and host == socket.gethostname() and pid == os.getpid()
    mine = mine and pid_alive(pid)
    if mine and where in _open_here:
        raise StoreLockedError(
            f"store {where} is already open for writing in this process (pid {pid}); "
            "close that StoreWriter (or let its capture finish) before opening another"
        )
    if mine:
        warnings.warn(
            f"taking over the stale writer lock on {where}: an earlier writer of this process "
            f"(pid {pid}, since {since}) failed before it could release it",
            stacklevel=3,
        )
        return
    if host == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
        warnings.warn(
            f"breaking the stale writer lock on {what} {where}: pid {pid} on {host} (since {since}) "
            "is no longer running",
            stacklevel=3,
        )
        return
    raise error(
        f"{what} {where} is being written by pid {pid} on host {host} since {since}; "
        f"only one writer may hold a {what}. Wait for it to finish; if that process is dead "
        f"on another host, {unlock}"
    )


def acquire(group: zarr.Group, where: str) -> None:
    check_lock(dict(group.attrs), where)
    group.update_attributes({LOCK_ATTR: holder_record()})
    held(where)


def held(where: str) -> None:
    """Note that a writer of this process holds `where` (its lock attribute is written)."""
    _open_here.add(where)


def forget(where: str) -> None:
    """This process no longer holds `where` (its writer failed while opening)."""
    _open_here.discard(where)


def release(group: zarr.Group, where: str) -> None:
    """Forget the hold first: even if the attribute write fails (full disk), this process
    may reopen the store, whose lock then names a holder that is known to be gone."""
    forget(where)
    group.update_attributes({LOCK_ATTR: None})
