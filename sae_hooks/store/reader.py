"""Read one activation store: committed rows, per-point statistics, integrity check.

Reads never return zarr's fill value for data that should be there: the stored
units (chunks, or shards) covering a read are checked against a listing of the
array's stored keys, taken once per array and refreshed only when a unit seems
missing, so a deleted chunk raises StoreDamagedError instead of reading as zeros.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from sae_hooks.store.chunk_files import raw_chunk_files, read_raw_rows
from sae_hooks.store.interface import Damage, PointStats, StoreChangedError, StoreDamagedError
from sae_hooks.store.layout import (
    DTYPES,
    META_ARRAYS,
    check_out,
    describe,
    generation,
    is_url,
    load_group,
    read_group_attrs,
    storage_to_numpy,
    storage_to_torch,
)
from sae_hooks.store.mapped import map_files

__all__ = ["ActivationStore", "Damage", "PointStats", "StoreDamagedError"]

VERIFY_HINT = "store.verify() lists every damaged chunk; capture again with overwrite=True"
#: Chunk requests worth having in flight at once from an object store: a reading thread
#: there mostly waits on a request's latency and transfer, not on a core.
REMOTE_READ_THREADS = 16


class ActivationStore:
    """Read-only view of a store. Rows past `committed_rows` do not exist here."""

    def __init__(
        self, location: str | os.PathLike, *, storage_options: dict[str, Any] | None = None
    ) -> None:
        self.location = location
        self._storage_options = storage_options
        self.refresh()

    def refresh(self) -> None:
        """Re-read the attributes, e.g. to see rows a running capture committed since."""
        self._group, self.attrs = load_group(self.location, "r", self._storage_options)
        self._arrays: dict[str, zarr.Array] = {}
        self._stored_units: dict[str, set[int]] = {}  # array key -> unit indices on disk
        self._row_maps: dict[str, np.ndarray] = {}  # point -> its committed rows, mapped

    def check_unchanged(self) -> None:
        """Raise StoreChangedError if the store at `location` is no longer the one opened
        (replaced by an overwrite, removed): one small metadata read, made by the loader
        after every buffer it reads, so no row of another capture is used unnoticed."""
        seen = generation(self.attrs)
        try:
            now = generation(read_group_attrs(self._group))
        except Exception as err:  # removed, or mid-replacement
            now, why = None, f"its metadata cannot be read ({type(err).__name__}: {err})"
        else:
            why = f"generation {seen}, now {now}"
        if now != seen:
            where = describe(self.location)
            raise StoreChangedError(
                f"store {where} changed while it was being read ({why}): it was replaced or "
                "removed, e.g. by a capture with --overwrite. Rows read after that would "
                "come from another capture; start again on the store as it is now",
                store=where,
            )

    def __repr__(self) -> str:
        return (
            f"ActivationStore({describe(self.location)!r}, n_rows={self.n_rows}, "
            f"points={self.points}, dtype={self.dtype!r})"
        )

    def __len__(self) -> int:
        return self.n_rows

    @property
    def n_rows(self) -> int:
        return int(self.attrs.get("committed_rows", 0))

    @property
    def committed_inputs(self) -> int:
        return int(self.attrs.get("committed_inputs", 0))

    @property
    def read_threads(self) -> int | None:
        """Chunks worth reading at once: REMOTE_READ_THREADS on an object store (URL),
        None on local disk, where decoding on the cores bounds it (the reader's choice)."""
        return REMOTE_READ_THREADS if is_url(self.location) else None

    @property
    def points(self) -> list[str]:
        return list(self.attrs.get("points", []))

    @property
    def dtype(self) -> str:
        return self.attrs["dtype"]

    @property
    def model(self) -> str:
        return self.attrs.get("model", "")

    @property
    def source(self) -> str:
        return self.attrs.get("source", "")

    def _check_point(self, point: str) -> str:
        if point not in self.points:
            raise KeyError(f"hook point {point!r} is not in this store; stored: {self.points}")
        return point

    def d_model(self, point: str) -> int:
        d = self.attrs.get("d_model", {}).get(self._check_point(point))
        if d is None:
            raise ValueError(
                f"store {describe(self.location)} has no rows for {point!r} yet, so its width "
                "is not known; capture into it first"
            )
        return int(d)

    def stats(self, point: str) -> PointStats:
        s = self.attrs.get("stats", {}).get(self._check_point(point))
        if not s or not s.get("count"):
            raise ValueError(f"store has no committed rows for {point!r}, so no statistics yet")
        return PointStats(torch.tensor(s["mean"], dtype=torch.float32), float(s["mean_sq_norm"]))

    def _damaged(self, key: str, rows: tuple[int, int], what: str) -> StoreDamagedError:
        where = describe(self.location)
        return StoreDamagedError(
            f"store {where}: rows [{rows[0]}, {rows[1]}) of {key} cannot be read: {what}; "
            + VERIFY_HINT,
            store=where,
            array=key,
            rows=rows,
        )

    def array(self, name: str) -> zarr.Array:
        """The zarr array `acts/<point>` (give the point) or a row-metadata array.

        Checked against the attributes: it must hold the committed rows, at the width
        `d_model` says. Missing while no row is committed, it raises KeyError.
        """
        key = name if name in META_ARRAYS else f"acts/{self._check_point(name)}"
        if key in self._arrays:
            return self._arrays[key]
        try:
            arr = self._group[key]
        except KeyError:
            if self.n_rows == 0:
                raise
            raise self._damaged(key, (0, self.n_rows), "the array is missing") from None
        except Exception as err:  # a garbled array zarr.json
            raise self._damaged(
                key, (0, self.n_rows), f"its metadata ({key}/zarr.json) is unreadable ({err})"
            ) from err
        if arr.shape[0] < self.n_rows:
            raise self._damaged(
                key,
                (arr.shape[0], self.n_rows),
                f"committed_rows={self.n_rows} but the array holds {arr.shape[0]} rows",
            )
        if key != name and arr.shape[1:] != (self.d_model(name),):
            raise self._damaged(
                key,
                (0, self.n_rows),
                f"the attribute d_model={self.d_model(name)} disagrees with the array's "
                f"rows of width {arr.shape[1:]}",
            )
        self._arrays[key] = arr
        return arr

    def chunk_rows(self, point: str) -> int:
        """Rows per stored chunk: the unit of efficient reads."""
        if self.n_rows == 0 and not self._has_array(point):
            return int(self.attrs.get("chunk_rows") or 1)
        return int(self.array(point).chunks[0])

    def _has_array(self, name: str) -> bool:
        key = name if name in META_ARRAYS else f"acts/{self._check_point(name)}"
        try:
            self.array(name)
        except KeyError:
            return key in self._arrays
        return True

    def _empty(self, name: str) -> np.ndarray:
        """Zero rows of `name` (a store before its first batch reads as empty)."""
        if name in META_ARRAYS:
            return np.empty((0,), np.int64)
        d = self.attrs.get("d_model", {}).get(name, 0)
        return np.empty((0, d), DTYPES[self.dtype][0])

    def _bounds(self, start: int, stop: int | None) -> tuple[int, int]:
        stop = self.n_rows if stop is None else stop
        if not 0 <= start <= stop <= self.n_rows:
            raise IndexError(f"rows [{start}, {stop}) outside the {self.n_rows} committed rows")
        return start, stop

    def read_raw(
        self, point: str, start: int = 0, stop: int | None = None, *, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Rows exactly as stored (bfloat16 as uint16 bits); into `out` when given (no temporary)."""
        start, stop = self._bounds(start, stop)
        return self._read(self._check_point(point), start, stop, out)

    def _read(self, name: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        if start == stop and self.n_rows == 0 and not self._has_array(name):
            return self._empty(name) if out is None else out
        arr = self.array(name)
        label = name if name in META_ARRAYS else f"acts/{name}"
        if out is not None:
            check_out(out, (stop - start, *arr.shape[1:]), arr.dtype)
        self._check_stored(label, arr, start, stop)  # also before the chunk-file fast path
        try:
            if out is not None:
                if not self._read_chunk_files(arr, start, stop, out):
                    buffer = default_buffer_prototype().nd_buffer.from_numpy_array(out)
                    arr.get_basic_selection(slice(start, stop), out=buffer)
                return out
            return arr[start:stop]
        except Exception as err:  # a chunk that does not decode: name it and the way out
            raise self._damaged(
                label, (start, stop), f"a stored chunk is damaged ({type(err).__name__}: {err})"
            ) from err

    def _chunk_file(self, arr: zarr.Array) -> Callable[[int], str] | None:
        """Chunk index -> file path where a chunk file is the rows' raw bytes; else None."""
        return None if is_url(self.location) else raw_chunk_files(arr)

    def _read_chunk_files(self, arr: zarr.Array, start: int, stop: int, out: np.ndarray) -> bool:
        """Raw chunk files read straight into `out` (see `chunk_files.read_raw_rows`)."""
        chunk_file = self._chunk_file(arr)
        return chunk_file is not None and read_raw_rows(arr, chunk_file, start, stop, out)

    def row_map(self, point: str) -> np.ndarray | None:
        """The committed rows of `point` as a read-only array over the chunk files, or None.

        Memory-mapped (`sae_hooks.store.mapped`): indexing it reads the page cache
        directly, so a gather from it is the rows' only copy. Only for layouts whose
        chunk files are the raw rows (uncompressed, unsharded, local, full-size
        files); None for any other, and callers read with `read_raw` instead. The
        map covers the rows committed when it is made; `refresh()` forgets it.
        """
        n = self.n_rows
        if n == 0:
            return None
        cached = self._row_maps.get(point)
        if cached is not None and len(cached) == n:
            return cached
        arr = self.array(point)
        chunk_file = self._chunk_file(arr)
        if chunk_file is None:
            return None
        self._check_stored(f"acts/{point}", arr, 0, n)  # a missing chunk raises, as a read does
        rows = arr.metadata.chunk_grid.chunk_shape[0]
        row_bytes = arr.dtype.itemsize * int(np.prod(arr.shape[1:]))
        paths = [chunk_file(i) for i in range(-(-n // rows))]
        mapped = map_files(paths, rows * row_bytes, arr.dtype, tuple(arr.shape[1:]))
        if mapped is None:
            return None
        self._row_maps[point] = mapped[:n]
        return mapped[:n]

    def _check_stored(self, label: str, arr: zarr.Array, start: int, stop: int) -> None:
        """Raise if a stored unit under rows [start, stop) is missing (it would read as
        the fill value). One listing per array; a unit not in it is looked up again."""
        if start == stop:
            return
        unit = arr.metadata.chunk_grid.chunk_shape[0]
        needed = range(start // unit, (stop - 1) // unit + 1)
        stored = self._stored_units.get(label)
        if stored is not None and all(i in stored for i in needed):
            return
        stored = self._stored_units[label] = _stored_units(arr)
        missing = [i for i in needed if i not in stored]
        if missing:
            i = missing[0]
            rows = (i * unit, min((i + 1) * unit, self.n_rows))
            raise self._damaged(
                label, rows, f"its stored chunk {i} (rows {rows[0]}..{rows[1]}) is missing"
            )

    def read(self, point: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows as numpy; bfloat16 is widened exactly to float32 (numpy has no bfloat16)."""
        return storage_to_numpy(self.read_raw(point, start, stop), self.dtype)

    def read_tensor(self, point: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows as a CPU tensor in the stored dtype (torch.bfloat16 for bfloat16 stores)."""
        return storage_to_torch(self.read_raw(point, start, stop), self.dtype)

    def _meta(self, name: str, start: int, stop: int | None) -> np.ndarray:
        start, stop = self._bounds(start, stop)
        return self._read(name, start, stop)

    def token_ids(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._meta("token_ids", start, stop)

    def doc_index(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._meta("doc_index", start, stop)

    def position(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._meta("position", start, stop)

    def verify(self) -> list[Damage]:
        """Read every stored chunk of the committed rows; report the damaged or missing ones.

        Never raises for damage: a partial store is still useful, so the caller decides.
        Missing chunks would silently read as zeros, hence the explicit existence check;
        blosc decodes some truncated frames without complaint, hence the size check.
        Without a checksum codec (zarr's crc32c needs google-crc32c), a bit flip inside
        an uncompressed chunk of the right size cannot be seen.
        """
        damaged: list[Damage] = []
        if self.n_rows == 0:
            return damaged  # nothing committed: nothing to be damaged
        for name in [*self.points, *META_ARRAYS]:
            try:
                arr = self.array(name)
            except StoreDamagedError as err:
                damaged.append(Damage(err.array, 0, err.rows, str(err)))
                continue
            unit = arr.metadata.chunk_grid.chunk_shape[0]  # the shard when sharded
            store, prefix = arr.store_path.store, arr.store_path.path
            blosc = any(isinstance(c, BloscCodec) for c in arr.metadata.codecs)
            for i, start in enumerate(range(0, self.n_rows, unit)):
                stop = min(start + unit, self.n_rows)
                coords = (i,) + (0,) * (arr.ndim - 1)
                key = f"{prefix}/{arr.metadata.encode_chunk_key(coords)}".lstrip("/")
                label = name if name in META_ARRAYS else f"acts/{name}"
                try:
                    raw = sync(store.get(key, prototype=default_buffer_prototype()))
                    if raw is None:
                        raise FileNotFoundError(f"chunk {key} is missing")
                    if blosc:
                        _check_blosc_frame(raw.to_bytes())
                    arr[start:stop]
                except Exception as err:  # any decode failure is damage to report
                    damaged.append(Damage(label, i, (start, stop), f"{type(err).__name__}: {err}"))
        return damaged


def _stored_units(arr: zarr.Array) -> set[int]:
    """Row indices of the stored units (chunks or shards) of `arr`, from one listing."""
    store, prefix = arr.store_path.store, arr.store_path.path.rstrip("/")

    async def keys() -> list[str]:
        return [k async for k in store.list_prefix(f"{prefix}/" if prefix else "")]

    found = set()
    for key in sync(keys()):
        tail = key[len(prefix) :].lstrip("/")
        if tail == "zarr.json":
            continue
        parts = tail.replace(".", "/").split("/")
        if len(parts) >= 2 and parts[0] == "c" and parts[1].isdigit():
            found.add(int(parts[1]))
    return found


def _check_blosc_frame(frame: bytes) -> None:
    """Raise if a blosc frame's header disagrees with its stored length."""
    if len(frame) < 16:
        raise ValueError(f"blosc frame of {len(frame)} bytes is shorter than its header")
    cbytes = struct.unpack_from("<I", frame, 12)[0]  # blosc1 header: bytes 12-15 = cbytes
    if cbytes != len(frame):
        raise ValueError(f"blosc frame truncated: header says {cbytes} bytes, stored {len(frame)}")
