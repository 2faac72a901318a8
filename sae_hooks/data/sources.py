"""Open a data source named by a string: the one reader behind `--data`.

`open_documents(spec)` takes "pydoc" (CPython's bundled docs), a local file (.txt:
paragraphs split on blank lines; .jsonl: one JSON object a line; .json, .parquet,
.csv, .arrow: read with Hugging Face `datasets`), a folder of .txt files (one document
a file), a dataset saved with `save_to_disk` (a Dataset, or a DatasetDict and a split),
or a Hugging Face hub dataset id (`datasets.load_dataset(id, split=, streaming=)`: the
first use downloads into the datasets cache; with HF_HUB_OFFLINE=1 /
HF_DATASETS_OFFLINE=1 the cache is read). Nothing is tokenised here and, except for
.txt and .jsonl files (read whole), nothing is read before it is needed.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sae_hooks.data.documents import Documents, as_documents
from sae_hooks.jsonio import loads

DATASET_SUFFIXES = (".parquet", ".csv", ".arrow", ".json")
TEXT_SUFFIXES = (".txt", ".jsonl", *DATASET_SUFFIXES)
DEFAULT_SPLIT = "train"  # the split taken when a source has several and none is named
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
ACCEPTED = (
    "give 'pydoc', a .txt/.jsonl/.json/.parquet/.csv file, a folder of .txt files, a "
    "dataset saved with save_to_disk, or a Hugging Face hub dataset id"
)


def pydoc_texts(n: int | None = None, min_chars: int = 80) -> list[str]:
    """Real English paragraphs shipped with every CPython (the language reference)."""
    from pydoc_data.topics import topics

    paras = [p.strip() for t in topics.values() for p in t.split("\n\n")]
    paras = [p for p in paras if len(p) >= min_chars]
    return paras[:n] if n else paras


def open_documents(
    spec: str | os.PathLike,
    *,
    split: str | None = None,
    text_field: str = "text",
    streaming: bool = False,
    skip_invalid: bool = False,
    revision: str | None = None,
) -> Documents:
    """The documents of a data source, opened lazily (see the module docstring).

    split: the split of a DatasetDict or hub dataset (default: "train" if it has one,
    else its only split). streaming: read a hub dataset or a .json/.parquet/.csv file as
    an IterableDataset, row by row, without preparing it in the datasets cache first.
    skip_invalid: pass over rows whose text is not a non-empty string (and print their
    count) instead of refusing them. Rows whose text is blank are passed over silently.
    """
    docs = _open(str(spec), split, text_field, streaming, revision, skip_invalid)
    docs = docs.with_options(skip_invalid=skip_invalid, skip_blank=True)
    if docs.sized and len(docs) == 0:
        raise ValueError(f"the data source {docs.description} is empty: it has no rows")
    return docs


def _open(
    spec: str,
    split: str | None,
    field: str,
    streaming: bool,
    revision: str | None,
    skip_invalid: bool,
) -> Documents:
    if spec == "pydoc":
        return Documents(pydoc_texts(), field, description="pydoc", source="pydoc")
    path = Path(spec).expanduser()
    if path.exists():
        rows, what = _local_rows(path, split, field, streaming, skip_invalid)
        docs = as_documents(rows, field)
        return docs.with_options(description=what, source=str(path.resolve()))
    if path.suffix.lower() in TEXT_SUFFIXES or not _HUB_ID.match(spec):
        raise FileNotFoundError(f"no text data at {path}; {ACCEPTED}")
    rows, chosen = _hub_rows(spec, split, streaming, revision)
    docs = as_documents(rows, field)
    streamed = ", streamed" if streaming else ""
    return docs.with_options(description=f"{spec} (split {chosen}{streamed})", source=spec)


def _local_rows(
    path: Path, split: str | None, field: str, streaming: bool, skip_invalid: bool
) -> tuple[Any, str]:
    """(the rows of a local source, a description of it)."""
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        loaded = _load_from_disk(path)
        chosen = choose_split(list(loaded), split, str(path))
        return loaded[chosen], f"{path} (split {chosen})"
    if path.is_dir() and any((path / n).is_file() for n in ("dataset_info.json", "state.json")):
        _no_split(split, path)
        return _load_from_disk(path), str(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ValueError(
                f"{path} holds no .txt files (nor a dataset saved with save_to_disk); {ACCEPTED}"
            )
        _no_split(split, path)
        return TextFiles(files), f"{path} ({len(files)} .txt files)"
    _no_split(split, path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path, field, skip_invalid), str(path)
    if suffix in DATASET_SUFFIXES:
        kind = suffix.lstrip(".")
        load = _datasets(path).load_dataset
        return load(kind, data_files=str(path), split="train", streaming=streaming), str(path)
    rows = [p for p in (q.strip() for q in read_text(path).split("\n\n")) if p]
    if not rows:
        raise ValueError(f"{path} holds no text")
    return rows, str(path)


def _load_from_disk(path: Path) -> Any:
    """A dataset saved with save_to_disk; one saved with no rows (which datasets fails to
    load with an IndexError) is named as empty."""
    try:
        return _datasets(path).load_from_disk(str(path))
    except IndexError:
        states = [path / "state.json", *path.glob("*/state.json")]
        files = [f for s in states if s.is_file() for f in json.loads(s.read_text())["_data_files"]]
        if files:
            raise
        raise ValueError(f"the data source {path} is empty: it has no rows") from None


def _no_split(split: str | None, path: Path) -> None:
    if split is not None:
        raise ValueError(
            f"split {split!r} given, but {path} has no splits (only a saved DatasetDict or a "
            "hub dataset has); drop split= / --split"
        )


def choose_split(splits: Sequence[str], split: str | None, where: str) -> str:
    """The split to read: the one asked for, else "train", else the only one."""
    names = ", ".join(splits) or "none"
    if split is not None:
        if split not in splits:
            raise ValueError(f"{where} has no split {split!r}; its splits: {names}")
        return split
    if DEFAULT_SPLIT in splits:
        return DEFAULT_SPLIT
    if len(splits) == 1:
        return splits[0]
    raise ValueError(f"{where} has several splits ({names}); choose one with split= / --split")


def _hub_rows(
    spec: str, split: str | None, streaming: bool, revision: str | None
) -> tuple[Any, str]:
    """(a hub dataset's split as a Dataset or IterableDataset, the split's name)."""
    datasets = _datasets(spec)
    try:
        builder = datasets.load_dataset_builder(spec, revision=revision)
    except (ConnectionError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        hint = (
            " (HF_HUB_OFFLINE is set: only datasets already in the datasets cache can be read)"
            if offline
            else ""
        )
        raise FileNotFoundError(
            f"no text data at {spec}: not a local file or folder, and as a hub dataset id: "
            f"{err}{hint}; {ACCEPTED}"
        ) from None
    splits = list(builder.info.splits or {}) or list(
        getattr(builder.config, "data_files", None) or {}
    )
    chosen = choose_split(splits, split, f"hub dataset {spec}") if splits else split or "train"
    rows = datasets.load_dataset(spec, split=chosen, streaming=streaming, revision=revision)
    return rows, chosen


def _datasets(source: Any) -> Any:
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"{source} is read with the `datasets` package; install it (pip install datasets)"
        ) from None
    return datasets


class TextFiles(Sequence):
    """The .txt files of a folder as documents, one file each, read when asked for."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [read_text(f) for f in self.files[index]]
        return read_text(self.files[index])


