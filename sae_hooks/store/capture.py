"""InputBatch -> capture_batch -> StoreWriter: fill one store from a model, resumably.

Before anything is written, the points are resolved on the model, the first input
batch to capture is captured (so bad points and bad inputs leave nothing on disk,
and the store is created knowing every point's width), and on resume the
fingerprint of what defines the rows (sae_hooks.store.fingerprint) is compared
with the store's. A store this call created is removed again if it fails before
committing a row.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sae_hooks.activations import ActivationBatch
from sae_hooks.data.batch import InputBatch, InputBatches
from sae_hooks.devices import model_device, to_device
from sae_hooks.hooks.capture import capture_batch
from sae_hooks.hooks.points import resolve_point
from sae_hooks.store.add_points import add_points
from sae_hooks.store.fingerprint import (
    FINGERPRINT_ATTR,
    FINGERPRINT_VERSION,
    VERSION_KEY,
    InputsChain,
    compare,
    exact,
    inputs_hash,
    model_hash,
    verified_batches,
)
from sae_hooks.store.layout import (
    DEFAULT_CHUNK_ROWS,
    check_dtype,
    check_location,
    describe,
    is_url,
    load_group,
    open_group,
)
from sae_hooks.store.overwrite import check_replaceable
from sae_hooks.store.reader import ActivationStore
from sae_hooks.store.writer import StoreWriter


def model_name_of(model: Any) -> str:
    """The model's name as a store records it (its `model` attribute), unless the capture
    is given one: the config's name or path, else the model's class name."""
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", "") or getattr(config, "model_name", "")
    return str(name or getattr(model, "name_or_path", "") or type(model).__name__)


def capture_input_batch(
    model: Any, points: list[str], batch: InputBatch, **capture_kwargs: Any
) -> ActivationBatch:
    """capture_batch on one InputBatch, with doc_index counted from its doc_offset."""
    inputs = to_device(dict(batch), model_device(model))
    acts = capture_batch(model, points, inputs, **capture_kwargs)
    acts.doc_index = acts.doc_index + batch.doc_offset
    return acts


def capture_to_store(
    model: Any,
    points: str | list[str],
    data: Iterable,
    store: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "float32",
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    max_rows: int | None = None,
    drop_bos: bool = False,
    vit_tokens: str = "all",
    model_name: str | None = None,
    source: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    shard_chunks: int | None = None,
    compressors: Any = "auto",
    storage_options: dict[str, Any] | None = None,
) -> ActivationStore:
    """Capture `points` of `model` over `data` into `store`; the store, opened for reading.

    A resume skips the committed input batches and refuses, with StoreMismatchError, to
    capture rows differently (model, tokenizer, context, batch size, data, drop_bos,
    vit_tokens); after a max_rows cut it continues inside the cut batch."""
    points = _checked_request(model, points, store, max_rows)
    batches = InputBatches(data)
    name = model_name or model_name_of(model)
    attrs = _existing_store(store, name, resume, overwrite, storage_options)
    mode = "overwrite" if overwrite else "resume" if attrs is not None else "create"
    options = {"drop_bos": drop_bos, "vit_tokens": vit_tokens}
    if mode == "resume" and set(points) - set(attrs.get("points") or points):
        points, attrs = _add_points(points, attrs, model, batches, store, options, progress)
    state = attrs if mode == "resume" else {}
    fingerprint, todo, chain = _resume_plan(model, batches, store, state, drop_bos, vit_tokens)
    rows = int(state.get("committed_rows", 0))
    nxt = next(todo, None) if max_rows is None or rows < max_rows else None
    if nxt is None:  # nothing left to capture: the store is complete
        return ActivationStore(store, storage_options=storage_options)
    acts = capture_input_batch(model, points, nxt, **options)  # bad input: nothing on disk
    writer = StoreWriter(
        store,
        mode=mode,
        points=points,
        d_model={p: int(x.shape[-1]) for p, x in acts.acts.items()},
        dtype=check_dtype(dtype),
        model=name,
        source=source or batches.description,
        fingerprint=fingerprint if mode != "resume" else None,
        chunk_rows=chunk_rows,
        shard_chunks=shard_chunks,
        compressors=compressors,
        storage_options=storage_options,
    )
    more = ((b, capture_input_batch(model, points, b, **options)) for b in todo)
    captured = itertools.chain([(nxt, acts)], more)
    skip = int(state.get("partial_input_rows", 0))  # rows of batch `nxt` already stored
    feed = lambda: _feed(points, captured, writer, max_rows, progress, skip, chain)  # noqa: E731
    _write_or_remove(writer, mode, feed, store, storage_options)
    return ActivationStore(store, storage_options=storage_options)


def _resume_plan(
    model: Any,
    batches: InputBatches,
    store: str | os.PathLike,
    state: dict[str, Any],
    drop_bos: bool,
    vit_tokens: str,
) -> tuple[dict[str, Any], Iterator[InputBatch], InputsChain]:
    """(this capture's fingerprint, the input batches still to capture, the running hash
    of the batches read, for the writer's commits); a resume whose
    fingerprint differs from the store's is refused, naming the fields, and so is one
    whose committed input batches are not the store's (fingerprint.verified_batches)."""
    walk = iter(batches.iter_from(0))
    first = next(walk, None)
    if first is None:
        raise ValueError(
            f"the data source {type(batches.data).__name__} yielded no input batches: "
            f"nothing to capture into {store}; give at least one document or image"
        )
    fingerprint = _fingerprint(model, batches, first, drop_bos, vit_tokens)
    if state:
        compare(state.get(FINGERPRINT_ATTR), fingerprint, describe(store))
    chain = InputsChain()
    todo = verified_batches(itertools.chain([first], walk), chain, state, describe(store))
    # position -> its batch: the position (not the source's index) counts committed_inputs
    return fingerprint, (b for _, b in todo), chain


def _checked_request(
    model: Any, points: str | list[str], store: str | os.PathLike, max_rows: int | None
) -> list[str]:
    """The points as a list, checked with the store location and max_rows before anything
    is on disk: a mistyped point or a bad limit leaves nothing behind."""
    check_location(store)
    points = [points] if isinstance(points, str) else list(points)
    if not points:
        raise ValueError("points is empty; name at least one hook point")
    if max_rows is not None and (isinstance(max_rows, bool) or max_rows < 1):
        raise ValueError(f"max_rows must be >= 1 or None, got {max_rows}")
    for point in points:
        resolve_point(model, point)
    return points


def _add_points(
    points: list[str],
    attrs: dict[str, Any],
    model: Any,
    batches: InputBatches,
    store: str | os.PathLike,
    options: dict[str, Any],
    progress: bool,
) -> tuple[list[str], dict[str, Any]]:
    """Points new to a store that holds others: captured for its committed rows, in its
    row order, by one pass over the same data (store/add_points.py); then the store's
    points (old and new, in its order) and attributes, to resume with. The store is
    opened without storage_options: a local or memory:// store."""
    if iter(batches.data) is batches.data:
        raise ValueError(
            f"adding points to the store at {describe(store)} reads its data again from the "
            "start: give data that can be iterated twice (a list, text_batches(...)), not "
            "a one-shot iterator"
        )
    first = next(iter(batches.iter_from(0)), None)
    if first is None:
        raise ValueError(f"the data source yielded no input batches: nothing to add to {store}")
    now = _fingerprint(model, batches, first, options["drop_bos"], options["vit_tokens"])
    compare(attrs.get(FINGERPRINT_ATTR), now, describe(store))
    new = [p for p in points if p not in attrs["points"]]
    add_points(
        lambda pts, b: capture_input_batch(model, pts, b, **options),
        new,
        batches.iter_from(0),
        store,
        progress=progress,
    )
    _, attrs = load_group(store, "r")
    return list(attrs["points"]), attrs


def _write_or_remove(
    writer: StoreWriter,
    mode: str,
    feed: Any,
    store: str | os.PathLike,
    storage_options: dict[str, Any] | None,
) -> None:
    """Run `feed` inside the writer; a store this call created and never committed to is
    removed on failure, so a failed capture leaves nothing on disk."""
    try:
        with writer:
            feed()
    except BaseException as err:
        if mode == "resume" or writer.committed_rows > 0:
            raise
        _remove_new_store(store, storage_options)
        if isinstance(err, OSError):  # its "then resume it" is wrong: nothing is left
            raise _removed(err, writer.where) from err
        raise


def _removed(err: OSError, where: str) -> OSError:
    """The error of a new store that failed before its first commit and was removed."""
    root = err.__cause__ if isinstance(err.__cause__, OSError) else err
    text = (
        f"writing the new activation store {where} failed: {root.strerror or root}. Nothing "
        "had been committed, so the store was removed; free space or fix permissions, then "
        "capture again"
    )
    try:
        return type(err)(err.errno, text)
    except TypeError:  # a subclass with another constructor
        return OSError(err.errno, text)


def _existing_store(
    store: str | os.PathLike,
    name: str,
    resume: bool,
    overwrite: bool,
    storage_options: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """The attributes of the store to resume, or None to create one; refuses to resume
    another model's store, and to replace anything but a store (store/overwrite.py)."""
    if overwrite:
        check_replaceable(store, storage_options)
    try:
        _, attrs = load_group(store, "r", storage_options)
    except FileNotFoundError:  # nothing there, or a folder left by a killed creation
        return None
    except ValueError:  # a damaged store (the check above let it through): replace it
        if not overwrite:
            raise
        return None
    if overwrite:
        return None
    if not resume:
        raise FileExistsError(
            f"an activation store already exists at {describe(store)}; pass resume=True to "
            "continue it (mode='resume') or overwrite=True (mode='overwrite') to replace it"
        )
    if not exact(attrs.get(FINGERPRINT_ATTR)) and attrs.get("model") not in ("", name):
        raise ValueError(
            f"store {store} was captured from model {attrs['model']!r}, not {name!r}; "
            "pass overwrite=True to replace it or choose another location"
        )
    return attrs


def _fingerprint(
    model: Any,
    batches: InputBatches,
    first: InputBatch,
    drop_bos: bool,
    vit_tokens: str,
) -> dict[str, Any]:
    """What defines the rows of this capture (see sae_hooks.store.fingerprint)."""
    described = getattr(batches.data, "fingerprint", None)
    return {
        VERSION_KEY: FINGERPRINT_VERSION,
        "model_class": type(model).__name__,
        "model_sha256": model_hash(model),
        "first_batch": inputs_hash(first.inputs),
        "first_doc_offset": first.doc_offset,
        "drop_bos": bool(drop_bos),
        "vit_tokens": vit_tokens,
        **(described() if callable(described) else {}),
    }


def _remove_new_store(store: str | os.PathLike, storage_options: dict[str, Any] | None) -> None:
    """Delete a store this call created and filled with nothing (a failed first batch)."""
    if not is_url(store):
        shutil.rmtree(Path(store).expanduser(), ignore_errors=True)
        return
    try:
        from zarr.core.sync import sync

        group = open_group(store, "r+", storage_options)
        sync(group.store_path.store.delete_dir(group.store_path.path))
    except Exception:  # best effort: an empty store left behind resumes anyway
        pass


def _feed(
    points: list[str],
    captured: Iterator[tuple[InputBatch, ActivationBatch]],
    writer: StoreWriter,
    max_rows: int | None,
    progress: bool,
    skip: int,
    chain: InputsChain,
) -> None:
    """Append captured input batches; the first one from row `skip` (the rows a cut at
    max_rows already stored), the last one cut at `max_rows`."""
    rows = writer.committed_rows
    bar = tqdm(
        total=max_rows,
        initial=rows,
        unit="tok",
        unit_scale=True,
        disable=not progress,
        desc=f"capture {', '.join(points)}",
    )
    with bar:
        for position, (batch, acts) in enumerate(captured, writer.committed_inputs):
            n = acts.n_rows
            if skip > n:
                raise ValueError(
                    f"store {writer.where} holds {skip} rows of input batch {batch.index}, "
                    f"which now has only {n}: the data changed; pass overwrite=True to "
                    "capture again"
                )
            hi = n if max_rows is None else min(n, skip + max_rows - rows)
            digest = chain.take(position)
            writer.append(acts.rows(skip, hi), completes_input=hi == n, inputs_hash=digest)
            rows += hi - skip
            bar.update(hi - skip)
            skip = 0
            if max_rows is not None and rows >= max_rows:
                break
