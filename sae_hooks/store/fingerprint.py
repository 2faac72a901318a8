"""What defines a store's rows, recorded at creation and checked on every resume.

A resume appends rows after the committed ones, so it must produce the rows an
uninterrupted capture would have: the same model weights, tokenizer, context
length, batch size, data and capture settings. The data source describes itself
through a `fingerprint()` method (TextBatches: tokenizer, vocabulary hash, context
length, batch size, mode, documents); any source adds a hash of its input batch 0.
A wrapper's description is not compared: wrapping a source (an interruptible
adapter, a rank split) must not block its resume. The fingerprint is a flat dict of
JSON values kept in the store's `fingerprint` attribute; a resume whose
fingerprint differs in any field both sides record is refused, naming the fields.

The model is identified by a cheap hash of a few parameter tensors' bytes (first,
middle and last, up to 1 MiB each) plus every parameter's name, shape and dtype:
two models of one class with different weights differ; hashing is milliseconds.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from sae_hooks.store.interface import StoreMismatchError

FINGERPRINT_ATTR = "fingerprint"
_BYTES_PER_TENSOR = 1 << 20
RESOLVE = (
    "pass overwrite=True (CLI: --overwrite) to replace the store, or capture into a new "
    "store location"
)


def _tensor_bytes(t: torch.Tensor, limit: int = _BYTES_PER_TENSOR) -> bytes:
    flat = t.detach().reshape(-1)
    head = flat[: max(1, limit // max(flat.element_size(), 1))]
    return head.cpu().contiguous().view(torch.uint8).numpy().tobytes()


def model_hash(model: Any) -> str:
    """A short hash of the model's weights (names, shapes, dtypes, a few tensors' bytes)."""
    named = list(model.named_parameters()) if isinstance(model, torch.nn.Module) else []
    if not named:
        return ""
    h = hashlib.sha256()
    for name, p in named:
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
    n = len(named)
    for i in sorted({0, n // 3, 2 * n // 3, n - 1}):
        h.update(_tensor_bytes(named[i][1]))
    return h.hexdigest()[:16]


def inputs_hash(inputs: Mapping[str, torch.Tensor]) -> str:
    """A hash of one input batch (keys, shapes, dtypes, values): batch size, context
    length and tokenisation all show in it."""
    h = hashlib.sha256()
    for key in sorted(inputs):
        t = inputs[key]
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(_tensor_bytes(t, limit=64 << 20))
    return h.hexdigest()[:16]


def compare(stored: dict[str, Any] | None, now: dict[str, Any], where: str) -> None:
    """Refuse a resume whose fingerprint differs from the store's; warn if it has none."""
    if stored is None:
        warnings.warn(
            f"store {where} has no fingerprint (written before sae-hooks recorded one): "
            "resuming it without checking that the model, data and settings match",
            stacklevel=3,
        )
        return
    differ = {
        key: (stored[key], now[key])
        for key in sorted(set(stored) & set(now))
        if stored[key] != now[key]
    }
    if differ:
        listed = "; ".join(f"{k}: stored {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise StoreMismatchError(
            f"cannot resume store {where}: its rows were made differently ({listed}). "
            f"Resuming would mix rows of two captures; {RESOLVE}",
            fields=differ,
        )
