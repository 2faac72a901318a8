"""Shuffled, prefetched training batches from an activation store.

Random single-row reads are 50-100x slower than chunk reads, so shuffling is
two-level: each epoch permutes the store's chunks, groups them into buffers of
`buffer_chunks` chunks, and permutes the rows inside each buffer. An epoch is a
fixed sequence of batches cut from the concatenation of the shuffled buffers, so
batch i of epoch e is a pure function of (seed, e, i): a resumed loader yields
exactly the batches an uninterrupted one would have.

Split: validation is the last `val_fraction` of the committed rows (rounded up),
training the rows before it. Rows are stored document-major, so the two splits
share at most the one document that straddles the boundary.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from sae_hooks.store.interface import StoreReader
from sae_hooks.store.layout import storage_to_torch
from sae_hooks.store.open import open_store

SPLITS = ("train", "val")
_END = object()


class ActivationLoader:
    """Iterable of (batch_size, d) tensors of one hook point; one `iter()` is one epoch."""

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
        dtype: torch.dtype = torch.float32,
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
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch dtype, got {dtype}")
        self.point, self.batch_size, self.split = point, batch_size, split
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.device, self.dtype = torch.device(device), dtype
        self.buffer_chunks, self.prefetch = buffer_chunks, prefetch
        self._pin = self.device.type == "cuda" and torch.cuda.is_available()

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
                yield batch.to(self.device, non_blocking=self._pin)
            self.epoch, self._batch = epoch + 1, 0
        finally:
            stop.set()
            while worker.is_alive():
                with contextlib.suppress(queue.Empty):
                    out.get(timeout=0.05)
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

    def _load(self, epoch: int, k: int, blocks: list[tuple[int, int]]) -> torch.Tensor:
        raw = [self.store.read_raw(self.point, a, b) for a, b in blocks]
        rows = storage_to_torch(np.concatenate(raw), self.store.dtype).to(self.dtype)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch, k])
            rows = rows[torch.from_numpy(rng.permutation(len(rows)))]
        return rows

    def _produce(self, epoch: int, first: int, out: queue.Queue, stop: threading.Event) -> None:
        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            plan = self._plan(epoch)
            offsets = np.cumsum([0] + [sum(b - a for a, b in bs) for bs in plan])
            pos = first * self.batch_size
            k = int(np.searchsorted(offsets, pos, side="right")) - 1
            buf, cursor = None, pos - int(offsets[k])
            for i in range(first, len(self)):
                need = min(self.batch_size, self.n_rows - i * self.batch_size)
                parts = []
                while need:
                    if buf is None:
                        buf = self._load(epoch, k, plan[k])
                    elif cursor == len(buf):
                        k, cursor = k + 1, 0
                        buf = self._load(epoch, k, plan[k])
                    take = min(need, len(buf) - cursor)
                    parts.append(buf[cursor : cursor + take])
                    cursor += take
                    need -= take
                # A slice of a freshly permuted buffer: no other batch shares its rows.
                batch = torch.cat(parts) if len(parts) > 1 else parts[0]
                if not put(batch.pin_memory() if self._pin else batch):
                    return
        except BaseException as err:
            put(err)
            return
        put(_END)
