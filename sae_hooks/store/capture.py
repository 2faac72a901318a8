"""InputBatch -> capture_batch -> StoreWriter: fill one store from a model, resumably."""

from __future__ import annotations

import os
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import torch
from tqdm.auto import tqdm

from sae_hooks.data.batch import InputBatch, InputBatches
from sae_hooks.devices import model_device, to_device
from sae_hooks.hooks.capture import ActivationBatch, capture_batch
from sae_hooks.store.layout import DEFAULT_CHUNK_ROWS, META_ARRAYS, check_dtype, load_group
from sae_hooks.store.reader import ActivationStore
from sae_hooks.store.writer import StoreWriter


def _model_name(model: Any) -> str:
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


def _head(batch: Any, n: int) -> SimpleNamespace:
    """The first n rows of an ActivationBatch-like object."""
    fields = {m: getattr(batch, m)[:n] for m in META_ARRAYS}
    return SimpleNamespace(acts={p: x[:n] for p, x in batch.acts.items()}, **fields)


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
    """Capture `points` of `model` over `data` into the store at `store`.

    `data` yields InputBatch (sae_hooks.data); dicts and (doc_offset, inputs) pairs
    are adapted by sae_hooks.data.InputBatches. An existing store is resumed
    (resume=True): its first `committed_inputs` input batches are skipped, so the
    finished store holds every row exactly once. With max_rows the capture stops at
    exactly that many rows (the last input batch may be cut). Returns the store,
    opened for reading.
    """
    points = [points] if isinstance(points, str) else list(points)
    if not points:
        raise ValueError("points is empty; name at least one hook point")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1 or None, got {max_rows}")
    batches = InputBatches(data)
    name = model_name or _model_name(model)
    mode = _writer_mode(store, name, resume, overwrite, storage_options)
    writer = StoreWriter(
        store,
        mode=mode,
        points=points,
        dtype=check_dtype(dtype),
        model=name,
        source=source or batches.description,
        chunk_rows=chunk_rows,
        shard_chunks=shard_chunks,
        compressors=compressors,
        storage_options=storage_options,
    )
    with writer:
        fed = _feed(model, points, batches, writer, max_rows, progress, drop_bos, vit_tokens)
    if fed == 0 and writer.committed_inputs == 0:
        raise ValueError(
            f"the data source {type(data).__name__} yielded no input batches: nothing to "
            f"capture into {store}; give at least one document or image"
        )
    return ActivationStore(store, storage_options=storage_options)


def _writer_mode(
    store: str | os.PathLike,
    name: str,
    resume: bool,
    overwrite: bool,
    storage_options: dict[str, Any] | None,
) -> str:
    """create, resume or overwrite, refusing to resume another model's store."""
    try:
        _, attrs = load_group(store, "r", storage_options)
    except FileNotFoundError:
        attrs = None
    except ValueError:  # something that is not a store: replace it only when told to
        if not overwrite:
            raise
        attrs = None
    if attrs is not None and resume and not overwrite and attrs.get("model") not in ("", name):
        raise ValueError(
            f"store {store} was captured from model {attrs['model']!r}, not {name!r}; "
            "pass overwrite=True to replace it or choose another location"
        )
    return "overwrite" if overwrite else "resume" if attrs is not None and resume else "create"


def _feed(
    model: Any,
    points: list[str],
    batches: InputBatches,
    writer: StoreWriter,
    max_rows: int | None,
    progress: bool,
    drop_bos: bool,
    vit_tokens: str,
) -> int:
    """Capture and append input batches from the writer's resume point; the count fed."""
    rows, fed = writer.committed_rows, 0
    bar = tqdm(
        total=max_rows,
        initial=rows,
        unit="tok",
        unit_scale=True,
        disable=not progress,
        desc=f"capture {', '.join(points)}",
    )
    with bar:
        if max_rows is not None and rows >= max_rows:
            return fed
        for batch in batches.iter_from(writer.committed_inputs):
            fed += 1
            acts = capture_input_batch(
                model, points, batch, drop_bos=drop_bos, vit_tokens=vit_tokens
            )
            n = len(acts.token_ids)
            if max_rows is not None and rows + n >= max_rows:
                writer.append(_head(acts, max_rows - rows))
                bar.update(max_rows - rows)
                break
            writer.append(acts)
            rows += n
            bar.update(n)
    return fed
