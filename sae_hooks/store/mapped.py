"""Chunk files of equal size mapped side by side: one read-only array over the page cache.

Why: the loader's shuffled gather can then read rows straight from the page
cache into a batch, one copy, instead of reading chunks into a scratch buffer
and gathering from there (two copies; bench/bench_store.py measures both).
Each file is mapped with MAP_FIXED at its place in one reserved address range,
so the rows of all chunks form a single (rows, d) array and a batch is one
`np.take`. Linux and macOS only (elsewhere: None, and callers read as before).

A mapped file must not shrink while mapped (reading past its end is SIGBUS).
Chunk files of committed rows are never truncated: zarr replaces a chunk by
writing a new file and renaming it, and a mapping keeps the old file's bytes.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import weakref

import numpy as np

_MAP_FIXED = 0x10  # the same on Linux and macOS; Python's mmap module does not export it
_PROT_NONE = 0  # nor PROT_NONE
_MAP_FAILED = ctypes.c_void_p(-1).value


def _libc() -> ctypes.CDLL | None:
    if sys.platform not in ("linux", "darwin"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def map_files(
    paths: list[str], file_bytes: int, dtype: np.dtype, row_shape: tuple[int, ...]
) -> np.ndarray | None:
    """The files' bytes back to back as a read-only array of rows, or None if not mappable.

    None when the platform has no MAP_FIXED, `file_bytes` is not a whole number of
    pages, or a file is absent or not exactly `file_bytes` long.
    """
    libc = _libc()
    if libc is None or not paths or file_bytes % mmap.PAGESIZE:
        return None
    try:
        if any(os.stat(p).st_size != file_bytes for p in paths):
            return None
    except OSError:
        return None
    total = file_bytes * len(paths)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    base = libc.mmap(None, total, _PROT_NONE, flags, -1, 0)
    if base in (None, _MAP_FAILED):
        return None
    for i, path in enumerate(paths):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            libc.munmap(base, total)
            return None
        try:
            at = base + i * file_bytes
            got = libc.mmap(at, file_bytes, mmap.PROT_READ, mmap.MAP_SHARED | _MAP_FIXED, fd, 0)
        finally:
            os.close(fd)
        if got != at:
            libc.munmap(base, total)
            return None
    owner = (ctypes.c_char * total).from_address(base)
    weakref.finalize(owner, libc.munmap, base, total)  # when the last view is gone
    arr = np.frombuffer(owner, dtype=dtype).reshape(-1, *row_shape)
    arr.flags.writeable = False  # the pages are PROT_READ: a write would be a segfault
    return arr
