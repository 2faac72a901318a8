"""Keep freed host memory in the process while a CPU training runs.

A CPU step allocates and frees the same tens of megabytes every step (the weights'
gradients, 6,144 x 768 fp32 = 19 MB each; AuxK's (rows, dead) matrices). glibc's
malloc hands memory freed at the top of its heap back to the kernel once more than a
trim threshold is free there, and serves chunks above an mmap threshold by fresh
mappings; both thresholds start low (128 KiB) and only grow as large mappings are freed,
so in a training process the step's buffers were returned and faulted in again every
step: 8,000-10,000 page faults and 10-20 ms of system time in a ~120 ms step (768 ->
6,144, 2,048 rows, TopK and BatchTopK, Intel Xeon, 2 threads; `bench/bench_train.py
--ratio` prints a step's faults). With the mmap threshold at glibc's ceiling (32 MiB)
and the trim threshold at HEAP_KEEP_BYTES, those buffers stay mapped and are reused:
0-1,300 faults a step (none once the heap has grown), 0.1-5.5 ms of system time; in ten
alternating process pairs the step was 4-26 ms faster in eight and 7-11 ms slower in two
(a noisy host), and `bench_train.py --ratio` shows 0-1 faults a step.

The cost: the process keeps up to HEAP_KEEP_BYTES freed memory mapped rather than
giving it back (its peak use is unchanged). A process started with either threshold
set (MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_THRESHOLD_) or with SAE_HOOKS_HOST_HEAP=default
is left as it is; so is any C library but glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["HEAP_KEEP_BYTES", "keep_freed_memory"]

HEAP_KEEP_BYTES = 1 << 30
"""Freed memory at the top of the heap that glibc keeps mapped instead of trimming."""

MMAP_THRESHOLD_BYTES = 32 << 20
"""The largest mmap threshold glibc accepts on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX):
chunks up to it come from the heap and are reused; larger ones (a (rows, n) matrix of
pre-codes, which the step keeps) are still mapped on their own."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")
_done: set[int] = set()


def keep_freed_memory() -> bool:
    """Set glibc's thresholds so that freed step buffers are reused (see above), once
    per process; whether they are set (False: not glibc, opted out, or left to the
    user's own settings)."""
    if os.getpid() in _done:
        return True
    if os.environ.get("SAE_HOOKS_HOST_HEAP", "") == "default":
        return False
    if any(name in os.environ for name in _USER_SETTINGS):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok = ok and mallopt(_M_TRIM_THRESHOLD, HEAP_KEEP_BYTES) == 1
    if ok:
        _done.add(os.getpid())
    return ok
