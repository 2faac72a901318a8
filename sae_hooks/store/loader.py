"""Shuffled, prefetched training batches from an activation store.

Random single-row reads are 50-100x slower than chunk reads, so shuffling is
two-level: each epoch permutes the store's chunks, groups them into buffers of
`buffer_chunks` chunks, and permutes the rows inside each buffer. An epoch is a
fixed sequence of batches cut from the concatenation of the shuffled buffers, so
batch i of epoch e is a pure function of (seed, e, i): a resumed loader yields
exactly the batches an uninterrupted one would have.

What that randomness is, next to a global shuffle: every row still comes once
per epoch and the chunk order is uniform, but a batch draws its rows from one
buffer (two where it straddles a boundary), i.e. from `buffer_chunks` chunks of
`chunk_rows` consecutive, document-major rows, not from the whole split. Rows of
one document therefore share a buffer and land in the same few batches of an
epoch; a larger `buffer_chunks` mixes more documents per batch at the cost of
memory (two buffers are held: one being read, one being cut into batches).

The data path: where the store maps its chunk files (`row_map`: uncompressed,
local), each batch is one gather of its rows straight from the page cache into
a fresh array, the rows' only copy. Otherwise, per buffer, a reader thread fills
a reused scratch array with whole chunks (`read_raw(..., out=)`, no temporary;
a few chunks at once, decompression releases the GIL) while the worker cuts the
previous buffer's batches, each one gather of its slice of the buffer's
permutation. Either way the gather is split over a few threads, and rows stay
in the stored dtype (bfloat16 travels as bfloat16). For a CUDA target the
batches are allocated in pinned memory, copied with `non_blocking=True` and
converted to `dtype` on the device; for a CPU target the worker converts.

Split: validation is the last `val_fraction` of the committed rows (rounded up),
training the rows before it. Rows are stored document-major, so the two splits
share at most the one document that straddles the boundary.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from sae_hooks.store.interface import StoreReader
from sae_hooks.store.layout import DTYPES, storage_to_numpy, storage_to_torch
from sae_hooks.store.open import open_store

SPLITS = ("train", "val")
#: Chunks of a buffer read (decompressed) at once: zarr's codecs release the GIL.
READ_THREADS = min(4, os.cpu_count() or 1)
#: Threads beside the worker that share a batch's gather (np.take releases the GIL):
#: a random row gather is bound by memory latency, not bandwidth, so parts overlap.
GATHER_THREADS = min(3, (os.cpu_count() or 1) - 1)
GATHER_PART_ROWS = 512  # below this a part is not worth a thread's hand-off
_END = object()


class ActivationLoader:
    """Iterable of (batch_size, d) tensors of one hook point; one `iter()` is one epoch.

    `dtype=None` keeps the stored dtype (bfloat16 for a bfloat16 store). Each batch
    is a tensor of its own: holding on to one never sees it overwritten.
    """

    def __init__(
        self,
        store: StoreReader | str | os.PathLike,
        point: str,
        batch_size: int,
        *,
        split: str = "train",
        val_fraction: float = 0.01,
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = torch.float32,
        shuffle: bool = True,
        buffer_chunks: int = 8,
        prefetch: int = 2,
        drop_last: bool = True,
    ) -> None:
        self.store = open_store(store) if isinstance(store, (str, os.PathLike)) else store
        if point not in self.store.points:
            raise KeyError(f"hook point {point!r} is not in the store; stored: {self.store.points}")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        for name, value in [("batch_size", batch_size), ("buffer_chunks", buffer_chunks)]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self._stored_numpy, self._stored_torch = DTYPES[self.store.dtype]
        dtype = self._stored_torch if dtype is None else dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch dtype or None, got {dtype}")
        self.point, self.batch_size, self.split = point, batch_size, split
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.device, self.dtype = torch.device(device), dtype
        self.buffer_chunks, self.prefetch = buffer_chunks, prefetch
        self._pin = self.device.type == "cuda" and torch.cuda.is_available()
        self._reads_into = "out" in inspect.signature(self.store.read_raw).parameters

        n = self.store.n_rows
        boundary = n - math.ceil(n * val_fraction)
        self.start, self.stop = (0, boundary) if split == "train" else (boundary, n)
        self.n_rows = self.stop - self.start
        if self.n_rows == 0 or (drop_last and self.n_rows < batch_size):
            raise ValueError(
                f"split {split!r} has {self.n_rows} rows (store: {n} committed rows, "
                f"val_fraction={val_fraction}), too few for one batch of {batch_size}"
            )
        chunk = self.store.chunk_rows(point)
        cuts = [self.start, *range((self.start // chunk + 1) * chunk, self.stop, chunk), self.stop]
        self._blocks = list(itertools.pairwise(cuts))
        self.epoch = 0
        # Scratch buffer pairs kept across epochs: a fresh 100+ MB array costs its
        # page faults again (measured here: slower than the copy it is filled by).
        self._scratch_pool: list[list[np.ndarray]] = []
        self._batch = 0  # batches of the current epoch already handed out

    def __len__(self) -> int:
        """Batches per epoch."""
        whole, rest = divmod(self.n_rows, self.batch_size)
        return whole + (rest > 0 and not self.drop_last)

    def __repr__(self) -> str:
        return (
            f"ActivationLoader(point={self.point!r}, split={self.split!r}, rows={self.n_rows}, "
            f"batch_size={self.batch_size}, epoch={self.epoch}, batch={self._batch}/{len(self)})"
        )

    # -- resume --------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self._batch,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "split": self.split,
            "rows": [self.start, self.stop],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position; the loader's settings must match the saved ones."""
        mine = self.state_dict()
        for key in ("seed", "batch_size", "split", "rows"):
            if list(np.atleast_1d(state[key])) != list(np.atleast_1d(mine[key])):
                raise ValueError(
                    f"cannot resume: saved {key}={state[key]!r} but this loader has {mine[key]!r}"
                )
        if not 0 <= state["batch"] <= len(self):
            raise ValueError(f"saved batch {state['batch']} outside the {len(self)} of an epoch")
        self.epoch, self._batch = int(state["epoch"]), int(state["batch"])

    # -- iteration -----------------------------------------------------------------

    def __iter__(self) -> Iterator[torch.Tensor]:
        """The rest of the current epoch; on exhaustion the epoch counter advances."""
        epoch, start = self.epoch, self._batch
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        worker = threading.Thread(
            target=self._produce, args=(epoch, start, out, stop), name="ActivationLoader"
        )
        worker.daemon = True
        worker.start()
        try:
            for i in range(start, len(self)):
                batch = out.get()
                if isinstance(batch, BaseException):
                    raise batch
                self._batch = i + 1
                yield batch.to(self.device, non_blocking=self._pin).to(self.dtype)
            self.epoch, self._batch = epoch + 1, 0
        finally:  # the worker sees `stop` within one put timeout; nothing to drain
            stop.set()
            worker.join()

    def batches(self) -> Iterator[torch.Tensor]:
        """Batches forever, epoch after epoch (each epoch reshuffled)."""
        while True:
            yield from self

    def _plan(self, epoch: int) -> list[list[tuple[int, int]]]:
        """This epoch's buffers: groups of (start, stop) chunk-aligned row blocks."""
        order = np.arange(len(self._blocks))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        blocks = [self._blocks[i] for i in order]
        step = self.buffer_chunks
        return [blocks[i : i + step] for i in range(0, len(blocks), step)]

    def _fill(
        self, epoch: int, k: int, blocks: list[tuple[int, int]], scratch: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Read buffer k's chunks into `scratch` (no temporary) and draw its row permutation."""
        ends = np.cumsum([0] + [b - a for a, b in blocks])
        end = int(ends[-1])
        dests = [scratch[lo:hi] for lo, hi in itertools.pairwise(ends)]
        if len(blocks) > 1 and READ_THREADS > 1:  # decompression releases the GIL
            with ThreadPoolExecutor(
                READ_THREADS, thread_name_prefix="ActivationLoader-chunk"
            ) as ex:
                for done in [
                    ex.submit(self._read_into, a, b, o) for (a, b), o in zip(blocks, dests)
                ]:
                    done.result()
        else:
            for (a, b), o in zip(blocks, dests, strict=True):
                self._read_into(a, b, o)
        self._check_unchanged()  # after the reads: these rows are the opened store's
        perm = None
        if self.shuffle:
            perm = np.random.default_rng([self.seed, epoch, k]).permutation(end)
        return scratch[:end], perm

    def _index(
        self, epoch: int, k: int, blocks: list[tuple[int, int]], rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Buffer k over mapped rows: nothing to read, only the rows' indices in batch order.

        The same rows in the same order as `_fill` (the same permutation), so a batch
        is identical whichever path cuts it.
        """
        self._check_unchanged()
        order = np.concatenate([np.arange(a, b) for a, b in blocks])
        if self.shuffle:
            order = order[np.random.default_rng([self.seed, epoch, k]).permutation(len(order))]
        return rows, order

    def _check_unchanged(self) -> None:
        """Stop with StoreChangedError if the store was replaced since it was opened (a
        StoreReader without `check_unchanged` is trusted)."""
        check = getattr(self.store, "check_unchanged", None)
        if check is not None:
            check()

    def _read_into(self, start: int, stop: int, out: np.ndarray) -> None:
        """Rows [start, stop) into `out`; a read that fails because the store was being
        replaced under it (chunks gone) is reported as that change."""
        try:
            if self._reads_into:
                self.store.read_raw(self.point, start, stop, out=out)
            else:  # a StoreReader without `out=`: one extra copy
                np.copyto(out, self.store.read_raw(self.point, start, stop))
        except Exception:
            self._check_unchanged()
            raise

    def _new_batch(self, rows: int) -> tuple[torch.Tensor, np.ndarray]:
        """A fresh batch in the stored dtype (pinned for CUDA) and its numpy view."""
        shape = (rows, self.store.d_model(self.point))
        if self._pin:
            t = torch.empty(shape, dtype=self._stored_torch, pin_memory=True)
            bits = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
            return t, bits.numpy().view(self._stored_numpy)
        arr = np.empty(shape, dtype=self._stored_numpy)
        return storage_to_torch(arr, self.store.dtype), arr

    def _on_host(self, batch: torch.Tensor, bits: np.ndarray) -> torch.Tensor:
        """A CPU target gets its dtype here, in the worker; a GPU converts after the copy."""
        if self._pin or self.device.type != "cpu" or batch.dtype == self.dtype:
            return batch
        if self.dtype == torch.float32:  # numpy, single-threaded: no fight over the cores
            return torch.from_numpy(storage_to_numpy(bits, self.store.dtype))
        return batch.to(self.dtype)

    def _produce(self, epoch: int, first: int, out: queue.Queue, stop: threading.Event) -> None:
        """Worker: batches first.. of the epoch, each a gather from a pre-read buffer.

        Two scratch buffers alternate: a reader thread fills buffer k+1 while this
        thread cuts the batches of buffer k, so reading and gathering overlap.
        """
        put = functools.partial(_put_unless_stopped, out, stop)
        if first >= len(self):
            put(_END)
            return
        try:
            plan = self._plan(epoch)
            offsets = np.cumsum([0] + [sum(b - a for a, b in bs) for bs in plan])
            mapped = self._mapped()
            if mapped is None:
                scratch = self._take_scratch(int(np.diff(offsets).max()))
                fill = lambda k: (self._fill, epoch, k, plan[k], scratch[k % 2])  # noqa: E731
            else:  # rows straight from the page cache: no scratch, no read
                scratch = None
                fill = lambda k: (self._index, epoch, k, plan[k], mapped)  # noqa: E731
            if not self._cut_batches(first, offsets, len(plan), fill, put):
                return
            if scratch is not None:  # only after the reader thread has finished
                self._scratch_pool.append(scratch)
        except BaseException as err:
            put(err)
            return
        put(_END)

    def _cut_batches(
        self,
        first: int,
        offsets: np.ndarray,
        n_buffers: int,
        fill: Callable[[int], tuple],
        put: Callable[[Any], bool],
    ) -> bool:
        """Batches first.. cut from buffers read by `fill(k)` (buffer k holds the epoch's
        rows offsets[k]:offsets[k + 1]), each handed to `put`; False when the consumer
        stopped listening. Returns once the reader thread has finished."""
        k = int(np.searchsorted(offsets, first * self.batch_size, side="right")) - 1
        with (
            ThreadPoolExecutor(1, thread_name_prefix="ActivationLoader-read") as reader,
            ThreadPoolExecutor(
                max(1, GATHER_THREADS), thread_name_prefix="ActivationLoader-gather"
            ) as pool,
        ):
            nxt = reader.submit(*fill(k))
            buf, perm = nxt.result()
            if k + 1 < n_buffers:
                nxt = reader.submit(*fill(k + 1))
            for i in range(first, len(self)):
                lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, self.n_rows)
                batch, bits = self._new_batch(hi - lo)
                while lo < hi:
                    if lo == offsets[k + 1]:  # buffer k is spent: its scratch is free
                        k += 1
                        buf, perm = nxt.result()
                        if k + 1 < n_buffers:
                            nxt = reader.submit(*fill(k + 1))
                    take = min(hi, int(offsets[k + 1])) - lo
                    at = lo - int(offsets[k])
                    dest = bits[lo - i * self.batch_size : lo - i * self.batch_size + take]
                    if perm is None:
                        np.copyto(dest, buf[at : at + take])
                    else:  # one gather: the buffer's permutation, cut into batches
                        _gather(buf, perm[at : at + take], dest, pool)
                    lo += take
                if not put(self._on_host(batch, bits)):
                    return False
        return True

    def _mapped(self) -> np.ndarray | None:
        """The point's rows mapped over the page cache, when the store offers that (else None):
        loader rows must lie inside the map, i.e. it was made after they were committed."""
        row_map = getattr(self.store, "row_map", None)
        mapped = row_map(self.point) if row_map is not None else None
        return mapped if mapped is not None and len(mapped) >= self.stop else None

    def _take_scratch(self, rows: int) -> list[np.ndarray]:
        """Two (rows, d) arrays of the stored dtype: a pooled pair, or a new one."""
        with contextlib.suppress(IndexError):
            pair = self._scratch_pool.pop()  # atomic: two iterators never share a pair
            if len(pair[0]) >= rows:
                return pair
        shape = (rows, self.store.d_model(self.point))
        return [np.empty(shape, self._stored_numpy) for _ in range(2)]


def _put_unless_stopped(out: queue.Queue, stop: threading.Event, item: Any) -> bool:
    """Put `item` on `out`, waiting for room, unless `stop` is set first (then False)."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _gather(src: np.ndarray, idx: np.ndarray, dest: np.ndarray, pool: ThreadPoolExecutor) -> None:
    """`np.take(src, idx, axis=0, out=dest)`, cut into parts run on `pool` and here."""
    parts = min(GATHER_THREADS + 1, len(idx) // GATHER_PART_ROWS)
    if parts < 2:
        np.take(src, idx, axis=0, out=dest, mode="clip")
        return
    cuts = [len(idx) * j // parts for j in range(parts + 1)]
    pieces = [(idx[a:b], dest[a:b]) for a, b in itertools.pairwise(cuts)]
    others = [pool.submit(np.take, src, i, 0, d, "clip") for i, d in pieces[1:]]
    np.take(src, pieces[0][0], axis=0, out=pieces[0][1], mode="clip")
    for done in others:
        done.result()
