"""The on-disk layout of an activation store: schema, dtypes, codecs, locations.

Everything the writer, the reader and the loader must agree on lives here, so
the format is defined once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
import zarr.errors
from zarr.codecs import BloscCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from sae_hooks.jsonio import loads
from sae_hooks.store import remote

SCHEMA_VERSION = 1

#: Row-metadata arrays stored beside `acts/<point>`, all int64, one value per row.
META_ARRAYS = ("token_ids", "doc_index", "position")

# Rows per chunk. Measured on this machine (local disk, page cache, 2 cores, 32k x 768
# float32 rows): 1k-row chunks wrote 1.1 GB/s, 8k-row chunks 2.4 GB/s, 16k-row chunks
# 2.1 GB/s; reads were 3-4 GB/s from 1k to 8k rows. On object stores (fsspec URLs) the
# per-request latency dominates and 8-16k-row chunks read ~2x faster than 1k-row ones.
# 8192 rows of d=768 float32 is a 25 MB chunk: large enough, small enough to shuffle.
DEFAULT_CHUNK_ROWS = 8192

#: Logical dtype -> (dtype zarr stores, torch dtype). bfloat16 has no zarr dtype: its
#: 16 bits are stored as uint16 and the array attribute `encoding` says so.
DTYPES: dict[str, tuple[np.dtype, torch.dtype]] = {
    "float32": (np.dtype("float32"), torch.float32),
    "float16": (np.dtype("float16"), torch.float16),
    "bfloat16": (np.dtype("uint16"), torch.bfloat16),
}
BF16_ENCODING = "bfloat16 bits stored as uint16"
_HIGH_HALF = 1 if sys.byteorder == "little" else 0  # of a float32's two uint16 halves

#: A random id a store gets when it is created: a store replaced at the same location
#: (an overwrite, a copy moved into place) has another one, so a reader can tell.
GENERATION_ATTR = "generation"


def generation(attrs: dict[str, Any]) -> str | None:
    """What identifies this store among stores at its location: its generation, or for a
    store written before generations its creation time."""
    return attrs.get(GENERATION_ATTR) or attrs.get("created")


#: The parent group of a sharded store (one store per capturing rank) carries only
#: this attribute, {"version": 1, "world_size": N}; rank r's store is `rank-000r`.
SHARDED_ATTR = "sharded_store"
SHARDED_VERSION = 1

STORE_HELP = (
    "an activation store is a zarr v3 group written by StoreWriter or capture_to_store, "
    "with arrays acts/<point>, token_ids, doc_index, position and a 'schema_version' attribute"
)


def check_dtype(dtype: str | torch.dtype) -> str:
    """The logical dtype name for `dtype`, or a ValueError listing the valid ones."""
    if isinstance(dtype, torch.dtype):
        names = {t: name for name, (_, t) in DTYPES.items()}
        if dtype in names:
            return names[dtype]
    elif dtype in DTYPES:
        return dtype
    raise ValueError(
        f"an activation store cannot hold dtype {dtype!r}; valid dtypes: {', '.join(DTYPES)}"
    )


def default_compressors(dtype: str) -> list[BloscCodec] | None:
    """No compression for float32/float16, lz4 + bit shuffle for bfloat16.

    Measured on real MiniLM layer-3 activations (15k x 384) with 8k-row chunks:
    zstd(1)+shuffle shrank bfloat16 1.35x, float16 1.16x and float32 1.15x, while
    it cut read throughput from ~6 GB/s to ~0.8 GB/s. Only bfloat16 (the dtype
    chosen to save space) earns a codec by default; pass compressors= to choose.
    Its codec is lz4 + bit shuffle since issue 17's loader work: on 131k x 768
    Gaussian bfloat16 rows (bench/bench_store.py, 2 busy cores) it kept 1.25x of
    zstd's 1.29x shrink, wrote 1.2-1.6x and fed the shuffled loader 1.6-2.2x as
    fast (three runs; docs/benchmarks.md).
    Stores written with zstd (the earlier default) read as before: zarr's
    metadata names each array's codec.
    """
    if dtype != "bfloat16":
        return None
    return [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", typesize=2)]


def compressors_for(name: str | None, dtype: str) -> list[BloscCodec] | None:
    """Codecs for a compressor name: None, "zstd" or "lz4" (always with byte shuffle)."""
    if name is None or name == "none":
        return None
    if name not in ("zstd", "lz4"):
        raise ValueError(f"unknown compressor {name!r}; valid: None, 'zstd', 'lz4', 'auto'")
    itemsize = DTYPES[dtype][0].itemsize if dtype in DTYPES else 8
    return [BloscCodec(cname=name, clevel=1, shuffle="shuffle", typesize=itemsize)]


def to_storage(x: torch.Tensor | np.ndarray, dtype: str) -> np.ndarray:
    """Rows in the dtype zarr stores (bfloat16 as its uint16 bits), on the CPU."""
    t = torch.from_numpy(np.asarray(x)) if isinstance(x, np.ndarray) else x
    t = t.detach().to(device="cpu", dtype=DTYPES[dtype][1]).contiguous()
    if dtype == "bfloat16":
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def nonfinite_rows(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Which stored rows hold a NaN or an inf (bfloat16 read from its exponent bits)."""
    bad = (raw & 0x7F80) == 0x7F80 if dtype == "bfloat16" else ~np.isfinite(raw)
    return bad.any(axis=tuple(range(1, bad.ndim)))


