"""Token contexts from a list of documents.

Two ways to fit a document into contexts of `context_length` tokens:
- "chunk" (default): split it into consecutive contexts, so every token is seen
  once; the last context of a document is shorter and padded. Activation stores
  want every token, and no context crosses a document boundary.
- "truncate": keep its first `context_length` tokens, one context per document.
Special tokens the tokenizer adds (BERT's [CLS] ... [SEP], Llama's BOS) wrap every
context and count toward context_length. doc_index/doc_offset count contexts in
order; in "truncate" mode that is the document index.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from sae_hooks.data.batch import InputBatch

MODES = ("chunk", "truncate")
_TOKENIZE_GROUP = 256  # documents tokenized per call
_NO_LIMIT = 10**9  # transformers' "unknown" model_max_length is ~1e30


def pydoc_texts(n: int | None = None, min_chars: int = 80) -> list[str]:
    """Real English paragraphs shipped with every CPython (the language reference)."""
    from pydoc_data.topics import topics

    paras = [p.strip() for t in topics.values() for p in t.split("\n\n")]
    paras = [p for p in paras if len(p) >= min_chars]
    return paras[:n] if n else paras


def _special_wrap(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The token ids the tokenizer puts before and after a single sequence."""
    full = tokenizer("a")["input_ids"]
    body = tokenizer("a", add_special_tokens=False)["input_ids"]
    for i in range(len(full) - len(body) + 1):
        if full[i : i + len(body)] == body:
            return list(full[:i]), list(full[i + len(body) :])
    return [], []


class TextBatches:
    """Deterministic batches of right-padded token contexts (input_ids + attention_mask)
    from documents; `iter_from(k)` (or start_batch=k) resumes at batch k.

    max_length: the model's context (e.g. config.n_positions), checked like the
    tokenizer's model_max_length.
    """

    def __init__(
        self,
        texts: Sequence[str],
        tokenizer: Any,
        *,
        context_length: int,
        batch_size: int,
        mode: str = "chunk",
        prepend_bos: bool = False,
        max_length: int | None = None,
        start_batch: int = 0,
    ) -> None:
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError("texts must be a sequence of strings (a list of documents)")
        if len(texts) == 0:
            raise ValueError("the data source is empty: texts has no documents")
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t:
                raise ValueError(f"document {i} is {t!r}; every document must be a non-empty str")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
        if batch_size < 1 or start_batch < 0:
            raise ValueError(
                f"need batch_size >= 1 and start_batch >= 0, got {batch_size}, {start_batch}"
            )
        limits = {"the tokenizer's model_max_length": getattr(tokenizer, "model_max_length", None)}
        limits["max_length (the model's context)"] = max_length
        for name, limit in limits.items():
            if limit is not None and limit < _NO_LIMIT and context_length > limit:
                raise ValueError(
                    f"context_length {context_length} exceeds {name} ({limit}); "
                    f"use context_length <= {limit}"
                )
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
        self.texts, self.tokenizer, self.mode = texts, tokenizer, mode
        self.context_length, self.batch_size, self.start_batch = (
            context_length,
            batch_size,
            start_batch,
        )
        self.description = (
            f"text: {len(texts)} documents, {mode} to {context_length} tokens, batch {batch_size}"
        )

    def fingerprint(self) -> dict[str, Any]:
        """What decides these batches' tokens, for a store to check on resume: the
        tokenizer (name and a hash of its vocabulary), context length, batch size, mode,
        and the documents (their count and a hash of up to 1024 spread over them)."""
        tok = self.tokenizer
        vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
        step = max(1, len(self.texts) // 1024)
        docs = hashlib.sha256()
        for t in self.texts[::step]:
            docs.update(hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest())
        return {
            "tokenizer": str(getattr(tok, "name_or_path", "") or type(tok).__name__),
            "vocab": hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()[:16],
            "context_length": self.context_length,
            "batch_size": self.batch_size,
            "mode": self.mode,
            "special_tokens": [self.prefix, self.suffix],
            "documents": len(self.texts),
            "documents_hash": docs.hexdigest()[:16],
        }

    def __len__(self) -> int:
        if self.mode != "truncate":
            raise TypeError("the number of 'chunk' batches is known only after tokenizing")
        return max(0, math.ceil(len(self.texts) / self.batch_size) - self.start_batch)

    def __iter__(self) -> Iterator[InputBatch]:
        return self.iter_from(self.start_batch)

    def _contexts(self, first_doc: int) -> Iterator[list[int]]:
        for g in range(first_doc, len(self.texts), _TOKENIZE_GROUP):
            group = list(self.texts[g : g + _TOKENIZE_GROUP])
            # Whole documents, split below: their length is not the model's input length.
            encoded = self.tokenizer(group, add_special_tokens=False, verbose=False)
            for ids in encoded["input_ids"]:
                pieces = range(0, len(ids), self.body) if self.mode == "chunk" else [0]
                for s in pieces:
                    yield [*self.prefix, *ids[s : s + self.body], *self.suffix]

    def iter_from(self, batch: int) -> Iterator[InputBatch]:
        """Batches from index `batch` on. Truncate mode jumps there; chunk mode re-tokenizes
        the skipped documents (no model work) to count their contexts."""
        skip = batch * self.batch_size
        first_doc = skip if self.mode == "truncate" else 0
        contexts = self._contexts(min(first_doc, len(self.texts)))
        if self.mode == "chunk":
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


def load_texts(spec: str | os.PathLike) -> list[str]:
    """Documents from "pydoc" (CPython's bundled docs), a .txt file (paragraphs split on
    blank lines), a .jsonl file (its "text" fields) or a directory of .txt files."""
    if str(spec) == "pydoc":
        return pydoc_texts()
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise ValueError(f"{path} holds no .txt files")
        docs = [_read_utf8(f) for f in files]
    elif path.suffix == ".jsonl" and path.is_file():
        docs = [
            _jsonl_text(path, i, line) for i, line in enumerate(_read_utf8(path).splitlines(), 1)
        ]
        docs = [d for d in docs if d is not None]
    elif path.is_file():
        docs = [p.strip() for p in _read_utf8(path).split("\n\n")]
    else:
        raise FileNotFoundError(
            f"no text data at {path}; give 'pydoc', a .txt or .jsonl file, or a directory of .txt files"
        )
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ValueError(f"{path} holds no text")
    return docs


def _read_utf8(path: Path) -> str:
    """A text file's contents; a file that is not UTF-8 is named with the offending byte."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        bad = err.object[err.start : err.start + 1].hex()
        raise ValueError(
            f"{path} is not UTF-8 text (byte 0x{bad} at offset {err.start}); "
            "convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None


def _jsonl_text(path: Path, lineno: int, line: str) -> str | None:
    """The "text" string of one .jsonl line (None for a blank line)."""
    if not line.strip():
        return None
    try:
        text = json.loads(line)["text"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(
            f'{path}:{lineno}: each line must be a JSON object with a "text" field'
        ) from None
    if not isinstance(text, str):
        raise ValueError(
            f'{path}:{lineno}: "text" must be a string, got {type(text).__name__} {text!r}'
        )
    return text
