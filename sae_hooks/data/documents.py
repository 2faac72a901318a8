"""The documents of a corpus, read lazily, each with its row number in the source.

Any iterable of documents is a corpus: a list of strings or dicts, a Hugging Face
`datasets.Dataset` (read in blocks of rows, never copied whole), a generator or a
`datasets.IterableDataset` (read once, in order, as it streams). A row's text is a
string, or a dict's `text_field`. A row whose text is not a non-empty string is refused
with its row number, or, with `skip_invalid`, passed over and counted (the count is
printed when a pass over the corpus ends); row numbers always count the source's rows,
skipped ones included.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

READ_BLOCK = 256  # rows read per access to a map-style dataset


def _is_sized(source: Any) -> bool:
    """Random access by row (list, datasets.Dataset), as opposed to a stream."""
    if isinstance(source, (Mapping, str, bytes)):
        return False
    return hasattr(source, "__len__") and hasattr(source, "__getitem__")


@dataclass(frozen=True)
class Documents:
    """Rows `start` to `stop` of `rows` (a map-style source: list, Dataset) or all rows of
    a stream (generator, IterableDataset), as (row number, text) pairs.

    `held_out_every` n > 0 keeps the rows with row % n != n - 1 (a stream's training
    part), n < 0 only those with row % |n| == |n| - 1 (its held-out part). `skip_blank`
    passes over strings with no visible character silently (files split into paragraphs,
    corpora with empty rows: they carry no text); `skip_invalid` passes over rows whose
    text is not a non-empty string and prints their count.
    """

    rows: Any
    text_field: str = "text"
    skip_invalid: bool = False
    skip_blank: bool = False
    start: int = 0
    stop: int | None = None
    held_out_every: int = 0
    description: str = ""
    source: str = ""  # what the corpus was opened from, for a run's record

    @property
    def sized(self) -> bool:
        return _is_sized(self.rows)

    def __len__(self) -> int:
        """Rows in the corpus (skipped ones included); a stream's count is unknown."""
        if not self.sized:
            raise TypeError("a streamed corpus has no known length")
        return self._stop() - self.start

    def __bool__(self) -> bool:
        return True  # a corpus, even a stream of unknown length (emptiness is checked apart)

    def _stop(self) -> int:
        n = len(self.rows)
        return n if self.stop is None else min(self.stop, n)

    def with_options(self, **changes: Any) -> Documents:
        """The same corpus with some fields changed (a part of it, a skip flag)."""
        return replace(self, **changes)

    def can_skip_rows(self) -> bool:
        """Whether some rows may give no document (so row k is not document k)."""
        return self.skip_invalid or self.skip_blank or self.held_out_every != 0

    def texts(self, first_row: int = 0) -> Iterator[tuple[int, str]]:
        """(row number, text) of the documents from row `first_row` on; a stream is read
        from its start and a generator only once."""
        skipped = [0]  # the count, then the first rows skipped
        seen = False
        try:
            for row, text in self._raw(first_row):
                seen = True
                if not self._wanted(row):
                    continue
                if isinstance(text, str) and text and not (self.skip_blank and text.isspace()):
                    yield row, text
                elif not self._passes_over(row, text, skipped):
                    where = f" of {self.description}" if self.description else ""
                    raise ValueError(
                        f"document {row}{where} is {_shown(text)}; every document must be a "
                        "non-empty str (skip such rows with skip_invalid=True / "
                        "--skip-invalid-rows)"
                    )
        finally:
            if skipped[0]:
                more = ", ..." if skipped[0] > len(skipped) - 1 else ""
                print(
                    f"skipped {skipped[0]} rows whose text is not a non-empty string "
                    f"(rows {', '.join(map(str, skipped[1:]))}{more})",
                    file=sys.stderr,
                )
        if not seen and not self.sized:
            raise ValueError(
                "the data source is empty: the stream yielded no documents (a generator is "
                "read once; pass a list or a dataset to iterate again)"
            )

    def _wanted(self, row: int) -> bool:
        n = self.held_out_every
        if n == 0:
            return True
        held = row % abs(n) == abs(n) - 1
        return held if n < 0 else not held

    def _passes_over(self, row: int, text: Any, skipped: list[int]) -> bool:
        if isinstance(text, str) and self.skip_blank:
            return True  # blank: no text to tokenise
        if self.skip_invalid:
            skipped[0] += 1
            if len(skipped) <= 10:
                skipped.append(row)
            return True
        return False

    def _raw(self, first_row: int) -> Iterator[tuple[int, Any]]:
        """(row number, text or other value) of every row from `first_row` on."""
        if self.sized:
            stop = self._stop()
            for lo in range(max(first_row, self.start), stop, READ_BLOCK):
                hi = min(lo + READ_BLOCK, stop)
                yield from zip(range(lo, hi), read_rows(self.rows, lo, hi, self.text_field))
            return
        for row, item in enumerate(self.rows):
            if row >= first_row:
                yield row, row_text(item, self.text_field, row)

    def fingerprint(self) -> dict[str, Any]:
        """The row count (a stream: nothing). The documents' text is checked by the
        capture, which hashes every input batch it reads (sae_hooks.store.fingerprint)."""
        return {"documents": len(self)} if self.sized else {}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_rows(rows: Any, lo: int, hi: int, field: str) -> list[Any]:
    """The texts of rows [lo, hi) of a map-style source: a Dataset's slice is a dict of
    columns; a list's is a list of strings or dicts."""
    block = rows[lo:hi]
    if isinstance(block, Mapping):
        if field not in block:
            raise ValueError(_missing_field(field, sorted(block), "columns"))
        return list(block[field])
    return [row_text(item, field, lo + i) for i, item in enumerate(block)]


