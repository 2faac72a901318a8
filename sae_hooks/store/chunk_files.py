"""Direct access to a store array's chunk files when each file is the rows' raw bytes.

For uncompressed, unsharded chunks on a local disk in this machine's byte order,
reading the files straight into a destination skips zarr's intermediate bytes
object and its copy (about half of a read's cost, bench/bench_store.py), and the
files can be memory-mapped (`mapped.py`). Anything else (a codec, sharding, a
remote store, the other byte order) goes through zarr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import numpy as np
import zarr
from zarr.codecs import BytesCodec
from zarr.codecs.bytes import Endian


def raw_chunk_files(arr: zarr.Array) -> Callable[[int], str] | None:
    """Chunk index -> file path for an array whose chunk files are its raw rows (local,
    uncompressed, unsharded, native byte order, whole rows per chunk); else None."""
    codecs, store = arr.metadata.codecs, arr.store_path.store
    chunk = arr.metadata.chunk_grid.chunk_shape
    if (
        not hasattr(store, "root")
        or len(codecs) != 1
        or not isinstance(codecs[0], BytesCodec)
        or (arr.dtype.itemsize > 1 and codecs[0].endian != Endian(sys.byteorder))
        or tuple(chunk[1:]) != tuple(arr.shape[1:])
    ):
        return None
    folder = os.path.join(store.root, arr.store_path.path)

    def path(i: int) -> str:
        return os.path.join(folder, arr.metadata.encode_chunk_key((i,) + (0,) * (arr.ndim - 1)))

    return path


def read_raw_rows(
    arr: zarr.Array, chunk_file: Callable[[int], str], start: int, stop: int, out: np.ndarray
) -> bool:
    """Rows [start, stop) read from the chunk files into `out`. False, having promised
    nothing, when a chunk file is absent or short: zarr's path owns fill values and the
    damage checks."""
    if stop <= start:
        return True
    rows, row_bytes = arr.metadata.chunk_grid.chunk_shape[0], out[0].nbytes
    pieces = []
    for i in range(start // rows, -(-stop // rows)):
        lo, hi = max(start, i * rows), min(stop, (i + 1) * rows)
        path = chunk_file(i)
        if not os.path.isfile(path):
            return False
        pieces.append((path, (lo - i * rows) * row_bytes, out[lo - start : hi - start]))
    for path, offset, dest in pieces:
        view = memoryview(dest).cast("B")
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            done = 0
            while done < len(view):
                got = f.readinto(view[done:])
                if not got:
                    return False  # a short chunk file: let zarr report it
                done += got
    return True
