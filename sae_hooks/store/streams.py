"""An epoch cut into S streams, so that N ranks read disjoint parts of the store.

The loader's epoch is its chunks in a seeded order. With S streams, stream s is
rows [s*L, (s+1)*L) of that order (L = batches per epoch x batch_size / S): a run
of whole chunks, cut only where a stream ends, so at most S - 1 chunks per epoch
are shared by two streams. Each stream shuffles its own buffers and yields
batch_size / S rows per step; the global batch at step t is the S streams' parts
of step t in stream order. Rank r of N reads only streams r, r + N, ... (N must
divide S), so the union of the ranks' rows at step t is the one-process batch at
step t, whatever N, and a checkpoint's position (a global batch index) resumes
under any N that divides S. S = 1 is the loader before streams: one stream, and
under N > 1 processes every rank reads every batch and keeps its slice.

`StreamCursor` walks one stream: a reader pool fills its next buffer while the
worker cuts the current one (two scratch arrays per stream).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

#: The default S is a power of two at most this (and at most the loader's buffer_chunks).
MAX_DEFAULT_STREAMS = 8
#: Beyond 2 streams, the default asks for this many chunks per stream, so the chunks
#: two streams share (S - 1 per epoch) are at most 1/16 of the reads.
CHUNKS_PER_STREAM = 16

Block = tuple[int, int]


def default_streams(n_blocks: int, batch_size: int, buffer_chunks: int) -> int:
    """The default S: the largest power of two <= min(8, buffer_chunks) that divides
    batch_size, with CHUNKS_PER_STREAM chunks per stream beyond 2 streams; 2 whenever
    batch_size is even, 1 otherwise. Independent of the number of processes."""
    s = 1
    while (
        2 * s <= min(MAX_DEFAULT_STREAMS, max(2, buffer_chunks))
        and batch_size % (2 * s) == 0
        and (s == 1 or n_blocks >= 2 * s * CHUNKS_PER_STREAM)
    ):
        s *= 2
    return s


def valid_worlds(streams: int) -> list[int]:
    """The numbers of processes that can share S streams: the divisors of S."""
    return [n for n in range(1, streams + 1) if streams % n == 0]


def check_streams(streams: int, batch_size: int, world: int, drop_last: bool) -> None:
    """Refuse an S that does not divide the batch, or N processes that cannot share S."""
    if not isinstance(streams, int) or streams < 1:
        raise ValueError(f"streams must be an integer >= 1, got {streams!r}")
    if streams > 1 and batch_size % streams:
        raise ValueError(
            f"streams={streams} does not divide batch_size={batch_size}: each stream gives "
            "batch_size / streams rows of every batch"
        )
    if streams > 1 and not drop_last:
        raise ValueError(f"streams={streams} needs drop_last=True (every batch full)")
    if streams > 1 and streams % world:
        raise ValueError(
            f"{world} processes cannot share the loader's {streams} streams; valid numbers "
            f"of processes: {', '.join(map(str, valid_worlds(streams)))} (or set "
            f"TrainConfig.loader_streams to a multiple of {world} dividing the batch size)"
        )


def split_streams(blocks: list[Block], streams: int, stream_rows: int) -> list[list[Block]]:
    """Stream s's pieces: rows [s * stream_rows, (s + 1) * stream_rows) of the blocks
    laid end to end, as (start, stop) store rows; a block is cut only at a stream's end."""
    out: list[list[Block]] = [[] for _ in range(streams)]
    at = 0  # position of the current block's first row in the concatenation
    for a, b in blocks:
        lo, hi = at, at + (b - a)
        at = hi
        first, last = lo // stream_rows, min((hi - 1) // stream_rows, streams - 1)
        for s in range(first, last + 1):
            cut_lo, cut_hi = max(lo, s * stream_rows), min(hi, (s + 1) * stream_rows)
            if cut_lo < cut_hi:
                out[s].append((a + cut_lo - lo, a + cut_hi - lo))
        if at >= streams * stream_rows:
            break
    return out


def group(pieces: list[Block], per_buffer: int) -> list[list[Block]]:
    """Consecutive pieces in buffers of `per_buffer`."""
    return [pieces[i : i + per_buffer] for i in range(0, len(pieces), per_buffer)]


class StreamCursor:
    """One stream of one epoch: its buffers, read through `fill(k) -> (rows, perm)` on
    `reader` (the next one read ahead unless `read_ahead` is False), cut into parts."""

    def __init__(
        self,
        buffer_rows: list[int],
        fill: Callable[[int], tuple[Any, ...]],
        reader: ThreadPoolExecutor,
        gather: Callable[[np.ndarray, np.ndarray, np.ndarray], None],
        *,
        read_ahead: bool = True,
    ) -> None:
        self.offsets = np.cumsum([0, *buffer_rows])
        self.fill, self.reader, self.gather = fill, reader, gather
        self.read_ahead = read_ahead
        self.k = -1
        self.buf: Any = None
        self.perm: np.ndarray | None = None
        self.next: Future | None = None

    def _enter(self, k: int) -> None:
        """Buffer k becomes current (waiting for its read); k + 1 is read ahead."""
        job = self.next if self.next is not None and self.k + 1 == k else None
        job = job or self.reader.submit(*self.fill(k))
        self.buf, self.perm = job.result()
        self.k, self.next = k, None
        if self.read_ahead and k + 1 < len(self.offsets) - 1:
            self.next = self.reader.submit(*self.fill(k + 1))

    def seek(self, row: int) -> None:
        """Start at the stream's row `row`: the read of its buffer starts now (all the
        cursors' first reads then run side by side); `cut` waits for it."""
        k = int(np.searchsorted(self.offsets, row, side="right")) - 1
        self.k, self.next = k - 1, self.reader.submit(*self.fill(k))

    def cut(self, lo: int, hi: int, dest: np.ndarray) -> None:
        """The stream's rows [lo, hi) (of its shuffled buffers end to end) into `dest`."""
        start = lo
        while lo < hi:
            while lo >= self.offsets[self.k + 1]:  # buffer k is spent: its scratch is free
                self._enter(self.k + 1)
            take = min(hi, int(self.offsets[self.k + 1])) - lo
            at = lo - int(self.offsets[self.k])
            part = dest[lo - start : lo - start + take]
            if self.perm is None:
                np.copyto(part, self.buf[at : at + take])
            else:  # one gather: the buffer's permutation, cut into batches
                self.gather(self.buf, self.perm[at : at + take], part)
            lo += take


def pieces_rows(pieces: list[Block]) -> int:
    return sum(b - a for a, b in pieces)


def chunk_bounds(store: Any) -> list[int]:
    """Where the store's chunk grids start: 0, and each rank's first row of a sharded store."""
    shards = getattr(store, "shards", None)
    if shards:
        return [0, *np.cumsum([s.n_rows for s in shards]).tolist()]
    return [0, store.n_rows]


def chunk_blocks(bounds: list[int], chunk: int, start: int, stop: int) -> list[Block]:
    """Rows [start, stop) cut at the stored chunks' boundaries: chunk multiples inside each
    [bounds[i], bounds[i + 1]) (the ranks of a sharded store each start a chunk)."""
    cuts = {start, stop}
    for lo, hi in itertools.pairwise(bounds):
        cuts.update(c for c in range(lo, hi, chunk) if start < c < stop)
    return list(itertools.pairwise(sorted(cuts)))
