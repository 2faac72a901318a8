"""Token contexts from documents, tokenised lazily in bounded memory.

Two ways to fit a document into contexts of `context_length` tokens:
- "chunk" (default): split it into consecutive contexts, so every token is seen
  once; the last context of a document is shorter and padded. Activation stores
  want every token, and no context crosses a document boundary.
- "truncate": keep its first `context_length` tokens, one context per document.
Special tokens the tokenizer adds (BERT's [CLS] ... [SEP], Llama's BOS) wrap every
context and count toward context_length. doc_index/doc_offset count contexts in
order; in "truncate" mode, with no row skipped, that is the document index.

Documents are read as they are needed (sae_hooks.data.documents) and tokenised a group
at a time: up to TOKENIZE_GROUP documents or GROUP_CHARS characters per tokenizer call.
A document longer than PIECE_CHARS characters is tokenised in pieces
(sae_hooks.data.pieces) and its contexts are yielded as its pieces are tokenised, so
memory follows the group size, not the document size.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from sae_hooks.data.batch import InputBatch
from sae_hooks.data.documents import Documents, as_documents
from sae_hooks.data.pieces import PIECE_CHARS, text_pieces
from sae_hooks.data.sources import load_texts, pydoc_texts

__all__ = ["TextBatches", "as_documents", "load_texts", "pydoc_texts", "text_batches"]

MODES = ("chunk", "truncate")
TOKENIZE_GROUP = 256  # documents tokenized per call
GROUP_CHARS = 1 << 21  # characters tokenized per call, at most (a piece more, once)
_NO_LIMIT = 10**9  # transformers' "unknown" model_max_length is ~1e30


def _special_wrap(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The token ids the tokenizer puts before and after a single sequence."""
    full = tokenizer("a")["input_ids"]
    body = tokenizer("a", add_special_tokens=False)["input_ids"]
    for i in range(len(full) - len(body) + 1):
        if full[i : i + len(body)] == body:
            return list(full[:i]), list(full[i + len(body) :])
    return [], []


def _check_limits(tokenizer: Any, context_length: int, max_length: int | None) -> None:
    limits = {"the tokenizer's model_max_length": getattr(tokenizer, "model_max_length", None)}
    limits["max_length (the model's context)"] = max_length
    for name, limit in limits.items():
        if limit is not None and limit < _NO_LIMIT and context_length > limit:
            raise ValueError(
                f"context_length {context_length} exceeds {name} ({limit}); "
                f"use context_length <= {limit}"
            )


