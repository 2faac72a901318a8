"""The writer thread of StoreWriter: buffer rows, write whole units, commit input batches.

Commit protocol. The caller appends one *input batch* at a time (one model
forward's rows). This thread buffers rows and writes whole storage units
(chunks, or shards when sharding) as soon as they fill; it never rewrites a row.
Then, at most once per `commit_interval` seconds and always on flush, it
commits: every input batch whose rows all lie below the written frontier is folded
into `committed_rows`, `committed_inputs` and the running statistics, in ONE
attribute write made after the data it covers. `committed_rows` therefore always
ends on an input-batch boundary, so a capture interrupted at any instant resumes
at input `committed_inputs`, rewriting rows from `committed_rows` on: nothing
lost, nothing doubled. Rows written past `committed_rows` (the start of a batch
that straddles a chunk, or batches awaiting the next commit) are garbage that a
resume overwrites; readers never see them. Arrays grow geometrically while
writing (a resize is a metadata write) and are cut to `committed_rows` on close.

A capture cut at max_rows appends the head of an input batch marked as not
completing it: that commit records `partial_input_rows`, the rows of input batch
`committed_inputs` already stored, and a continued capture appends that batch's
remaining rows, so the store equals an uninterrupted capture row for row.

On resume the first write starts mid-chunk; zarr rewrites that partial region
(read-modify-write of one chunk), after which writes are aligned again.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import zarr

from sae_hooks.store.fingerprint import INPUTS_ATTR
from sae_hooks.store.layout import storage_to_numpy


@dataclass
class EncodedRows:
    """Rows of one or more input batches as the writer thread stores them: arrays by
    zarr key, in the storage dtype. (The rows and their metadata arrive as an
    `ActivationBatch`; this is their encoding, not another kind of rows.)"""

    data: dict[str, np.ndarray]  # "acts/<point>" and META_ARRAYS -> rows
    n: int
    completes_input: bool = True  # False: the head of an input batch (cut at max_rows)
    inputs_hash: str | None = None  # the capture's hash of its inputs through this batch


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class CommitThread:
    """Owns the written frontier and the committed counts of one open store.

    `arrays` is the writer's dict of zarr arrays (filled before the first rows come);
    `attrs` the store's attributes at opening. A failure is kept in `error` and every
    later item is drained unprocessed, so the caller never blocks on a dead thread.
    """

    def __init__(
        self,
        group: zarr.Group,
        arrays: dict[str, zarr.Array],
        *,
        unit: int,
        attrs: dict[str, Any],
        commit_interval: float,
        queue_size: int,
    ) -> None:
        self._group, self._arrays, self._unit = group, arrays, unit
        self.commit_interval, self.dtype = commit_interval, attrs["dtype"]
        self.committed_rows = int(attrs["committed_rows"])
        self.committed_inputs = int(attrs["committed_inputs"])
        self.partial_input_rows = int(attrs.get("partial_input_rows", 0))
        stats = attrs["stats"]
        self._sums = {p: np.asarray(s["mean"], np.float64) * s["count"] for p, s in stats.items()}
        self._sq = {p: s["mean_sq_norm"] * s["count"] for p, s in stats.items()}
        # Rows [committed_rows, _written) are on disk, uncommitted.
        self._written = self.committed_rows
        self._buffer: list[EncodedRows] = []
        self._buffered = 0
        # Appends not yet committed: (end row, sum of rows, sum of squared norms, whether
        # it completes its input batch, the inputs hash through it).
        self._pending: deque[tuple[int, dict, dict, bool, str | None]] = deque()
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.error: BaseException | None = None
        self._last_commit = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="StoreWriter", daemon=True)
        self.thread.start()

    # -- what the caller's thread calls ----------------------------------------------

    def put(self, item: EncodedRows | threading.Event, check: Callable[[], None]) -> None:
        """Queue rows or a flush request; `check` raises the thread's failure while waiting."""
        while True:
            check()
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def flush(self, check: Callable[[], None]) -> None:
        """Write and commit everything queued so far; wait for it."""
        done = threading.Event()
        self.put(done, check)
        while not done.wait(0.1):
            check()
        check()

    def stop(self) -> None:
        """End the thread after the items already queued."""
        self.queue.put(None)
        self.thread.join()

    # -- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain so the caller never blocks on a dead writer
            try:
                if isinstance(item, EncodedRows):
                    self._ingest(item)
                else:
                    self._write(self._buffered)
                    self._commit()
                    item.set()
            except BaseException as err:
                self.error = err

    def _ingest(self, rows: EncodedRows) -> None:
        sums, sq_norms = {}, {}
        for key, raw in rows.data.items():  # statistics of the rows exactly as stored
            if not key.startswith("acts/"):
                continue
            x = storage_to_numpy(raw, self.dtype)
            sums[key[5:]] = x.sum(axis=0, dtype=np.float64)
            sq_norms[key[5:]] = float(np.einsum("ij,ij->i", x, x, dtype=np.float64).sum())
        self._buffer.append(rows)
        self._buffered += rows.n
        end = self._written + self._buffered
        self._pending.append((end, sums, sq_norms, rows.completes_input, rows.inputs_hash))
        boundary = (self._written // self._unit + 1) * self._unit
        while self._written + self._buffered >= boundary:
            self._write(boundary - self._written)
            boundary += self._unit
        if time.monotonic() - self._last_commit >= self.commit_interval:
            self._commit()

    def _take(self, n: int) -> dict[str, np.ndarray]:
        """Pop the first n buffered rows of every array."""
        if len(self._buffer) == 1:
            whole = self._buffer[0].data
        else:
            keys = self._buffer[0].data.keys()
            whole = {k: np.concatenate([r.data[k] for r in self._buffer]) for k in keys}
        rest = self._buffered - n
        self._buffer = [EncodedRows({k: v[n:] for k, v in whole.items()}, rest)] if rest else []
        self._buffered = rest
        return {k: v[:n] for k, v in whole.items()}

    def _write(self, n: int) -> None:
        if n == 0:
            return
        start, stop = self._written, self._written + n
        for key, rows in self._take(n).items():
            arr = self._arrays[key]
            if arr.shape[0] < stop:  # grow geometrically: each resize is a metadata write
                capacity = max(stop, 2 * arr.shape[0], 4 * self._unit)
                arr.resize((capacity, *arr.shape[1:]))
            arr[start:stop] = rows
        self._written = stop

    def _commit(self) -> None:
        """Fold every fully written input batch into the committed attributes.

        The in-memory counts change only once the attribute write succeeded, so after
        a failed write (full disk) they still describe what is on disk.
        """
        done, taken, end = 0, 0, self.committed_rows
        partial = self.partial_input_rows
        sums, sq = dict(self._sums), dict(self._sq)
        hashed: dict[str, str] = {}
        while self._pending and self._pending[0][0] <= self._written:
            start = end
            end, batch_sums, batch_sq, completes, digest = self._pending.popleft()
            if digest is not None:
                hashed[INPUTS_ATTR] = digest
            for p in batch_sums:
                sums[p] = sums.get(p, 0.0) + batch_sums[p]
                sq[p] = sq.get(p, 0.0) + batch_sq[p]
            done += completes
            partial = 0 if completes else partial + end - start
            taken += 1
        self._last_commit = time.monotonic()
        if not taken:
            return
        stats = {
            p: {
                "mean": (sums[p] / max(end, 1)).tolist(),
                "mean_sq_norm": sq[p] / max(end, 1),
                "count": end,
            }
            for p in sums
        }
        # One metadata write: group.attrs.update() would write once per key, and a crash
        # between those writes would leave committed_rows and committed_inputs disagreeing.
        self._group.update_attributes(
            {
                "committed_rows": end,
                "committed_inputs": self.committed_inputs + done,
                "partial_input_rows": partial,
                "stats": stats,
                "updated": now(),
                **hashed,
            }
        )
        self.committed_rows, self.committed_inputs = end, self.committed_inputs + done
        self.partial_input_rows = partial
        self._sums, self._sq = sums, sq
