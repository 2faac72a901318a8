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

Streams (`streams.py`): the epoch's shuffled chunks are cut into S equal runs of rows
(a chunk is split only where one stream ends), each with its own buffers, and a batch
is the S streams' parts side by side; `read_share(rank, N)` makes the loader read and
yield only streams rank, rank + N, ..., so N processes read disjoint rows (sharing at
most S - 1 chunks an epoch) and together see the one-process batches. With S streams each buffer
holds ceil(buffer_chunks / S) chunks, so a batch still mixes about `buffer_chunks`
chunks and one process holds about as much memory as with one stream.
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
from sae_hooks.store.streams import (
    StreamCursor,
    check_streams,
    chunk_blocks,
    chunk_bounds,
    default_streams,
    group,
    pieces_rows,
    split_streams,
)

SPLITS = ("train", "val")
#: Chunks of a buffer read at once (codecs release the GIL); a store's `read_threads` wins.
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

    `streams` (S, see the module docstring): None picks `default_streams` for a
    shuffled loader that drops the last short batch (1 otherwise); it depends on
    the store, the batch size and buffer_chunks, never on the number of processes.
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
        streams: int | None = None,
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
        self._read_threads = getattr(self.store, "read_threads", None) or READ_THREADS

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
        self._blocks = chunk_blocks(chunk_bounds(self.store), chunk, self.start, self.stop)
        self._explicit_streams = streams is not None
        self.streams = self._default_streams() if streams is None else streams
        check_streams(self.streams, batch_size, 1, drop_last)
        self.rank, self.world, self.epoch = 0, 1, 0
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
            f"batch_size={self.batch_size}, streams={self.streams}, epoch={self.epoch}, "
            f"batch={self._batch}/{len(self)})"
        )

    def _default_streams(self) -> int:
        """`default_streams` for a shuffled loader that drops the last short batch, else 1."""
        if not (self.shuffle and self.drop_last):
            return 1
        return default_streams(len(self._blocks), self.batch_size, self.buffer_chunks)

    def read_share(self, rank: int, world: int, streams: int | None = None) -> ActivationLoader:
        """From now on read and yield only rank `rank`'s share of every batch (batch_size /
        world rows): streams rank, rank + world, ...; with one stream, each batch read
        whole and rows [rank * b, (rank + 1) * b) kept. `streams`, if given, sets S.
        Positions stay global batch indices. Returns the loader itself."""
        if streams is not None:
            check_streams(streams, self.batch_size, world, self.drop_last)
            self.streams, self._explicit_streams = streams, True
        check_streams(self.streams, self.batch_size, world, self.drop_last)
        if not 0 <= rank < world or self.batch_size % world:
            raise ValueError(
                f"rank {rank} of {world}: needs 0 <= rank < world and world dividing "
                f"batch_size={self.batch_size}"
            )
        self.rank, self.world = rank, world
        return self

    # -- resume --------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self._batch,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "split": self.split,
            "rows": [self.start, self.stop],
            "streams": self.streams,
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
        saved = int(state.get("streams", 1))  # a position saved before streams: one stream
        if saved != self.streams:
            if self._explicit_streams:
                raise ValueError(
                    f"cannot resume: the saved position counts batches of {saved} streams, "
                    f"this loader reads {self.streams}; set streams={saved} "
                    "(TrainConfig.loader_streams) to resume it"
                )
            check_streams(saved, self.batch_size, self.world, self.drop_last)
            self.streams = saved
        self.epoch, self._batch = int(state["epoch"]), int(state["batch"])

    # -- iteration -----------------------------------------------------------------

    def __iter__(self) -> Iterator[torch.Tensor]:
        """The rest of the current epoch; on exhaustion the epoch counter advances."""
        epoch, start = self.epoch, self._batch
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        put = functools.partial(_put_unless_stopped, out, stop)
        worker = threading.Thread(
            target=self._produce, args=(epoch, start, put), name="ActivationLoader"
        )
        worker.daemon = True
        worker.start()
        try:
            for i in range(start, len(self)):
                batch = out.get()
                if isinstance(batch, BaseException):
                    raise batch
                self._batch = i + 1
                if self.streams == 1 and self.world > 1:  # one stream: keep this rank's slice
                    b = len(batch) // self.world
                    batch = batch[self.rank * b : (self.rank + 1) * b]
                yield batch.to(self.device, non_blocking=self._pin).to(self.dtype)
            self.epoch, self._batch = epoch + 1, 0
        finally:  # the worker sees `stop` within one put timeout; nothing to drain
            stop.set()
            worker.join()

    def batches(self) -> Iterator[torch.Tensor]:
        """Batches forever, epoch after epoch (each epoch reshuffled)."""
        while True:
            yield from self

    def first_batch(self) -> torch.Tensor:
        """The next batch, read without reading ahead (only the buffers it draws from);
        the position does not move. For a sample."""
        got: list[Any] = []

        def keep(item: Any) -> bool:
            got.append(item)
            return False

        self._produce(self.epoch, self._batch, keep, read_ahead=False)
        if isinstance(got[0], BaseException):
            raise got[0]
        return got[0].to(self.device).to(self.dtype)

    def _plan(self, epoch: int) -> list[list[list[tuple[int, int]]]]:
        """This epoch's streams, each a list of buffers of (start, stop) row pieces."""
        order = np.arange(len(self._blocks))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        blocks = [self._blocks[i] for i in order]
        if self.streams == 1:
            return [group(blocks, self.buffer_chunks)]
        rows = len(self) * (self.batch_size // self.streams)
        per_buffer = -(-self.buffer_chunks // self.streams)
        return [group(p, per_buffer) for p in split_streams(blocks, self.streams, rows)]

    def _mine(self) -> list[int]:
        """The streams this loader reads: rank, rank + world, ... (all of one stream)."""
        return [0] if self.streams == 1 else list(range(self.rank, self.streams, self.world))

    def _buffer_key(self, epoch: int, stream: int, k: int) -> list[int]:
        """The seed of buffer k's row permutation (one stream: as before streams)."""
        return [self.seed, epoch, k] if self.streams == 1 else [self.seed, epoch, k, stream]

    def _fill(
        self, key: list[int], blocks: list[tuple[int, int]], scratch: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Read buffer k's chunks into `scratch` (no temporary) and draw its row permutation."""
        ends = np.cumsum([0] + [b - a for a, b in blocks])
        end = int(ends[-1])
        dests = [scratch[lo:hi] for lo, hi in itertools.pairwise(ends)]
        if len(blocks) > 1 and self._read_threads > 1:  # decompression releases the GIL
            with ThreadPoolExecutor(
                min(self._read_threads, len(blocks)), thread_name_prefix="ActivationLoader-chunk"
            ) as ex:
                starts, stops = zip(*blocks, strict=True)
                list(ex.map(self._read_into, starts, stops, dests))  # raises a read's error
        else:
            for (a, b), o in zip(blocks, dests, strict=True):
                self._read_into(a, b, o)
        self._check_unchanged()  # after the reads: these rows are the opened store's
        perm = None
        if self.shuffle:
            perm = np.random.default_rng(key).permutation(end)
        return scratch[:end], perm

    def _index(
        self, key: list[int], blocks: list[tuple[int, int]], rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Buffer k over mapped rows: nothing to read, only the rows' indices in batch order.

        The same rows in the same order as `_fill` (the same permutation), so a batch
        is identical whichever path cuts it.
        """
        self._check_unchanged()
        order = np.concatenate([np.arange(a, b) for a, b in blocks])
        if self.shuffle:
            order = order[np.random.default_rng(key).permutation(len(order))]
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

    def _produce(
        self, epoch: int, first: int, put: Callable[[Any], bool], *, read_ahead: bool = True
    ) -> None:
        """Worker: batches first.. of the epoch (this loader's streams side by side), each
        a gather per stream from a pre-read buffer, handed to `put`.

        Per stream, two scratch buffers alternate: the reader pool fills buffer k+1
        while this thread cuts the batches of buffer k, so reading and gathering overlap.
        """
        if first >= len(self):
            put(_END)
            return
        try:
            plan, mine = self._plan(epoch), self._mine()
            mapped = self._mapped()
            scratch = None
            if mapped is None:  # else rows straight from the page cache: no scratch, no read
                rows = max(pieces_rows(buf) for s in mine for buf in plan[s])
                scratch = self._take_scratch(rows, 2 * len(mine))
            cursors = [
                (s, self._filler(epoch, s, plan[s], mapped, scratch, 2 * j))
                for j, s in enumerate(mine)
            ]
            if not self._cut_batches(first, plan, cursors, put, read_ahead):
                return
            if scratch is not None:  # only after the reader threads have finished
                self._scratch_pool.append(scratch)
        except BaseException as err:
            put(err)
            return
        put(_END)

    def _filler(
        self,
        epoch: int,
        stream: int,
        buffers: list[list[tuple[int, int]]],
        mapped: np.ndarray | None,
        scratch: list[np.ndarray] | None,
        first_scratch: int,
    ) -> Callable[[int], tuple]:
        """k -> the call that reads buffer k of `stream` (into its alternating scratch)."""
        if scratch is None:
            return lambda k: (self._index, self._buffer_key(epoch, stream, k), buffers[k], mapped)
        at = first_scratch
        return lambda k: (
            self._fill,
            self._buffer_key(epoch, stream, k),
            buffers[k],
            scratch[at + k % 2],
        )

    def _cut_batches(
        self,
        first: int,
        plan: list[list[list[tuple[int, int]]]],
        fillers: list[tuple[int, Callable[[int], tuple]]],
        put: Callable[[Any], bool],
        read_ahead: bool,
    ) -> bool:
        """Batches first.. cut from this loader's streams (stream s gives rows
        [i * part, (i + 1) * part) of its shuffled buffers to batch i), each handed to
        `put`; False when the consumer stopped listening. Returns once the reads are done."""
        part = self.batch_size // self.streams
        with (
            ThreadPoolExecutor(
                max(1, min(self._read_threads, len(fillers))),
                thread_name_prefix="ActivationLoader-read",
            ) as reader,
            ThreadPoolExecutor(
                max(1, GATHER_THREADS), thread_name_prefix="ActivationLoader-gather"
            ) as pool,
        ):
            gather = functools.partial(_gather, pool=pool)
            cursors = [
                StreamCursor(
                    [pieces_rows(b) for b in plan[s]], fill, reader, gather, read_ahead=read_ahead
                )
                for s, fill in fillers
            ]
            for cursor in cursors:
                cursor.seek(first * part)
            for i in range(first, len(self)):
                lo = i * part
                sizes = [min(lo + part, int(c.offsets[-1])) - lo for c in cursors]
                batch, bits = self._new_batch(sum(sizes))
                at = 0
                for cursor, n in zip(cursors, sizes, strict=True):
                    cursor.cut(lo, lo + n, bits[at : at + n])
                    at += n
                if not put(self._on_host(batch, bits)):
                    return False
        return True

    def _mapped(self) -> np.ndarray | None:
        """The point's rows mapped over the page cache, when the store offers that (else None):
        loader rows must lie inside the map, i.e. it was made after they were committed."""
        row_map = getattr(self.store, "row_map", None)
        mapped = row_map(self.point) if row_map is not None else None
        return mapped if mapped is not None and len(mapped) >= self.stop else None

    def _take_scratch(self, rows: int, count: int) -> list[np.ndarray]:
        """`count` (rows, d) arrays of the stored dtype: a pooled set, or a new one."""
        with contextlib.suppress(IndexError):
            arrays = self._scratch_pool.pop()  # atomic: two iterators never share a set
            if len(arrays) >= count and len(arrays[0]) >= rows:
                return arrays
        shape = (rows, self.store.d_model(self.point))
        return [np.empty(shape, self._stored_numpy) for _ in range(count)]


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