def storage_to_numpy(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Stored rows as numpy: bfloat16 widened exactly to float32, others as stored."""
    if dtype == "bfloat16":  # the bits as the high half of a float32: one strided write
        wide = np.zeros((*raw.shape, 2), np.uint16)  # 2x faster than astype(uint32) << 16
        wide[..., _HIGH_HALF] = raw
        return wide.view(np.float32)[..., 0]
    return raw


def storage_to_torch(raw: np.ndarray, dtype: str) -> torch.Tensor:
    """Stored rows as a torch tensor of the logical dtype (bit-exact for bfloat16)."""
    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(raw).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(raw))


def check_out(out: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse an `out=` array that rows of `shape` in stored `dtype` cannot be read into."""
    if out.shape != tuple(shape) or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be a C-contiguous {np.dtype(dtype)} array of shape {tuple(shape)}, got "
            f"{out.dtype} {out.shape}{'' if out.flags.c_contiguous else ' (not contiguous)'}"
        )


def is_url(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def describe(location: str | os.PathLike) -> str:
    return str(location) if is_url(location) else str(Path(location).expanduser().resolve())


def open_group(
    location: str | os.PathLike,
    mode: str,
    storage_options: dict[str, Any] | None = None,
    attributes: dict[str, Any] | None = None,
) -> zarr.Group:
    """A zarr group at a local path or any fsspec URL (memory://, s3://, gs://, ...).

    `attributes` are written with the group's metadata when it is created: one write,
    so a store killed while being created is either absent or a valid empty store.
    """
    kwargs: dict[str, Any] = {"mode": mode, "zarr_format": 3}
    if attributes is not None:
        kwargs["attributes"] = attributes
    if is_url(location):
        if storage_options:
            kwargs["storage_options"] = storage_options
        return zarr.open_group(str(location), **kwargs)
    return zarr.open_group(Path(location).expanduser(), **kwargs)


def check_location(location: object) -> None:
    """A store location is a path or a URL string: refuse anything else by name."""
    if not isinstance(location, (str, os.PathLike)):
        raise TypeError(
            f"a store location must be a path or a URL string, got {type(location).__name__} "
            f"{location!r}"
        )


#: zarr's local store writes `<name>.<uuid>.partial` and renames it into place.
PARTIAL_SUFFIX = ".partial"


def is_unborn(location: str | os.PathLike) -> bool:
    """Whether `location` is a local folder a store creation left before its zarr.json.

    A kill between creating the folder and renaming the group's zarr.json into place
    leaves an empty folder, or one holding only zarr's `*.partial` temporary files.
    Nothing of a store is there, so it may be replaced without losing data.
    """
    if is_url(location):
        return False
    path = Path(location).expanduser()
    if not path.is_dir() or (path / "zarr.json").exists():
        return False
    return all(f.is_dir() or f.name.endswith(PARTIAL_SUFFIX) for f in path.rglob("*"))


def load_group(
    location: str | os.PathLike, mode: str = "r", storage_options: dict | None = None
) -> tuple[zarr.Group, dict[str, Any]]:
    """Open the group at `location` and validate that it is a store this code can read."""
    check_location(location)
    where = describe(location)
    try:
        group = open_group(location, mode, storage_options)
    except Exception as err:  # an object store's refusal or outage, said by URL (remote.py)
        if is_url(location) and remote.explain(err, where, storage_options) is not err:
            raise remote.explain(err, where, storage_options) from err
        readable = (FileNotFoundError, zarr.errors.BaseZarrError, ValueError, RecursionError)
        if not isinstance(err, readable):
            raise
        local_junk = not is_url(location) and Path(location).expanduser().exists()
        if isinstance(err, FileNotFoundError) and not local_junk:
            raise FileNotFoundError(f"no activation store at {where}: nothing there") from err
        if is_unborn(location):
            raise FileNotFoundError(
                f"no activation store at {where}: only the folder of a store whose creation "
                "was interrupted (no zarr.json); capturing there again replaces it"
            ) from err
        what = "its zarr.json is not valid JSON" if isinstance(err, ValueError) else str(err)
        if isinstance(err, RecursionError):
            what = "its zarr.json is nested too deeply to read"
        raise ValueError(f"{where} is not an activation store ({what}); {STORE_HELP}") from err
    attrs = dict(group.attrs)
    version = attrs.get("schema_version")
    if version is None:
        raise ValueError(f"{where} is a zarr group without 'schema_version'; {STORE_HELP}")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ValueError(
            f"store {where} has schema_version {version!r}, but this sae-hooks reads "
            f"schema versions up to {SCHEMA_VERSION}; upgrade sae-hooks to read it"
        )
    if attrs.get("dtype") not in DTYPES:
        raise ValueError(
            f"store {where} holds dtype {attrs.get('dtype')!r}; valid: {', '.join(DTYPES)}"
        )
    check_attributes(attrs, where)
    return group, attrs


def check_attributes(attrs: dict[str, Any], where: str) -> None:
    """Refuse attributes no writer of this code could have left (hand edits, corruption)."""
    for key in ("committed_rows", "committed_inputs", "partial_input_rows"):
        value = attrs.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(
                f"store {where} has {key}={value!r} in its zarr.json; it must be an int >= 0. "
                "The store is damaged: capture it again with overwrite=True"
            )
    points, d_model = attrs.get("points", []), attrs.get("d_model", {})
    if not isinstance(points, list) or not all(isinstance(p, str) for p in points):
        raise ValueError(f"store {where} has points={points!r}; it must be a list of names")
    if not isinstance(d_model, dict) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in d_model.values()
    ):
        raise ValueError(f"store {where} has d_model={d_model!r}; it must map points to ints >= 1")