def row_text(item: Any, field: str, row: int) -> Any:
    """A row's text: the row itself, or a dict row's `field`."""
    if isinstance(item, Mapping):
        if field not in item:
            raise ValueError(_missing_field(field, sorted(item), "fields", row))
        return item[field]
    return item


def _missing_field(field: str, names: list[str], kind: str, row: int | None = None) -> str:
    where = "the dataset" if row is None else f"document {row}"
    return (
        f"{where} has no {field!r} field ({kind}: {', '.join(map(str, names)) or 'none'}); "
        "choose one with text_field= / --text-field"
    )


def _check_columns(source: Any, field: str) -> None:
    """A dataset whose columns are known must have the text field (checked before any
    row is read)."""
    names = getattr(source, "column_names", None)
    if isinstance(names, list) and names and field not in names:
        raise ValueError(_missing_field(field, names, "columns"))


def as_documents(
    source: Any, text_field: str = "text", *, skip_invalid: bool | None = None
) -> Documents:
    """Documents from a list of strings or dicts, a `datasets.Dataset` (its `text_field`
    column), or any iterable of strings or dicts, generators and `datasets.IterableDataset`
    included (read lazily). A Documents passes through (with `skip_invalid` set if given)."""
    if isinstance(source, Documents):
        return source if skip_invalid is None else source.with_options(skip_invalid=skip_invalid)
    if isinstance(source, (str, bytes)):
        raise TypeError(
            "texts is a single string; give documents: a list of strings, a dataset, or an "
            "iterable of strings or dicts (open_documents reads files and hub datasets)"
        )
    if isinstance(source, Mapping):
        keys = ", ".join(map(str, source))
        raise TypeError(
            f"texts is a mapping ({type(source).__name__} with keys {keys}); for a DatasetDict "
            "give one split, e.g. ds['train'] (open_documents(..., split=) picks one)"
        )
    if not _is_sized(source) and not isinstance(source, Iterable):
        raise TypeError(
            f"cannot read documents from {type(source).__name__}; give a list of strings, a "
            "dataset, or an iterable of strings or dicts"
        )
    _check_columns(source, text_field)
    return Documents(source, text_field, skip_invalid=bool(skip_invalid))
