"""The writer's settings, checked before anything is created: modes, counts and sizes.

Sizes are bounded in bytes, since that is what a wrong setting costs: the writer
thread holds a whole storage unit (a chunk, or a shard when sharding) in memory
before writing it, and zarr allocates whole chunks. `chunk_rows=10**9` asked for a
59.6 GiB buffer on the first append; `shard_chunks=10**7` made zarr build a shard
index of ten million entries and hang. Both are refused up front, naming the limit.
"""

from __future__ import annotations

import math
from typing import Any

MODES = ("create", "resume", "overwrite")

GIB = 1 << 30
#: Largest chunk (rows x d x itemsize, or rows x 8 for the int64 row arrays).
MAX_CHUNK_BYTES = 2 * GIB
#: Largest storage unit the writer buffers in memory (a shard: chunk_rows x shard_chunks).
MAX_UNIT_BYTES = 8 * GIB
#: Most chunks in one shard (zarr keeps an index entry per chunk and walks them all).
MAX_SHARD_CHUNKS = 1 << 16
#: The row arrays (token_ids, doc_index, position) are int64.
ROW_BYTES = 8


def check_settings(
    mode: str, chunk_rows: Any, queue_size: Any, shard_chunks: Any, commit_interval: Any
) -> None:
    """Refuse (ValueError) an unknown mode and counts that are no ints >= 1 or too large."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    for name, value in [("chunk_rows", chunk_rows), ("queue_size", queue_size)] + (
        [("shard_chunks", shard_chunks)] if shard_chunks is not None else []
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not isinstance(commit_interval, (int, float)) or not 0 <= commit_interval < math.inf:
        raise ValueError(f"commit_interval must be seconds >= 0, got {commit_interval!r}")
    if shard_chunks is not None and shard_chunks > MAX_SHARD_CHUNKS:
        raise ValueError(
            f"shard_chunks={shard_chunks:,} is too many chunks for one shard; the limit is "
            f"{MAX_SHARD_CHUNKS:,} (zarr indexes and walks every chunk of a shard)"
        )
    check_sizes(chunk_rows, shard_chunks or 1, {}, 0)


def check_sizes(chunk_rows: int, shard_chunks: int, d_model: dict[str, int], itemsize: int) -> None:
    """Refuse a chunk over MAX_CHUNK_BYTES or a unit over MAX_UNIT_BYTES, for the widest
    point (itemsize bytes a value) and for the int64 row arrays."""
    width = max([d * itemsize for d in d_model.values()] + [ROW_BYTES])
    for what, rows, limit in (
        ("a chunk", chunk_rows, MAX_CHUNK_BYTES),
        ("a shard (the unit the writer buffers)", chunk_rows * shard_chunks, MAX_UNIT_BYTES),
    ):
        if rows * width > limit:
            raise ValueError(
                f"{what} of {rows:,} rows x {width:,} bytes is {rows * width / GIB:,.1f} GiB, "
                f"over the limit of {limit / GIB:g} GiB; use fewer chunk_rows"
                + (" or shard_chunks" if "shard" in what else "")
            )
