"""What defines a store's rows, recorded at creation and checked on every resume.

A resume appends rows after the committed ones, so it must produce the rows an
uninterrupted capture would have: the same model weights, tokenizer, context
length, batch size, data and capture settings. Every part is identified by its
content, exactly, never by a path (a path is recorded for people, not compared):

- the model: a streamed hash of every parameter's and buffer's bytes, with their
  names, shapes and dtypes (`model_hash`; its cost is in docs/reliability.md);
- the data source describes itself through a `fingerprint()` method (TextBatches:
  the tokenizer's whole definition, context length, batch size, mode, document
  count); a wrapper's description is not compared, so wrapping a source (an
  interruptible adapter, a rank split) does not block its resume;
- every input batch the capture consumed: `InputsChain` hashes each one as it is
  read, the store keeps the hash through its committed batches (`inputs_hash`,
  written with each commit), and a resume reads the committed batches again (no
  model work), hashing them, and compares. Documents, tokenisation and images
  before the committed point are thus covered exactly, streams included.

The fingerprint is a flat dict of JSON values kept in the store's `fingerprint`
attribute; a resume whose fingerprint differs in any compared field both sides
record is refused, naming the fields. Stores written before exact fingerprints
(no `fingerprint_version`) still open and read; a resume of one is refused with a
message that says so.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from sae_hooks.store.interface import StoreMismatchError

FINGERPRINT_ATTR = "fingerprint"
INPUTS_ATTR = "inputs_hash"  # store attribute: hash of the input batches committed
VERSION_KEY = "fingerprint_version"
FINGERPRINT_VERSION = 2
#: Fields recorded for people (where the model or tokenizer was loaded from), not compared.
RECORDED_ONLY = frozenset({"tokenizer"})
_SLICE_BYTES = 64 << 20  # bytes of a tensor copied to the host (and hashed) at once
RESOLVE = (
    "pass overwrite=True (CLI: --overwrite) to replace the store, or capture into a new "
    "store location"
)


def _update(h: Any, t: torch.Tensor) -> None:
    """Feed every byte of `t` to `h`, a bounded slice at a time (a GPU tensor is copied
    to the host slice by slice)."""
    h.update(f"{tuple(t.shape)}:{t.dtype};".encode())
    if t.is_meta or t.is_sparse:
        return  # no bytes to read (an offloaded or sparse tensor): its shape stands
    flat = t.detach().reshape(-1)
    step = max(1, _SLICE_BYTES // max(flat.element_size(), 1))
    for i in range(0, flat.numel(), step):
        part = flat[i : i + step].cpu().contiguous()
        try:
            h.update(part.view(torch.uint8).numpy())
        except (RuntimeError, TypeError):  # dtypes with no byte view (quantized)
            h.update(repr(part.tolist()).encode())


def model_hash(model: Any) -> str:
    """A hash of the model's weights: every parameter's and buffer's name, shape, dtype
    and bytes ("" for something that is not a torch module)."""
    if not isinstance(model, torch.nn.Module):
        return ""
    h = hashlib.sha256()
    for kind, named in (("p", model.named_parameters()), ("b", model.named_buffers())):
        for name, t in named:
            h.update(f"{kind}:{name}:".encode())
            _update(h, t)
    return h.hexdigest()[:32]


def inputs_hash(inputs: Mapping[str, torch.Tensor]) -> str:
    """A hash of one input batch (keys, shapes, dtypes, values): batch size, context
    length and tokenisation all show in it."""
    h = hashlib.sha256()
    for key in sorted(inputs):
        h.update(f"{key}:".encode())
        _update(h, inputs[key])
    return h.hexdigest()[:16]


class InputsChain:
    """A running hash of the input batches a capture consumes, in order.

    `add(batch)` folds one InputBatch in (inputs and doc_offset) and remembers the hash
    through it under its position, which `take(position)` hands to the writer with that
    batch's rows (and forgets).
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.count = 0
        self.digest = ""
        self._after: dict[int, str] = {}

    def add(self, batch: Any) -> str:
        for key in sorted(batch.inputs):
            self._h.update(f"{key}:".encode())
            _update(self._h, batch.inputs[key])
        self._h.update(f"doc_offset:{batch.doc_offset};".encode())
        self.digest = self._h.copy().hexdigest()[:32]
        self._after[self.count] = self.digest
        self.count += 1
        return self.digest

    def take(self, position: int) -> str | None:
        return self._after.pop(position, None)


