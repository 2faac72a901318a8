"""Append activation rows to a zarr store: the caller-side checks of StoreWriter.

Rows are checked here (points, shapes, finite values), converted for storage and
handed to the writer thread (sae_hooks.store.commit), which owns the commit
protocol: committed rows always end on an input-batch boundary, so a capture
interrupted at any instant resumes from `committed_inputs` with nothing lost and
nothing doubled.
"""

from __future__ import annotations

import os
import uuid
import warnings
from typing import Any

import numpy as np
import torch
import zarr

from sae_hooks.activations import ActivationBatch
from sae_hooks.store import lock
from sae_hooks.store.commit import CommitThread, EncodedRows, now
from sae_hooks.store.fingerprint import FINGERPRINT_ATTR, compare
from sae_hooks.store.layout import (
    BF16_ENCODING,
    DEFAULT_CHUNK_ROWS,
    DTYPES,
    GENERATION_ATTR,
    META_ARRAYS,
    SCHEMA_VERSION,
    check_dtype,
    check_location,
    compressors_for,
    default_compressors,
    describe,
    is_unborn,
    load_group,
    nonfinite_rows,
    open_group,
    to_storage,
)
from sae_hooks.store.overwrite import check_replaceable
from sae_hooks.store.settings import check_settings, check_sizes

#: zarr skips writing a chunk equal to its fill value; readers treat a missing chunk of
#: committed rows as damage, so every chunk is written (an all-zero one included).
WRITE_EVERY_CHUNK = {"write_empty_chunks": True}


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


def _point_list(points: Any) -> list[str] | None:
    """None, one point name, or a list of names: anything else is refused by name."""
    if points is None or isinstance(points, str):
        return None if points is None else [points]
    if not isinstance(points, (list, tuple)) or not all(isinstance(p, str) for p in points):
        raise TypeError(f"points must be a str or a list of str, got {points!r}")
    return list(points)


def _new_attrs(
    points: list[str] | None,
    d_model: int | dict[str, int] | None,
    dtype: str | torch.dtype | None,
    model: str,
    source: str,
    chunk_rows: int,
    shard_chunks: int | None,
    fingerprint: dict[str, Any] | None,
) -> dict[str, Any]:
    """The attributes of a store about to be created (written with its group, at once)."""
    d = {p: d_model for p in points or []} if isinstance(d_model, int) else d_model
    extra = {FINGERPRINT_ATTR: dict(fingerprint)} if fingerprint is not None else {}
    return {
        **extra,
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
        "partial_input_rows": 0,
        "stats": {},
        "created": now(),
        GENERATION_ATTR: uuid.uuid4().hex,  # this store, as opposed to one that replaces it
        "updated": now(),
        lock.LOCK_ATTR: lock.holder_record(),
    }


def _hold_store(where: str, storage_options: dict[str, Any] | None) -> None:
    """Take the store's lock file or object (store/lock.py); a location whose folder cannot
    be made is named as the place no store can be created."""
    try:
        lock.hold_store(where, storage_options)
    except OSError as err:
        text = f"cannot create an activation store at {where}: {err.strerror or err}"
        raise _explain(err, text) from err


def _pick_compressors(compressors: Any, dtype: str) -> Any:
    if compressors == "auto":
        return default_compressors(dtype)
    if compressors is None or isinstance(compressors, str):
        return compressors_for(compressors, dtype)
    return compressors


def _check_matches(where: str, attrs: dict, points: Any, d_model: Any, dtype: Any) -> None:
    """A resumed store must be continued with the settings it was started with."""
    if dtype is not None and check_dtype(dtype) != attrs["dtype"]:
        raise ValueError(f"store {where} holds {attrs['dtype']}, cannot resume it as {dtype}")
    if points is not None and attrs["points"] and list(points) != attrs["points"]:
        raise ValueError(
            f"store {where} holds points {attrs['points']}, cannot resume with {points}"
        )
    stored = attrs["d_model"]
    if isinstance(d_model, int):
        d_model = dict.fromkeys(stored, d_model)
    for p, d in (d_model or {}).items():
        if p in stored and stored[p] != d:
            raise ValueError(
                f"d_model mismatch for {p!r}: store {where} holds d_model={stored[p]}, got {d}"
            )


def _storage_rows(
    acts: dict, points: list[str], d_model: dict[str, int], dtype: str
) -> tuple[dict[str, np.ndarray], int]:
    """Each point's rows checked for shape and converted for storage; (data, rows)."""
    n = None
    data: dict[str, np.ndarray] = {}
    for p in points:
        x = acts[p]
        if x.ndim != 2 or x.shape[1] != d_model[p]:
            raise ValueError(
                f"d_model mismatch for {p!r}: batch rows have shape {tuple(x.shape)}, "
                f"the store holds (n, {d_model[p]})"
            )
        if n is not None and x.shape[0] != n:
            raise ValueError(f"acts[{p!r}] has {x.shape[0]} rows, other points have {n}")
        n = x.shape[0]
        data[f"acts/{p}"] = to_storage(x, dtype)
    return data, n