def tokenizer_hash(tokenizer: Any) -> str:
    """A hash of everything that decides a tokenizer's ids: a fast tokenizer's whole
    definition (normaliser, pre-tokenizer, model, post-processor, added tokens: its
    `to_str()` JSON), else its vocabulary, plus its class and special tokens."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        h.update(backend.to_str().encode())
    else:
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        h.update(json.dumps(sorted(vocab.items())).encode())
    special = {
        "class": type(tokenizer).__name__,
        "special_tokens": getattr(tokenizer, "special_tokens_map", {}),
        "ids": [getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "pad", "unk")],
    }
    h.update(json.dumps(special, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


class TextBatches:
    """Deterministic batches of right-padded token contexts (input_ids + attention_mask)
    from documents; `iter_from(k)` (or start_batch=k) resumes at batch k.

    max_length: the model's context (e.g. config.n_positions), checked like the
    tokenizer's model_max_length. texts: anything `as_documents` reads (lists of
    strings or dicts, a `datasets.Dataset`, generators and IterableDatasets, which are
    read lazily and once) or what `open_documents` opened; dicts give their
    `text_field`. A row whose text is not a non-empty string is refused with its row
    number; skip_invalid=True passes over such rows and prints their count.
    """

    def __init__(
        self,
        texts: Sequence[str] | Iterable[Any] | Documents,
        tokenizer: Any,
        *,
        context_length: int,
        batch_size: int,
        mode: str = "chunk",
        prepend_bos: bool = False,
        max_length: int | None = None,
        start_batch: int = 0,
        text_field: str = "text",
        skip_invalid: bool | None = None,
    ) -> None:
        docs = as_documents(texts, text_field, skip_invalid=skip_invalid)
        if docs.sized and len(docs) == 0:
            raise ValueError("the data source is empty: texts has no documents")
        if isinstance(docs.rows, (list, tuple)) and not docs.skip_invalid:
            for _ in docs.texts():  # a list is checked whole, before any work
                pass
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
        if batch_size < 1 or start_batch < 0:
            raise ValueError(
                f"need batch_size >= 1 and start_batch >= 0, got {batch_size}, {start_batch}"
            )
        _check_limits(tokenizer, context_length, max_length)
        self.prefix, self.suffix = _special_wrap(tokenizer)
        if prepend_bos:
            bos = getattr(tokenizer, "bos_token_id", None)
            if bos is None:
                raise ValueError("prepend_bos=True but the tokenizer has no bos_token_id")
            if self.prefix[:1] != [bos]:
                self.prefix = [bos, *self.prefix]
        self.body = context_length - len(self.prefix) - len(self.suffix)
        if self.body < 1:
            raise ValueError(
                f"context_length {context_length} leaves no room for text after "
                f"{len(self.prefix) + len(self.suffix)} special tokens"
            )
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        self.docs, self.tokenizer, self.mode = docs, tokenizer, mode
        self.context_length, self.batch_size = context_length, batch_size
        self.start_batch = start_batch
        n = f"{len(docs)} documents" if docs.sized else "streamed documents"
        self.description = f"text: {n}, {mode} to {context_length} tokens, batch {batch_size}"

    @property
    def texts(self) -> Documents:
        """The documents these batches are cut from."""
        return self.docs

    def fingerprint(self) -> dict[str, Any]:
        """What decides these batches' tokens, for a store to check on resume: the
        tokenizer's whole definition (`tokenizer_hash`; its name or path is recorded, not
        compared), context length, batch size, mode, special tokens and the document
        count (a stream's is unknown). The documents' text is checked by the capture,
        which hashes every input batch it reads (sae_hooks.store.fingerprint)."""
        tok = self.tokenizer
        return {
            "tokenizer": str(getattr(tok, "name_or_path", "") or type(tok).__name__),
            "tokenizer_sha256": tokenizer_hash(tok),
            "context_length": self.context_length,
            "batch_size": self.batch_size,
            "mode": self.mode,
            "special_tokens": [self.prefix, self.suffix, self.pad_id],
            **self.docs.fingerprint(),
        }

    def _jumps(self) -> bool:
        """Truncate mode over a sized corpus with no skipped rows: batch k starts at
        document k * batch_size, so a resume goes there directly."""
        return self.mode == "truncate" and self.docs.sized and not self.docs.can_skip_rows()

    def __len__(self) -> int:
        if not self._jumps():
            raise TypeError("the number of batches is known only after tokenizing")
        return max(0, math.ceil(len(self.docs) / self.batch_size) - self.start_batch)

    def __iter__(self) -> Iterator[InputBatch]:
        return self.iter_from(self.start_batch)

    def _groups(self, first_row: int) -> Iterator[list[tuple[str, Iterator[str]]]]:
        """(first piece, the rest of the pieces) of each document from `first_row` on, a
        group at a time: TOKENIZE_GROUP documents or GROUP_CHARS characters."""
        group: list[tuple[str, Iterator[str]]] = []
        chars = 0
        for _, text in self.docs.texts(first_row):
            pieces = text_pieces(text, PIECE_CHARS)
            first = next(pieces)
            group.append((first, pieces))
            chars += len(first)
            if len(group) == TOKENIZE_GROUP or chars >= GROUP_CHARS:
                yield group
                group, chars = [], 0
        if group:
            yield group

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        # Documents and pieces, split below: their length is not the model's input length.
        return self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def _more_ids(self, rest: Iterator[str]) -> Iterator[list[int]]:
        """The ids of a long document's later pieces, GROUP_CHARS of text per call."""
        per_call = max(1, GROUP_CHARS // PIECE_CHARS)
        while batch := [p for _, p in zip(range(per_call), rest)]:
            yield from self._tokenize(batch)

    def _windows(self, ids: list[int], rest: Iterator[str]) -> Iterator[list[int]]:
        """The bodies of one document's contexts: consecutive `body`-token windows of its
        ids (chunk) or the first one (truncate), tokenising later pieces as needed."""
        body, buffer = self.body, list(ids)
        more = self._more_ids(rest)
        while True:
            if self.mode == "truncate" and len(buffer) >= body:
                yield buffer[:body]
                return
            full = len(buffer) // body * body
            if self.mode == "chunk" and full:
                yield from (buffer[s : s + body] for s in range(0, full, body))
                buffer = buffer[full:]
            nxt = next(more, None)
            if nxt is None:
                break
            buffer.extend(nxt)
        if buffer or self.mode == "truncate":  # truncate: one context per document
            yield buffer

    def _contexts(self, first_row: int) -> Iterator[list[int]]:
        for group in self._groups(first_row):
            encoded = self._tokenize([first for first, _ in group])
            for ids, (_, rest) in zip(encoded, group):
                for window in self._windows(ids, rest):
                    yield [*self.prefix, *window, *self.suffix]

    def iter_from(self, batch: int) -> Iterator[InputBatch]:
        """Batches from index `batch` on. Truncate mode over a sized corpus with no
        skipped rows jumps there; otherwise the skipped documents are re-tokenized (no
        model work) to count their contexts."""
        skip = batch * self.batch_size
        first_row = 0
        if self._jumps():
            first_row, skip = self.docs.start + min(skip, len(self.docs)), 0
        contexts = self._contexts(first_row)
        for _ in zip(range(skip), contexts):
            pass
        index, pending = batch, []
        for ctx in contexts:
            pending.append(ctx)
            if len(pending) == self.batch_size:
                yield self._collate(pending, index)
                index, pending = index + 1, []
        if pending:
            yield self._collate(pending, index)

    def _collate(self, contexts: list[list[int]], index: int) -> InputBatch:
        width = max(map(len, contexts))
        ids = torch.full((len(contexts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(contexts), width), dtype=torch.long)
        for row, ctx in enumerate(contexts):
            ids[row, : len(ctx)] = torch.tensor(ctx, dtype=torch.long)
            mask[row, : len(ctx)] = 1
        inputs = {"input_ids": ids, "attention_mask": mask}
        return InputBatch(inputs, doc_offset=index * self.batch_size, index=index)


text_batches = TextBatches  # the functional spelling of the same constructor
