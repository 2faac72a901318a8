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
import itertools
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
    tokenizer's model_max_length. texts: anything `as_documents` reads (lists of
    strings or dicts, a `datasets.Dataset`, generators and IterableDatasets, which are
    read lazily and once); dicts give their `text_field`.
    """

    def __init__(
        self,
        texts: Sequence[str] | Iterable[Any],
        tokenizer: Any,
        *,
        context_length: int,
        batch_size: int,
        mode: str = "chunk",
        prepend_bos: bool = False,
        max_length: int | None = None,
        start_batch: int = 0,
        text_field: str = "text",
    ) -> None:
        texts = as_documents(texts, text_field)
        if isinstance(texts, Sequence):
            if len(texts) == 0:
                raise ValueError("the data source is empty: texts has no documents")
            for i, t in enumerate(texts):
                _check_document(i, t)
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
        n = f"{len(texts)} documents" if isinstance(texts, Sequence) else "streamed documents"
        self.description = f"text: {n}, {mode} to {context_length} tokens, batch {batch_size}"

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
        if self.mode != "truncate" or not isinstance(self.texts, Sequence):
            raise TypeError("the number of batches is known only after tokenizing")
        return max(0, math.ceil(len(self.texts) / self.batch_size) - self.start_batch)

    def __iter__(self) -> Iterator[InputBatch]:
        return self.iter_from(self.start_batch)

    def _groups(self, first_doc: int) -> Iterator[list[str]]:
        """Documents from `first_doc` on, _TOKENIZE_GROUP at a time (a stream is read once)."""
        if isinstance(self.texts, Sequence):
            for g in range(first_doc, len(self.texts), _TOKENIZE_GROUP):
                yield list(self.texts[g : g + _TOKENIZE_GROUP])
            return
        stream = enumerate(self.texts)
        seen = False
        while group := list(itertools.islice(stream, _TOKENIZE_GROUP)):
            seen = True
            docs = [_check_document(i, t) for i, t in group if i >= first_doc]
            if docs:
                yield docs
        if not seen:
            raise ValueError(
                "the data source is empty: the stream yielded no documents (a generator is "
                "read once; pass a list or a dataset to iterate again)"
            )

    def _contexts(self, first_doc: int) -> Iterator[list[int]]:
        for group in self._groups(first_doc):
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
        if isinstance(self.texts, Sequence):
            first_doc = min(first_doc, len(self.texts))
        contexts = self._contexts(first_doc)
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


def _check_document(i: int, text: Any) -> str:
    if not isinstance(text, str) or not text:
        raise ValueError(f"document {i} is {text!r}; every document must be a non-empty str")
    return text


class _Column(Sequence):
    """One text column of a map-style dataset (Hugging Face `datasets.Dataset` or any
    sequence of dicts), read row by row without copying the corpus."""

    def __init__(self, rows: Any, field: str) -> None:
        self.rows, self.field = rows, field

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return _field(self.rows[index], self.field, index)


def _field(row: Any, field: str, index: int) -> Any:
    if isinstance(row, str):
        return row
    if isinstance(row, Mapping):
        if field not in row:
            raise ValueError(
                f"document {index} has no {field!r} field (fields: {sorted(row)}); "
                "choose one with text_field= / --text-field"
            )
        return row[field]
    return row


def as_documents(source: Any, text_field: str = "text") -> Sequence[str] | Iterable[str]:
    """Documents from a list of strings, a sequence of dicts or a Hugging Face
    `datasets.Dataset` (its `text_field` column), or any iterable of either, including
    generators and `datasets.IterableDataset` streams (read lazily, once)."""
    if isinstance(source, (str, bytes)):
        raise TypeError(
            "texts is a single string; give documents: a list of strings, a dataset, or an "
            "iterable of strings or dicts (load_texts reads files)"
        )
    if isinstance(source, Sequence) and (len(source) == 0 or isinstance(source[0], str)):
        return source
    if hasattr(source, "__len__") and hasattr(source, "__getitem__"):
        return _Column(source, text_field)  # datasets.Dataset, list of dicts
    if isinstance(source, Iterable):
        return (_field(row, text_field, i) for i, row in enumerate(source))
    raise TypeError(
        f"cannot read documents from {type(source).__name__}; give a list of strings, a "
        "dataset, or an iterable of strings or dicts"
    )


DATASET_SUFFIXES = (".parquet", ".csv", ".arrow", ".json")


def load_texts(spec: str | os.PathLike, text_field: str = "text") -> list[str]:
    """Documents from "pydoc" (CPython's bundled docs), a .txt file (paragraphs split on
    blank lines), a .jsonl file (its `text_field` values), a directory of .txt files, a
    dataset saved with `datasets` (save_to_disk) or a .parquet/.csv/.arrow/.json file
    (read with Hugging Face `datasets` when it is installed)."""
    if str(spec) == "pydoc":
        return pydoc_texts()
    path = Path(spec).expanduser()
    if path.is_dir() and any((path / n).is_file() for n in ("dataset_info.json", "state.json")):
        docs = list(_Column(_hf_dataset(path, None), text_field))
    elif path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise ValueError(f"{path} holds no .txt files (nor a dataset saved with save_to_disk)")
        docs = [_read_text(f) for f in files]
    elif path.suffix == ".jsonl" and path.is_file():
        docs = []
        for i, line in enumerate(_read_text(path).splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    value = row[text_field]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ValueError(
                        f"{path}:{i}: each line must be a JSON object with a {text_field!r} "
                        "field (choose the field with --text-field)"
                    ) from None
                if not isinstance(value, str):
                    raise ValueError(
                        f"{path}:{i}: {text_field!r} must be a string, "
                        f"got {type(value).__name__} {value!r}"
                    )
                docs.append(value)
    elif path.suffix in DATASET_SUFFIXES and path.is_file():
        docs = list(_Column(_hf_dataset(path, path.suffix.lstrip(".")), text_field))
    elif path.is_file():
        docs = [p.strip() for p in _read_text(path).split("\n\n")]
    else:
        raise FileNotFoundError(
            f"no text data at {path}; give 'pydoc', a .txt or .jsonl file, a directory of "
            ".txt files, or a dataset (save_to_disk directory, .parquet, .csv)"
        )
    docs = [d for d in docs if isinstance(d, str) and d.strip()]
    if not docs:
        raise ValueError(f"{path} holds no text")
    return docs


def _read_text(path: Path) -> str:
    """A text file's contents; a file that is not UTF-8 is named with the offending byte."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        bad = err.object[err.start : err.start + 1].hex()
        raise ValueError(
            f"{path} is not UTF-8 text (byte 0x{bad} at offset {err.start}); "
            "convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None


def _hf_dataset(path: Path, kind: str | None) -> Any:
    """A local dataset through Hugging Face `datasets` (never the network)."""
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"{path} is a dataset file; reading it needs the `datasets` package (pip install datasets)"
        ) from None
    if kind is None:
        loaded = datasets.load_from_disk(str(path))
    else:
        loaded = datasets.load_dataset(kind, data_files=str(path), split="train")
    if isinstance(loaded, datasets.DatasetDict):
        loaded = loaded["train"] if "train" in loaded else next(iter(loaded.values()))
    return loaded