def _refuse_nonfinite(
    data: dict[str, np.ndarray], n: int, points: list[str], dtype: str, where: str
) -> None:
    """NaN or inf rows would poison the statistics and any SAE trained on them."""
    counts = {}
    for p in points:
        bad = nonfinite_rows(data[f"acts/{p}"], dtype)
        if bad.any():
            counts[p] = (int(bad.sum()), int(bad.argmax()))
    if not counts:
        return
    found = "; ".join(f"{c} at {p!r} (first: row {i})" for p, (c, i) in counts.items())
    overflow = " (float16 holds at most +-65504)" if dtype == "float16" else ""
    raise ValueError(
        f"refused an input batch of {n} rows holding NaN or inf{overflow}: {found}. "
        f"Nothing of it was queued; the store at {where} keeps every batch "
        "appended before. Activations must be finite: check the model's dtype and inputs"
    )


class StoreWriter:
    """Append `ActivationBatch`es (sae_hooks/activations.py; any object with its `acts`,
    `token_ids`, `doc_index`, `position` does).

    mode: "create" (fails if a store exists), "overwrite", or "resume" (continue an
    interrupted or finished store from its last commit; `committed_inputs` tells the
    caller which input batch to feed next, `partial_input_rows` how many of its rows
    are already stored). A folder left by a creation killed before its zarr.json is
    replaced in any mode. `fingerprint` (see sae_hooks.store.fingerprint) is recorded
    at creation and compared on resume. Use as a context manager or call close().
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
        fingerprint: dict[str, Any] | None = None,
    ) -> None:
        check_location(location)
        points = _point_list(points)
        check_settings(mode, chunk_rows, queue_size, shard_chunks, commit_interval)
        itemsize = DTYPES[check_dtype(dtype or "float32")][0].itemsize
        d = dict.fromkeys(points or [], d_model) if isinstance(d_model, int) else d_model
        check_sizes(chunk_rows, shard_chunks or 1, d or {}, itemsize)  # no 60 GiB buffer
        self.commit_interval = commit_interval
        self.where = describe(location)
        _hold_store(self.where, storage_options)  # before anything is read: one writer from here
        try:
            if mode == "resume" and is_unborn(location):
                mode = "overwrite"  # nothing of a store there: create it afresh
            if mode == "overwrite":
                check_replaceable(location, storage_options)  # a store, never a user's folder
            if mode == "resume":
                self._group, attrs = load_group(location, "r+", storage_options)
                _check_matches(self.where, attrs, points, d_model, dtype)
                if fingerprint is not None:
                    compare(attrs.get(FINGERPRINT_ATTR), fingerprint, self.where)
                lock.acquire(self._group, self.where)
            else:
                attrs = _new_attrs(
                    points, d_model, dtype, model, source, chunk_rows, shard_chunks, fingerprint
                )
                self._open_new(location, mode, storage_options, attrs)
                lock.held(self.where)
        except BaseException:
            lock.release_store(self.where)
            raise
        try:
            self._start(attrs, mode, compressors, commit_interval, queue_size)
        except BaseException:
            lock.forget(self.where)  # a later writer of this process may take the store
            lock.release_store(self.where)
            raise

    def _start(
        self, attrs: dict, mode: str, compressors: Any, commit_interval: float, queue_size: int
    ) -> None:
        """Open (or create) the arrays and start the writer thread."""
        self.dtype: str = attrs["dtype"]
        self._itemsize = DTYPES[self.dtype][0].itemsize
        self.points: list[str] = list(attrs["points"])
        self.d_model: dict[str, int] = dict(attrs["d_model"])
        self.chunk_rows = int(attrs["chunk_rows"])
        self._unit = int(attrs.get("shard_rows") or self.chunk_rows)  # rows per write
        self._compressors = _pick_compressors(compressors, self.dtype)
        self._arrays: dict[str, zarr.Array] = {}
        if self.points and len(self.d_model) == len(self.points):
            # Nothing committed yet: (re)create the arrays, which a process killed while
            # creating them may have left half made.
            committed = int(attrs["committed_rows"])
            self._open_arrays(create=mode != "resume" or committed == 0, keep_rows=committed)
        self._closed = False
        self.rows_appended = 0
        self._committer = CommitThread(
            self._group,
            self._arrays,
            unit=self._unit,
            attrs=attrs,
            commit_interval=commit_interval,
            queue_size=queue_size,
        )

    @property
    def committed_rows(self) -> int:
        """Rows readers see: the store ends on an input-batch boundary there."""
        return self._committer.committed_rows

    @property
    def committed_inputs(self) -> int:
        """Input batches wholly committed: a resumed capture feeds the next one."""
        return self._committer.committed_inputs

    @property
    def partial_input_rows(self) -> int:
        """Rows of input batch `committed_inputs` already committed (a cut at max_rows)."""
        return self._committer.partial_input_rows

    # -- opening -------------------------------------------------------------------

    def _open_new(
        self, location: Any, mode: str, storage_options: dict | None, attrs: dict[str, Any]
    ) -> None:
        try:
            _, old = load_group(location, "r", storage_options)
        except (FileNotFoundError, ValueError):
            old = None
        if old is None and is_unborn(location):
            mode = "overwrite"  # a folder left by a killed creation: nothing to keep
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

    def _open_arrays(self, create: bool, keep_rows: int = 0) -> None:
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
                    config=WRITE_EVERY_CHUNK,
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
                    config=WRITE_EVERY_CHUNK,
                    overwrite=True,
                )
            else:
                self._arrays[m] = self._group[m]
        if not create:  # drop uncommitted garbage; a resume rewrites from committed_rows
            for arr in self._arrays.values():
                arr.resize((keep_rows, *arr.shape[1:]))

    # -- caller side ---------------------------------------------------------------

    def append(
        self,
        batch: ActivationBatch,
        *,
        completes_input: bool = True,
        inputs_hash: str | None = None,
    ) -> None:
        """Queue one input batch's rows; blocks only while the queue is full.

        completes_input=False: these rows are the head of an input batch (a capture cut
        at max_rows); the commit records them in `partial_input_rows` and the next
        append (the batch's remaining rows) completes it. inputs_hash: the capture's
        hash of its input batches through this one (fingerprint.InputsChain), written
        with the commit that covers these rows.
        """
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
        data, n = _storage_rows(acts, self.points, self.d_model, self.dtype)
        _refuse_nonfinite(data, n, self.points, self.dtype, self.where)
        for m in META_ARRAYS:
            data[m] = _int64_rows(batch, m, n)
        self._committer.put(
            EncodedRows(data, n, completes_input, inputs_hash), self._raise_if_failed
        )
        self.rows_appended += n

    def _init_points(self, acts: dict) -> None:
        if self.points and set(self.points) != set(acts):
            raise ValueError(f"batch points {sorted(acts)} differ from the store's {self.points}")
        d_model = {p: int(acts[p].shape[-1]) for p in self.points or list(acts)}
        check_sizes(self.chunk_rows, self._unit // self.chunk_rows, d_model, self._itemsize)
        self.points = self.points or list(acts)
        self.d_model = d_model
        self._group.update_attributes({"points": self.points, "d_model": self.d_model})
        self._open_arrays(create=True)

    def _raise_if_failed(self) -> None:
        err = self._committer.error
        if err is None:
            return
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
            self._committer.error = err = explained
        raise err

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"StoreWriter for {self.where} is closed")
        self._raise_if_failed()

    def flush(self) -> None:
        """Write and commit every row appended so far (the tail may be a partial chunk)."""
        self._check_open()
        self._committer.flush(self._raise_if_failed)

    def close(self) -> None:
        """Flush the tail, commit, release the lock. Re-raises a writer-thread failure."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._committer.error is None:
                self._committer.flush(self._raise_if_failed)
        finally:
            self._committer.stop()
            try:
                if self._committer.error is None:  # drop the spare capacity grown while writing
                    for arr in self._arrays.values():
                        arr.resize((self.committed_rows, *arr.shape[1:]))
            finally:
                self._release_lock()
        self._raise_if_failed()

    def _release_lock(self) -> None:
        """Release even after a failure; if the disk cannot take the write, this process
        still forgets its hold, so a resume from it takes the lock over (lock.py)."""
        try:
            lock.release(self._group, self.where)
        except Exception as err:  # keep the writer thread's error, if any
            if self._committer.error is None:
                raise
            warnings.warn(
                f"could not release the lock on {self.where} ({err}); a resume from this "
                "process takes it over, another process sees it as held until this one ends",
                stacklevel=3,
            )

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # rows appended before the error are whole input batches: keep them
            self.close()
        except Exception as err:
            if err is not exc:  # the same writer error, raised again: already on its way
                warnings.warn(
                    f"closing {self.where} after an error failed too: {err}", stacklevel=2
                )
