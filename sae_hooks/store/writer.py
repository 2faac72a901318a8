"""Stream activation rows into a zarr store from a background thread.

Commit protocol. The caller appends one *input batch* at a time (one model
forward's rows). A background thread buffers rows and writes whole storage units
(chunks, or shards when sharding) as soon as they fill; it never rewrites a row.
Then, at most once per `commit_interval` seconds and always on flush/close, it
commits: every input batch whose rows all lie below the written frontier is folded
into `committed_rows`, `committed_inputs` and the running statistics, in ONE
attribute write made after the data it covers. `committed_rows` therefore always
ends on an input-batch boundary, so a capture interrupted at any instant resumes
at input `committed_inputs`, rewriting rows from `committed_rows` on: nothing
lost, nothing doubled. Rows written past `committed_rows` (the start of a batch
that straddles a chunk, or batches awaiting the next commit) are garbage that a
resume overwrites; readers never see them. Arrays grow geometrically while
writing (a resize is a metadata write) and are cut to `committed_rows` on close.

On resume the first write starts mid-chunk; zarr rewrites that partial region
(read-modify-write of one chunk), after which writes are aligned again.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
import zarr

from sae_hooks.store import lock
from sae_hooks.store.layout import (
    BF16_ENCODING,
    DEFAULT_CHUNK_ROWS,
    DTYPES,
    META_ARRAYS,
    SCHEMA_VERSION,
    check_dtype,
    compressors_for,
    default_compressors,
    describe,
    nonfinite_rows,
    open_group,
    storage_to_numpy,
    to_storage,
)
from sae_hooks.store.reader import load_group

MODES = ("create", "resume", "overwrite")


@dataclass
class _Rows:
    """Rows of one or more input batches, converted for storage."""

    data: dict[str, np.ndarray]  # "acts/<point>" and META_ARRAYS -> rows
    n: int


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _explain(err: OSError, text: str) -> OSError:
    """An OSError of the same kind and errno as `err`, with `text` as its message."""
    try:
        return type(err)(err.errno, text) if err.errno is not None else type(err)(text)
    except TypeError:  # a subclass with another constructor
        return OSError(err.errno, text)


def _int64_rows(batch: Any, name: str, n: int) -> np.ndarray:
    value = getattr(batch, name, None)
    if value is None:
        raise TypeError(f"an activation batch needs a '{name}' attribute (int64, one per row)")
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if arr.shape != (n,):
        raise ValueError(f"batch.{name} has shape {arr.shape}, expected ({n},) (one per row)")
    return arr.astype(np.int64, copy=False)


class StoreWriter:
    """Append `ActivationBatch`-like objects (`acts`, `token_ids`, `doc_index`, `position`).

    mode: "create" (fails if a store exists), "overwrite", or "resume" (continue an
    interrupted or finished store from its last commit; `committed_inputs` tells the
    caller which input batch to feed next). Use as a context manager or call close().
    """

    def __init__(
        self,
        location: str | os.PathLike,
        *,
        mode: str = "create",
        points: list[str] | None = None,
        d_model: int | dict[str, int] | None = None,
        dtype: str | torch.dtype | None = None,
        model: str = "",
        source: str = "",
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        shard_chunks: int | None = None,
        compressors: Any = "auto",
        queue_size: int = 4,
        commit_interval: float = 1.0,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
        for name, value in [("chunk_rows", chunk_rows), ("queue_size", queue_size)] + (
            [("shard_chunks", shard_chunks)] if shard_chunks is not None else []
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(commit_interval, (int, float)) or not 0 <= commit_interval < math.inf:
            raise ValueError(f"commit_interval must be seconds >= 0, got {commit_interval!r}")
        self.commit_interval = commit_interval
        self.where = describe(location)
        if mode == "resume":
            self._group, attrs = load_group(location, "r+", storage_options)
            self._check_matches(attrs, points, d_model, dtype)
            lock.acquire(self._group, self.where)
        else:
            d = {p: d_model for p in points or []} if isinstance(d_model, int) else d_model
            attrs = {
                "schema_version": SCHEMA_VERSION,
                "model": model,
                "source": source,
                "points": list(points or []),
                "d_model": dict(d or {}),
                "dtype": check_dtype(dtype or "float32"),
                "chunk_rows": chunk_rows,
                "shard_rows": chunk_rows * shard_chunks if shard_chunks else None,
                "committed_rows": 0,
                "committed_inputs": 0,
                "stats": {},
                "created": _now(),
                "updated": _now(),
                lock.LOCK_ATTR: lock.holder_record(),
            }
            self._open_new(location, mode, storage_options, attrs)
        self.dtype: str = attrs["dtype"]
        self.points: list[str] = list(attrs["points"])
        self.d_model: dict[str, int] = dict(attrs["d_model"])
        self.chunk_rows = int(attrs["chunk_rows"])
        self._unit = int(attrs.get("shard_rows") or self.chunk_rows)  # rows per write
        self._compressors = (
            default_compressors(self.dtype)
            if compressors == "auto"
            else compressors_for(compressors, self.dtype)
            if compressors is None or isinstance(compressors, str)
            else compressors
        )
        self.committed_rows = int(attrs["committed_rows"])
        self.committed_inputs = int(attrs["committed_inputs"])
        self._sums = {
            p: np.asarray(s["mean"], np.float64) * s["count"] for p, s in attrs["stats"].items()
        }
        self._sq = {p: s["mean_sq_norm"] * s["count"] for p, s in attrs["stats"].items()}
        self._arrays: dict[str, zarr.Array] = {}
        if self.points and len(self.d_model) == len(self.points):
            # Nothing committed yet: (re)create the arrays, which a process killed while
            # creating them may have left half made.
            self._open_arrays(create=mode != "resume" or self.committed_rows == 0)
        # Writer-thread state: rows [committed_rows, _written) are on disk, uncommitted.
        self._written = self.committed_rows
        self._buffer: list[_Rows] = []
        self._buffered = 0
        # Input batches not yet committed: (end row, sum of rows, sum of squared norms).
        self._pending: deque[tuple[int, dict[str, np.ndarray], dict[str, float]]] = deque()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._last_commit = time.monotonic()
        self._closed = False
        self.rows_appended = 0
        self._thread = threading.Thread(target=self._run, name="StoreWriter", daemon=True)
        self._thread.start()

    # -- opening -------------------------------------------------------------------

    def _open_new(
        self, location: Any, mode: str, storage_options: dict | None, attrs: dict[str, Any]
    ) -> None:
        try:
            _, old = load_group(location, "r", storage_options)
        except (FileNotFoundError, ValueError):
            old = None
        if old is not None and mode == "create":
            raise FileExistsError(
                f"an activation store already exists at {self.where}; pass mode='resume' "
                "to continue it or mode='overwrite' to replace it"
            )
        if old is not None:
            lock.check_lock(old, self.where)
        try:
            self._group = open_group(
                location, "w" if mode == "overwrite" else "w-", storage_options, attrs
            )
        except OSError as err:
            text = f"cannot create an activation store at {self.where}: {err.strerror or err}"
            raise _explain(err, text) from err

    def _check_matches(self, attrs: dict, points: Any, d_model: Any, dtype: Any) -> None:
        """A resumed store must be continued with the settings it was started with."""
        if dtype is not None and check_dtype(dtype) != attrs["dtype"]:
            raise ValueError(
                f"store {self.where} holds {attrs['dtype']}, cannot resume it as {dtype}"
            )
        if points is not None and attrs["points"] and list(points) != attrs["points"]:
            raise ValueError(
                f"store {self.where} holds points {attrs['points']}, cannot resume with {points}"
            )
        stored = attrs["d_model"]
        if isinstance(d_model, int):
            d_model = dict.fromkeys(stored, d_model)
        for p, d in (d_model or {}).items():
            if p in stored and stored[p] != d:
                raise ValueError(
                    f"d_model mismatch for {p!r}: store {self.where} holds d_model="
                    f"{stored[p]}, got {d}"
                )

    def _open_arrays(self, create: bool) -> None:
        storage = DTYPES[self.dtype][0]
        for p in self.points:
            key = f"acts/{p}"
            if create:
                d = self.d_model[p]
                self._arrays[key] = self._group.create_array(
                    key,
                    shape=(0, d),
                    chunks=(self.chunk_rows, d),
                    shards=(self._unit, d) if self._unit != self.chunk_rows else None,
                    dtype=storage,
                    compressors=self._compressors,
                    fill_value=0,
                    overwrite=True,
                    attributes={"encoding": BF16_ENCODING} if self.dtype == "bfloat16" else {},
                )
            else:
                self._arrays[key] = self._group[key]
        for m in META_ARRAYS:
            if create:
                self._arrays[m] = self._group.create_array(
                    m,
                    shape=(0,),
                    chunks=(self.chunk_rows,),
                    shards=(self._unit,) if self._unit != self.chunk_rows else None,
                    dtype="int64",
                    compressors=compressors_for("zstd", "int64"),
                    fill_value=-2,
                    overwrite=True,
                )
            else:
                self._arrays[m] = self._group[m]
        if not create:  # drop uncommitted garbage; a resume rewrites from committed_rows
            for arr in self._arrays.values():
                arr.resize((self.committed_rows, *arr.shape[1:]))

    # -- caller side ---------------------------------------------------------------

    def append(self, batch: Any) -> None:
        """Queue one input batch's rows; blocks only while the queue is full."""
        self._check_open()
        acts = getattr(batch, "acts", None)
        if not isinstance(acts, dict) or not acts:
            raise TypeError(
                "append() takes an ActivationBatch-like object with acts: dict[point, (n, d)]"
            )
        if not self._arrays:
            self._init_points(acts)
        missing, extra = set(self.points) - set(acts), set(acts) - set(self.points)
        if missing or extra:
            raise ValueError(
                f"batch points {sorted(acts)} differ from the store's {self.points} "
                f"(missing {sorted(missing)}, unexpected {sorted(extra)})"
            )
        n = None
        data: dict[str, np.ndarray] = {}
        for p in self.points:
            x = acts[p]
            if x.ndim != 2 or x.shape[1] != self.d_model[p]:
                raise ValueError(
                    f"d_model mismatch for {p!r}: batch rows have shape {tuple(x.shape)}, "
                    f"the store holds (n, {self.d_model[p]})"
                )
            if n is not None and x.shape[0] != n:
                raise ValueError(f"acts[{p!r}] has {x.shape[0]} rows, other points have {n}")
            n = x.shape[0]
            data[f"acts/{p}"] = to_storage(x, self.dtype)
        self._refuse_nonfinite(data, n)
        for m in META_ARRAYS:
            data[m] = _int64_rows(batch, m, n)
        self._put(_Rows(data, n))
        self.rows_appended += n

    def _refuse_nonfinite(self, data: dict[str, np.ndarray], n: int) -> None:
        """NaN or inf rows would poison the statistics and any SAE trained on them."""
        counts = {}
        for p in self.points:
            bad = nonfinite_rows(data[f"acts/{p}"], self.dtype)
            if bad.any():
                counts[p] = (int(bad.sum()), int(bad.argmax()))
        if not counts:
            return
        found = "; ".join(f"{c} at {p!r} (first: row {i})" for p, (c, i) in counts.items())
        overflow = " (float16 holds at most +-65504)" if self.dtype == "float16" else ""
        raise ValueError(
            f"refused an input batch of {n} rows holding NaN or inf{overflow}: {found}. "
            f"Nothing of it was queued; the store at {self.where} keeps every batch "
            "appended before. Activations must be finite: check the model's dtype and inputs"
        )

    def _init_points(self, acts: dict) -> None:
        if self.points and set(self.points) != set(acts):
            raise ValueError(f"batch points {sorted(acts)} differ from the store's {self.points}")
        self.points = self.points or list(acts)
        self.d_model = {p: int(acts[p].shape[-1]) for p in self.points}
        self._group.update_attributes({"points": self.points, "d_model": self.d_model})
        self._open_arrays(create=True)

    def _put(self, item: Any) -> None:
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _raise_if_failed(self) -> None:
        if self._error is None:
            return
        err = self._error
        if isinstance(err, OSError) and not getattr(err, "_explained", False):
            # A full disk or a read-only location: say what it means for the store.
            text = (
                f"writing the activation store {self.where} failed: {err.strerror or err}. "
                f"It keeps its last committed state ({self.committed_rows} rows, "
                f"{self.committed_inputs} input batches); free space or fix permissions, "
                "then resume it (StoreWriter mode='resume'; capture_to_store resumes by default)"
            )
            explained = _explain(err, text)
            explained._explained = True
            explained.__cause__ = err
            self._error = err = explained
        raise err

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"StoreWriter for {self.where} is closed")
        self._raise_if_failed()

    def _wait(self, done: threading.Event) -> None:
        while not done.wait(0.1):
            self._raise_if_failed()
        self._raise_if_failed()

    def flush(self) -> None:
        """Write and commit every row appended so far (the tail may be a partial chunk)."""
        self._check_open()
        done = threading.Event()
        self._put(("flush", done))
        self._wait(done)

    def close(self) -> None:
        """Flush the tail, commit, release the lock. Re-raises a writer-thread failure."""
        if self._closed:
            return
        self._closed = True
        done = threading.Event()
        try:
            if self._error is None:
                self._put(("flush", done))
                self._wait(done)
        finally:
            self._queue.put(None)
            self._thread.join()
            try:
                if self._error is None:  # drop the spare capacity grown while writing
                    for arr in self._arrays.values():
                        arr.resize((self.committed_rows, *arr.shape[1:]))
                lock.release(self._group)
            except Exception as err:  # keep the writer thread's error, if any
                if self._error is None:
                    raise
                warnings.warn(f"could not release the lock on {self.where}: {err}", stacklevel=2)
        self._raise_if_failed()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # rows appended before the error are whole input batches: keep them
            self.close()
        except Exception as err:
            warnings.warn(f"closing {self.where} after an error failed too: {err}", stacklevel=2)

    # -- writer thread -------------------------------------------------------------

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain so the caller never blocks on a dead writer
            try:
                if isinstance(item, _Rows):
                    self._ingest(item)
                else:
                    self._write(self._buffered)
                    self._commit()
                    item[1].set()
            except BaseException as err:
                self._error = err

    def _ingest(self, rows: _Rows) -> None:
        sums, sq_norms = {}, {}
        for p in self.points:  # statistics of the rows exactly as stored, in float64
            x = storage_to_numpy(rows.data[f"acts/{p}"], self.dtype)
            sums[p] = x.sum(axis=0, dtype=np.float64)
            sq_norms[p] = float(np.einsum("ij,ij->i", x, x, dtype=np.float64).sum())
        self._buffer.append(rows)
        self._buffered += rows.n
        self._pending.append((self._written + self._buffered, sums, sq_norms))
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
        self._buffer = [_Rows({k: v[n:] for k, v in whole.items()}, rest)] if rest else []
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
        done, end = 0, self.committed_rows
        sums, sq = dict(self._sums), dict(self._sq)
        while self._pending and self._pending[0][0] <= self._written:
            end, batch_sums, batch_sq = self._pending.popleft()
            for p in self.points:
                sums[p] = sums.get(p, 0.0) + batch_sums[p]
                sq[p] = sq.get(p, 0.0) + batch_sq[p]
            done += 1
        self._last_commit = time.monotonic()
        if not done:
            return
        stats = {
            p: {
                "mean": (sums[p] / max(end, 1)).tolist(),
                "mean_sq_norm": sq[p] / max(end, 1),
                "count": end,
            }
            for p in self.points
        }
        # One metadata write: group.attrs.update() would write once per key, and a crash
        # between those writes would leave committed_rows and committed_inputs disagreeing.
        self._group.update_attributes(
            {
                "committed_rows": end,
                "committed_inputs": self.committed_inputs + done,
                "stats": stats,
                "updated": _now(),
            }
        )
        self.committed_rows, self.committed_inputs = end, self.committed_inputs + done
        self._sums, self._sq = sums, sq