def read_jsonl(path: Path, field: str, skip_invalid: bool = False) -> list[str]:
    """The `field` strings of a .jsonl file's lines (blank ones left out); a line that
    is not a JSON object with that field, or whose field is not a string, is refused
    with its line number (or, with skip_invalid, the latter are counted and left out)."""
    values, skipped = [], []
    for i, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = loads(line)[field]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(
                f"{path}:{i}: each line must be a JSON object with a {field!r} "
                "field (choose the field with --text-field)"
            ) from None
        if isinstance(value, str):
            values.append(value)
        elif skip_invalid:
            skipped.append(i)
        else:
            raise ValueError(
                f"{path}:{i}: {field!r} must be a string, got {type(value).__name__} "
                f"{value!r} (skip such rows with skip_invalid=True / --skip-invalid-rows)"
            )
    if skipped:
        print(
            f"skipped {len(skipped)} lines of {path} whose {field!r} is not a string "
            f"(lines {', '.join(map(str, skipped[:10]))}{', ...' if len(skipped) > 10 else ''})",
            file=sys.stderr,
        )
    if not any(v.strip() for v in values):
        raise ValueError(f"{path} holds no text")
    return values


def read_text(path: Path) -> str:
    """A text file's contents; a file that is not UTF-8 is named with the offending byte."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        bad = err.object[err.start : err.start + 1].hex()
        raise ValueError(
            f"{path} is not UTF-8 text (byte 0x{bad} at offset {err.start}); "
            "convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None


def load_texts(spec: str | os.PathLike, text_field: str = "text", **options: Any) -> list[str]:
    """Every document of `open_documents(spec, ...)`, as a list of strings."""
    texts = [text for _, text in open_documents(spec, text_field=text_field, **options).texts()]
    if not texts:
        raise ValueError(f"{spec} holds no text")
    return texts
