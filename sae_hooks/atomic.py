"""Rebuilt outputs are swapped in whole: an interrupted rebuild leaves the previous one.

`write_text_atomic` writes one file through a temporary sibling and `os.replace`.
`rebuilt_dir` builds a directory output (report, exports) in a sibling
``.NAME.partial-PID`` and swaps it in at the end:

    1. rename the old output aside to ``.NAME.old-PID``
    2. rename the partial directory to NAME
    3. remove ``.NAME.old-PID``

A crash before 1 leaves the old output in place (and a partial directory, removed by the
next build once its pid is dead); between 1 and 2 NAME is missing and ``.NAME.old-PID``
holds the old output whole: the next build (or `recover`) renames it back; after 2 the
new output is whole and the next build removes the leftover. Never a mix.

An existing NAME is replaced only when it is recognisably this library's output of the
same kind (`OutputKind.owns`): every entry is one that kind writes, and its signature
file says so. Anything else (a folder of the user's) is refused with one line.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OutputKind", "check_replaceable", "rebuilt_dir", "recover", "write_text_atomic"]


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to a temporary sibling, then rename it over `path`: never half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        tmp.write_text(text, encoding=encoding)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@dataclass(frozen=True)
class OutputKind:
    """What one kind of directory output holds, so an existing one can be recognised.

    name: said in messages ("report", "SAELens export"); entries: the top-level names
    it may hold; signature: true for a directory this library wrote as this kind."""

    name: str
    entries: frozenset[str]
    signature: Callable[[Path], bool]

    def owns(self, folder: Path) -> bool:
        """An empty folder, or one holding only this kind's entries, signature included."""
        names = {p.name for p in folder.iterdir()}
        return not names or (names <= self.entries and self.signature(folder))


def _aside(target: Path, tag: str) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.{tag}-*"))


def _alive(pid_of: Path) -> bool:
    try:
        pid = int(pid_of.name.rsplit("-", 1)[1])
    except ValueError:
        return False
    if pid == os.getpid():
        return False  # ours, left by an earlier interrupted build in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(target: str | os.PathLike) -> None:
    """Finish or undo a swap a crash interrupted: restore ``.NAME.old-*`` when NAME is
    missing, remove leftovers (old copies beside a whole NAME, partial dirs of dead pids)."""
    target = Path(target)
    olds = [p for p in _aside(target, "old") if not _alive(p)]
    if olds and not target.exists():
        os.replace(olds.pop(), target)
    for p in olds + [p for p in _aside(target, "partial") if not _alive(p)]:
        shutil.rmtree(p, ignore_errors=True)


def check_replaceable(target: str | os.PathLike, kind: OutputKind) -> None:
    """Refuse (FileExistsError, one line) a `target` that exists and is not `kind`'s output:
    call it before a long computation so the refusal comes first."""
    target = Path(target)
    if not target.exists():
        return
    if not target.is_dir():
        raise FileExistsError(
            f"{target} is a file, not a {kind.name} folder: choose a new path or remove it"
        )
    if not kind.owns(target):
        found = sorted(p.name for p in target.iterdir())
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise FileExistsError(
            f"{target} holds files that are not a {kind.name} written by sae-hooks "
            f"({shown}); choose a new path or remove it"
        )


@contextmanager
def rebuilt_dir(target: str | os.PathLike, kind: OutputKind) -> Iterator[Path]:
    """Yield an empty sibling directory to fill; swap it in as `target` when the block ends.

    Refuses (FileExistsError) a `target` that is not empty and not `kind`'s output. On an
    exception (KeyboardInterrupt included) the partial directory is removed and `target`
    is left as it was."""
    target = Path(target).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    check_replaceable(target, kind)
    pid = os.getpid()
    partial = target.with_name(f".{target.name}.partial-{pid}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{pid}")
    if target.exists():
        os.replace(target, old)
    os.replace(partial, target)
    shutil.rmtree(old, ignore_errors=True)
