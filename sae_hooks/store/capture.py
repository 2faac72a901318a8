"""data -> capture_batch -> StoreWriter: fill a store from a model, resumably."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import torch
from tqdm.auto import tqdm

from sae_hooks.devices import model_device, to_device
from sae_hooks.store.layout import DEFAULT_CHUNK_ROWS, META_ARRAYS, check_dtype
from sae_hooks.store.reader import ActivationStore, load_group, open_store
from sae_hooks.store.writer import StoreWriter


def _model_name(model: Any) -> str:
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", "") or getattr(config, "model_name", "")
    return str(name or getattr(model, "name_or_path", "") or type(model).__name__)


def _n_docs(inputs: Mapping) -> int:
    return next(iter(inputs.values())).shape[0]


def _batches(data: Iterable, start: int) -> Iterator[tuple[dict, int]]:
    """(inputs, doc_offset) from input batch `start` on.

    Accepts InputBatch (sae_hooks.data), (doc_offset, inputs) pairs, or plain input
    dicts (doc_offset then counts the sequences of the batches before).
    """
    batches = data.iter_from(start) if hasattr(data, "iter_from") else iter(data)
    skip = 0 if hasattr(data, "iter_from") else start
    running = 0
    for i, batch in enumerate(batches):
        if hasattr(batch, "doc_offset") and isinstance(batch, Mapping):
            inputs, offset = dict(batch), batch.doc_offset
        elif isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[1], Mapping):
            offset, inputs = batch
        elif isinstance(batch, Mapping):
            inputs, offset = dict(batch), running
        else:
            raise TypeError(
                f"data yielded {type(batch).__name__}; expected an InputBatch, an input dict "
                "(input_ids/attention_mask or pixel_values) or a (doc_offset, inputs) pair"
            )
        running = offset + _n_docs(inputs)
        if i >= skip:
            yield inputs, offset


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

    An existing store is resumed (resume=True): its first `committed_inputs` input
    batches are skipped, so the finished store holds every row exactly once. With
    max_rows the capture stops at exactly that many rows (the last input batch may be
    cut). Returns the store, opened for reading.
    """
    from sae_hooks.hooks import capture_batch  # lazy: hooks depend on nothing here

    points = [points] if isinstance(points, str) else list(points)
    if not points:
        raise ValueError("points is empty; name at least one hook point")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1 or None, got {max_rows}")
    dtype = check_dtype(dtype)
    name = model_name or _model_name(model)
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
    mode = "overwrite" if overwrite else "resume" if attrs is not None and resume else "create"
    writer = StoreWriter(
        store,
        mode=mode,
        points=points,
        dtype=dtype,
        model=name,
        source=source or getattr(data, "description", type(data).__name__),
        chunk_rows=chunk_rows,
        shard_chunks=shard_chunks,
        compressors=compressors,
        storage_options=storage_options,
    )
    device = model_device(model)
    rows = writer.committed_rows
    bar = tqdm(
        total=max_rows,
        initial=rows,
        unit="tok",
        unit_scale=True,
        disable=not progress,
        desc=f"capture {', '.join(points)}",
    )
    fed = 0
    with writer, bar:
        if max_rows is None or rows < max_rows:
            for inputs, offset in _batches(data, writer.committed_inputs):
                fed += 1
                inputs = to_device(inputs, device)
                acts = capture_batch(
                    model,
                    points,
                    inputs,
                    doc_offset=offset,
                    drop_bos=drop_bos,
                    vit_tokens=vit_tokens,
                )
                n = len(acts.token_ids)
                if max_rows is not None and rows + n >= max_rows:
                    writer.append(_head(acts, max_rows - rows))
                    bar.update(max_rows - rows)
                    break
                writer.append(acts)
                rows += n
                bar.update(n)
    if fed == 0 and writer.committed_inputs == 0:
        raise ValueError(
            f"the data source {type(data).__name__} yielded no input batches: nothing to "
            f"capture into {store}; give at least one document or image"
        )
    return open_store(store, storage_options=storage_options)
