"""One writer per store, one training per run directory: atomic locks and their holders.

A local store or run directory is held through an advisory lock (`fcntl.flock`) on a
lock file: the kernel gives it to one process at a time, so two processes starting
at the same instant cannot both hold it, and it is released when its holder dies
(nothing stale to take over, no pid to trust). The lock file of a store sits beside
it (`.<name>.lock`: an overwrite empties the store's own folder); a run directory's
is `<run>/.lock` (sae_hooks/train/runlock.py).

The holder is also recorded, for messages and for locations without flock: a store's
`writer` attribute (and the lock file) names its pid, host, start time and since
when. The start time (/proc/<pid>/stat field 22 on Linux; elsewhere only the pid is
compared) tells a reused pid from its holder. A store on S3 (s3://) is held through a
lock object `.<name>.lock` beside it, created with a conditional PUT (If-None-Match: *)
and taken over from a dead holder with another (If-Match: its ETag): of writers
starting in the same instant exactly one gets it (sae_hooks/store/remote.py). Other
fsspec URLs (memory://, gs://) have neither: there the attribute is the lock, checked
then written, so two writers starting within the same instant are not excluded.
`check_lock` judges any holder record: a live holder is refused, a dead one (on this
host) is replaced with a warning.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import zarr

from sae_hooks.jsonio import loads
from sae_hooks.store import remote

try:
    import fcntl
except ImportError:  # Windows: no flock; the recorded holder is the only lock
    fcntl = None  # type: ignore[assignment]

LOCK_ATTR = "writer"

#: Stores a StoreWriter of this process holds open right now (their `describe()` names).
#: A lock naming this process but absent here was left by a writer of this process that
#: failed to release it (a full disk): it is stale, and the same process may take it.
_open_here: set[str] = set()

#: Lock files this process holds: path -> [fd, holds]. flock excludes other processes
#: only; inside one process the holders are counted (a stale in-process writer keeps
#: its count, and the lock, until the process ends).
_files: dict[str, list[int]] = {}

#: Lock objects this process holds (stores on S3): URL -> [lock object, token, holds].
_objects: dict[str, list[Any]] = {}
_objects_guard = threading.Lock()  # threads of this process take a lock object one at a time


class LockedError(RuntimeError):
    """Another live process holds this store or run directory."""


class StoreLockedError(LockedError):
    """Another live process is writing this store."""


def process_start(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot, /proc/<pid>/stat field 22), or None
    where that is not known (no /proc, or no such process)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


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


def holder_alive(holder: dict[str, Any]) -> bool:
    """Whether a holder record on this host names a live process: its pid runs and, when
    the record has a start time, the process with that pid started then (a reused pid
    is another process)."""
    pid, started = holder.get("pid"), holder.get("started")
    if not isinstance(pid, int) or not pid_alive(pid):
        return False
    now = process_start(pid) if isinstance(started, int) else None
    return now is None or now == started


def holder_record() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.time(),
        "started": process_start(os.getpid()),
    }


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
    if not isinstance(holder, dict) or not holder:
        return
    pid, host = holder.get("pid"), holder.get("host")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    here = host == socket.gethostname()
    # Stores only: a run directory's lock (train/runlock.py) has no in-process registry.
    mine = what == "store" and here and pid == os.getpid() and holder_alive(holder)
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
    if here and isinstance(pid, int) and not holder_alive(holder):
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


# -- lock files (flock) --------------------------------------------------------------


def hold_file(path: Path) -> bool:
    """Hold the flock of `path` (created if missing) for this process; False if another
    process holds it. Counted within this process: each True needs a `release_file`.

    The file is checked to still be `path` once locked: a holder that released it
    unlinked it first, and a lock on an unlinked file would exclude nobody.
    """
    key = str(path)
    if key in _files:
        _files[key][1] += 1
        return True
    if fcntl is None:
        return _hold_exclusive(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            _files[key] = [fd, 1]
            return True
        os.close(fd)  # released and unlinked while we waited for it: lock the new file


def _hold_exclusive(path: Path) -> bool:
    """Without flock: the file's creation (O_EXCL) is the lock; a file left by a dead
    holder must be removed by hand (its record names it)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    _files[str(path)] = [fd, 1]
    return True