def read_group_attrs(group: zarr.Group) -> dict[str, Any]:
    """The attributes of `group` as they are on storage now (one read of its zarr.json)."""
    store, path = group.store_path.store, group.store_path.path
    key = f"{path}/zarr.json" if path else "zarr.json"
    raw = sync(store.get(key, prototype=default_buffer_prototype()))
    if raw is None:
        raise FileNotFoundError(f"{key} is missing")
    return dict(loads(raw.to_bytes(), key).get("attributes", {}))


def rank_location(location: str | os.PathLike, rank: int) -> str | Path:
    """Where rank `rank` of the sharded store at `location` writes its own store."""
    name = f"rank-{rank:04d}"
    if is_url(location):
        return f"{str(location).rstrip('/')}/{name}"
    return Path(location).expanduser() / name


def sharded_world_size(
    location: str | os.PathLike, storage_options: dict[str, Any] | None = None
) -> int | None:
    """The number of rank stores at `location`, or None if it is not a sharded store."""
    try:
        attrs = dict(open_group(location, "r", storage_options).attrs)
    except (FileNotFoundError, zarr.errors.BaseZarrError, ValueError, RecursionError):
        return None
    meta = attrs.get(SHARDED_ATTR)
    return int(meta["world_size"]) if isinstance(meta, dict) else None
