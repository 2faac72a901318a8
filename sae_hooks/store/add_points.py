"""A new hook point for a store that holds others: one pass over the same input batches.

Every point of a store shares its rows: row i of each `acts/<point>` array comes from
the token (or patch) that row i of `token_ids`, `doc_index` and `position` names. A
point added later must keep that, so the pass re-reads the store's input batches in
order, captures only the new points, and refuses the moment a captured batch's
token ids, documents or positions differ from the rows the store holds (other data,
or data tokenised otherwise), or when the batches' running hash differs from the
store's. It covers exactly the committed rows (a capture cut at max_rows included).

The new arrays are written first and listed in the store's `points` last, in one
attribute write: an interrupted pass leaves the store as it was (the half-written
array is recreated by the next try), and readers never see a point without its rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import zarr
from tqdm.auto import tqdm

from sae_hooks.activations import ActivationBatch
from sae_hooks.store import lock
from sae_hooks.store.commit import now
from sae_hooks.store.fingerprint import INPUTS_ATTR, InputsChain
from sae_hooks.store.layout import (
    META_ARRAYS,
    SHARDED_ATTR,
    describe,
    load_group,
    storage_to_numpy,
    to_storage,
)
from sae_hooks.store.writer import WRITE_EVERY_CHUNK


class _PointRows:
    """The rows of the new points, written in whole storage units as they come."""

    def __init__(self, group: zarr.Group, like: zarr.Array, points: list[str], dtype: str):
        self.dtype, self.unit = dtype, int((like.shards or like.chunks)[0])
        self.arrays: dict[str, zarr.Array] = {}
        self.like, self.group, self.points = like, group, points
        self.buffer: dict[str, list[np.ndarray]] = {p: [] for p in points}
        self.buffered = self.written = 0
        self.sums: dict[str, np.ndarray] = {}
        self.sq: dict[str, float] = dict.fromkeys(points, 0.0)

    def _array(self, point: str, d: int, rows: int) -> zarr.Array:
        if point not in self.arrays:
            like = self.like
            self.arrays[point] = self.group.create_array(
                f"acts/{point}",
                shape=(rows, d),
                chunks=(like.chunks[0], d),
                shards=(like.shards[0], d) if like.shards else None,
                dtype=like.dtype,
                compressors=like.compressors,
                fill_value=0,
                config=WRITE_EVERY_CHUNK,
                overwrite=True,
                attributes=dict(like.attrs),
            )
            self.sums[point] = np.zeros(d, np.float64)
        return self.arrays[point]

    def add(self, acts: dict[str, Any], total: int) -> None:
        for p in self.points:
            raw = to_storage(acts[p], self.dtype)
            self._array(p, raw.shape[1], total)
            x = storage_to_numpy(raw, self.dtype)
            self.sums[p] += x.sum(axis=0, dtype=np.float64)
            self.sq[p] += float(np.einsum("ij,ij->i", x, x, dtype=np.float64).sum())
            self.buffer[p].append(raw)
        self.buffered += len(raw)
        if self.buffered >= self.unit:
            self.write(self.buffered // self.unit * self.unit)

    def write(self, n: int) -> None:
        if n == 0:
            return
        for p in self.points:
            whole = np.concatenate(self.buffer[p])
            self.arrays[p][self.written : self.written + n] = whole[:n]
            self.buffer[p] = [whole[n:]]
        self.buffered -= n
        self.written += n

    def attrs(self, attrs: dict[str, Any], rows: int) -> dict[str, Any]:
        """The store's attributes with the new points listed (and their statistics)."""
        stats = dict(attrs.get("stats", {}))
        for p in self.points:
            stats[p] = {
                "mean": (self.sums[p] / max(rows, 1)).tolist(),
                "mean_sq_norm": self.sq[p] / max(rows, 1),
                "count": rows,
            }
        d_model = {**attrs["d_model"], **{p: int(a.shape[1]) for p, a in self.arrays.items()}}
        return {
            "points": [*attrs["points"], *self.points],
            "d_model": d_model,
            "stats": stats,
            "updated": now(),
        }


def _check_rows(
    group: zarr.Group, acts: ActivationBatch, start: int, where: str, batch_index: int
) -> None:
    """The captured rows must be the stored rows' tokens, documents and positions."""
    for name in META_ARRAYS:
        stored = np.asarray(group[name][start : start + acts.n_rows])
        now_ = getattr(acts, name).detach().cpu().numpy()
        if stored.shape != now_.shape or not np.array_equal(stored, now_):
            raise ValueError(
                f"cannot add points to store {where}: input batch {batch_index} gives other "
                f"rows than the store holds ({name} differs from row {start} on): the data, "
                "tokenizer, context length or batch size differ from the capture's. Capture "
                "the new point with the store's own settings, or into another --store / --run"
            )


def add_points(
    capture: Any,
    points: list[str],
    batches: Iterable[Any],
    store: str | os.PathLike,
    *,
    progress: bool = True,
    storage_options: dict[str, Any] | None = None,
) -> int:
    """Capture `points` (not yet in the store) for every committed row of `store`;
    `capture(points, batch) -> ActivationBatch` captures one input batch. Returns the
    rows added per point. The caller has compared the capture's fingerprint."""
    where = describe(store)
    lock.hold_store(where)
    try:
        group, attrs = load_group(store, "r+", storage_options)
        if attrs.get(SHARDED_ATTR):
            raise ValueError(f"{where} is a sharded store: capture new points into a new one")
        lock.acquire(group, where)
        try:
            rows = _fill(capture, points, batches, group, attrs, where, progress)
        finally:
            lock.release(group, where)
    finally:
        lock.release_store(where)
    return rows


def _fill(capture, points, batches, group, attrs, where, progress) -> int:
    """The pass itself: batch by batch, checked against the stored rows, then listed."""
    total = int(attrs["committed_rows"])
    upto = int(attrs["committed_inputs"]) + (1 if attrs.get("partial_input_rows") else 0)
    out = _PointRows(group, group[f"acts/{attrs['points'][0]}"], points, attrs["dtype"])
    chain, done = InputsChain(), 0
    desc = f"add {', '.join(points)}"
    with tqdm(total=total, unit="tok", unit_scale=True, disable=not progress, desc=desc) as bar:
        for batch in batches:
            if done >= total:
                break
            chain.add(batch)
            acts = capture(points, batch)
            keep = min(acts.n_rows, total - done)
            acts = acts.rows(0, keep)
            _check_rows(group, acts, done, where, batch.index)
            out.add(acts.acts, total)
            done += keep
            bar.update(keep)
    stored = attrs.get(INPUTS_ATTR)
    if done < total or (stored is not None and chain.count == upto and stored != chain.digest):
        raise ValueError(
            f"cannot add points to store {where}: the data gives {done:,} of its {total:,} "
            "rows, or other input batches than it was captured from; capture the new point "
            "with the store's own data and settings, or into another --store / --run"
        )
    out.write(out.buffered)
    group.update_attributes(out.attrs(attrs, total))
    return total