def release_file(path: Path, *, remove: bool = True) -> None:
    """Drop one hold of `path`; the last one removes the file (unless `remove` is False:
    it names another holder), then unlocks it."""
    entry = _files.get(str(path))
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _files[str(path)]
    try:
        if remove:
            Path(path).unlink(missing_ok=True)
    finally:
        os.close(entry[0])


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write the holder record into the held lock file `path` (for others' messages)."""
    fd = _files[str(path)][0]
    data = json.dumps({LOCK_ATTR: record}).encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError as err:
        raise type(err)(err.errno, f"cannot write the lock file {path}: {err.strerror}") from err


def read_record(path: Path) -> dict[str, Any] | None:
    """The holder record of a lock file, or None when it is missing, empty or torn."""
    try:
        holder = loads(Path(path).read_text()).get(LOCK_ATTR)
    except (OSError, ValueError, AttributeError):
        return None
    return holder if isinstance(holder, dict) else None


def refusal(where: str, what: str, holder: dict[str, Any] | None, error: type[LockedError]):
    """The error for a lock file another process holds, naming its holder if recorded."""
    if not holder:
        return error(
            f"{what} {where} is held by another process (it has not recorded its pid yet); "
            f"only one writer may hold a {what}. Wait for it to finish"
        )
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return error(
        f"{what} {where} is being written by pid {holder.get('pid')} on host "
        f"{holder.get('host')} since {since}; only one writer may hold a {what}. "
        "Wait for it to finish"
    )


# -- stores --------------------------------------------------------------------------


def store_lock_file(where: str) -> Path | None:
    """The lock file of the local store at `where` (a resolved path), None for a URL."""
    if "://" in where:
        return None
    path = Path(where)
    return path.parent / f".{path.name}.lock"


def hold_store(where: str, storage_options: dict[str, Any] | None = None) -> None:
    """Hold the lock file of a local store (creating its parent folder), or the lock
    object of a store on S3, or raise StoreLockedError naming the process that holds it.
    Nothing for other URLs (their lock is the attribute, `acquire`)."""
    if remote.is_conditional(where):
        _hold_object(where, storage_options)
        return
    path = store_lock_file(where)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where the folder should be
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)) from None
    if not hold_file(path):
        raise refusal(where, "store", read_record(path), StoreLockedError)
    if _files[str(path)][1] == 1:
        write_record(path, holder_record())


def release_store(where: str) -> None:
    if where in _objects:
        _release_object(where)
        return
    path = store_lock_file(where)
    if path is not None:
        release_file(path)


def _hold_object(where: str, storage_options: dict[str, Any] | None) -> None:
    """Create the store's lock object, or take it over from a dead holder on this host.

    Each step is one conditional PUT, so two processes racing for it cannot both
    succeed; the record's token tells this process's own PUT (retried by the client
    after a lost response) from another's.
    """
    with _objects_guard:
        _take_object(where, storage_options)


def _take_object(where: str, storage_options: dict[str, Any] | None) -> None:
    if where in _objects:
        _objects[where][2] += 1
        return
    obj = remote.LockObject(where, storage_options)
    token = uuid.uuid4().hex
    record = {**holder_record(), "token": token}
    if not obj.create(record):
        holder, etag = obj.read()
        mine = holder is not None and holder.get("token") == token
        freed = holder is None and obj.create(record)  # released between the two requests
        taken = bool(holder) and not mine and _stale(where, holder) and obj.replace(record, etag)
        if not (mine or freed or taken):
            raise refusal(where, "store", holder or None, StoreLockedError)
    _objects[where] = [obj, token, 1]


def _stale(where: str, holder: dict[str, Any]) -> bool:
    """Whether a lock object's holder is known to be gone (a dead process on this host,
    or a writer of this process that failed to release it); warns when it is."""
    here, pid = holder.get("host") == socket.gethostname(), holder.get("pid")
    if not here or not isinstance(pid, int):
        return False
    if pid == os.getpid() and holder_alive(holder):
        if where in _open_here:
            return False
        what = "an earlier writer of this process failed before it could release it"
    elif holder_alive(holder):
        return False
    else:
        what = f"pid {pid} on {holder.get('host')} is no longer running"
    warnings.warn(f"taking over the stale writer lock on store {where}: {what}", stacklevel=4)
    return True


def _release_object(where: str) -> None:
    """Drop one hold; the last deletes the lock object if it is still this process's."""
    entry = _objects[where]
    entry[2] -= 1
    if entry[2] > 0:
        return
    del _objects[where]
    obj, token = entry[0], entry[1]
    holder, _ = obj.read()
    if holder is not None and holder.get("token") == token:
        obj.delete()


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
    try:
        group.update_attributes({LOCK_ATTR: None})
    finally:
        release_store(where)