def verified_batches(
    batches: Iterable[Any], chain: InputsChain, state: dict[str, Any], where: str
) -> Iterator[tuple[int, Any]]:
    """(position, batch) of the batches still to capture, every batch hashed into `chain`.

    The batches the store holds rows of (its committed ones, and one cut at max_rows)
    are read again and hashed, not captured; their hash must equal the store's
    `inputs_hash`, checked before the first batch to capture is handed out.
    """
    start = int(state.get("committed_inputs", 0))
    upto = start + (1 if state.get("partial_input_rows") else 0)
    check = bool(state) and state.get(FINGERPRINT_ATTR) is not None and upto > 0
    for position, batch in enumerate(batches):
        chain.add(batch)
        if check and chain.count == upto:
            _check_inputs(state.get(INPUTS_ATTR), chain.digest, upto, where)
            check = False
        if position >= start:
            yield position, batch
        else:
            chain.take(position)  # stored already: nothing will be written with its hash
    if check:
        _refuse_inputs(
            where,
            f"the data now gives {chain.count} input batches, the store holds rows of {upto}",
            (state.get(INPUTS_ATTR), chain.digest),
        )


def _check_inputs(stored: str | None, now: str, upto: int, where: str) -> None:
    if stored != now:
        _refuse_inputs(
            where,
            f"its first {upto} input batches were not these (documents edited, reordered "
            "or tokenised otherwise, or other images)",
            (stored, now),
        )


def _refuse_inputs(where: str, why: str, pair: tuple[Any, Any]) -> None:
    raise StoreMismatchError(
        f"cannot resume store {where}: {why}. Resuming would mix rows of two captures; {RESOLVE}",
        fields={INPUTS_ATTR: pair},
    )


def compare(stored: dict[str, Any] | None, now: dict[str, Any], where: str) -> None:
    """Refuse a resume whose fingerprint differs from the store's; warn if it has none;
    refuse one recorded before exact fingerprints, saying so."""
    if stored is None:
        warnings.warn(
            f"store {where} has no fingerprint (written before sae-hooks recorded one): "
            "resuming it without checking that the model, data and settings match",
            stacklevel=3,
        )
        return
    if stored.get(VERSION_KEY) != now.get(VERSION_KEY):
        raise StoreMismatchError(
            f"cannot resume store {where}: it predates exact fingerprints (its record "
            f"samples the model weights and documents: version {stored.get(VERSION_KEY, 1)}, "
            f"this sae-hooks checks version {FINGERPRINT_VERSION}), so a resume cannot be "
            "checked to make the same rows. It still opens, reads and trains as it is; to "
            f"capture more, {RESOLVE}",
            fields={VERSION_KEY: (stored.get(VERSION_KEY), FINGERPRINT_VERSION)},
        )
    differ = {
        key: (stored[key], now[key])
        for key in sorted(set(stored) & set(now) - RECORDED_ONLY)
        if stored[key] != now[key]
    }
    if differ:
        listed = "; ".join(f"{k}: stored {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise StoreMismatchError(
            f"cannot resume store {where}: its rows were made differently ({listed}). "
            f"Resuming would mix rows of two captures; {RESOLVE}",
            fields=differ,
        )


def exact(stored: dict[str, Any] | None) -> bool:
    """Whether a stored fingerprint identifies model and data by content (not by name)."""
    return isinstance(stored, dict) and stored.get(VERSION_KEY) == FINGERPRINT_VERSION
