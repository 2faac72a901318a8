"""Token ids to display strings, from whatever tokenizer the caller has."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

Decoder = Callable[[Sequence[int]], Sequence[str]]

TOKENIZER_HELP = (
    "a tokenizer is a Hugging Face tokenizer, a local tokenizer directory, "
    "a mapping id -> string, or a callable list[int] -> list[str]"
)


def make_decoder(tokenizer: Any) -> Decoder | None:
    """A function decoding each id on its own (None when no tokenizer is given)."""
    if tokenizer is None:
        return None
    if isinstance(tokenizer, (str, os.PathLike)):
        path = Path(tokenizer).expanduser()
        if not path.is_dir():
            raise ValueError(f"tokenizer path {path} is not a directory; {TOKENIZER_HELP}")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if isinstance(tokenizer, Mapping):
        table = tokenizer
        return lambda ids: [str(table.get(i, f"#{i}")) for i in ids]
    if _is_byte_level(tokenizer):
        return _byte_level_decoder(tokenizer)
    if hasattr(tokenizer, "batch_decode"):
        return _in_context_decoder(tokenizer)
    if callable(tokenizer):
        return tokenizer
    raise TypeError(f"cannot decode tokens with {type(tokenizer).__name__}; {TOKENIZER_HELP}")


class TokenText:
    """Decodes each distinct id once; ids without a decoder read as #id."""

    def __init__(self, tokenizer: Any):
        self._decode = make_decoder(tokenizer)
        self._cache: dict[int, str] = {}

    def prefetch(self, ids: Iterable[int]) -> None:
        todo = sorted({int(i) for i in ids if i >= 0} - self._cache.keys())
        if not todo:
            return
        if self._decode is None:
            texts: Sequence[str] = [f"#{i}" for i in todo]
        else:
            texts = list(self._decode(todo))
            if len(texts) != len(todo):
                raise ValueError(
                    f"the tokenizer decoded {len(todo)} ids into {len(texts)} strings; "
                    "it must return one string per id"
                )
        self._cache.update(zip(todo, map(str, texts)))

    def __getitem__(self, token_id: int) -> str:
        token_id = int(token_id)
        if token_id not in self._cache:
            self.prefetch([token_id])
        return self._cache.get(token_id, f"#{token_id}")


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (bytes_to_unicode)."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = list(keep)
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars)))


UNICODE_TO_BYTE = {c: b for b, c in _byte_to_unicode().items()}


def _is_byte_level(tok: Any) -> bool:
    """GPT-2 style byte-level BPE (tokens spelled in bytes_to_unicode, 'Ġ' = a space)."""
    if hasattr(tok, "byte_encoder"):  # slow GPT2Tokenizer
        return True
    backend = getattr(tok, "backend_tokenizer", None)
    return type(getattr(backend, "decoder", None)).__name__ == "ByteLevel"


def byte_level_text(token: str) -> str:
    """A byte-level token as text: 'Ġthe' -> ' the'; bytes that are not whole UTF-8
    characters (a split multi-byte character) read as \\xNN instead of '?'/'�'."""
    if any(c not in UNICODE_TO_BYTE for c in token):
        return token  # an added/special token, spelled as itself
    raw = bytes(UNICODE_TO_BYTE[c] for c in token)
    return raw.decode("utf-8", errors="backslashreplace")


def _byte_level_decoder(tok: Any) -> Decoder:
    def decode(ids: Sequence[int]) -> list[str]:
        return [byte_level_text(t) for t in tok.convert_ids_to_tokens(list(ids))]

    return decode


def _in_context_decoder(tok: Any) -> Decoder:
    """The text each token adds after another token, leading space included.

    Decoded alone, tokens lose the space they carry (WordPiece "raises" vs "##er",
    SentencePiece "▁the" at the start of a text); decoding the token twice and
    dropping the first copy keeps it, for every tokenizer family alike.
    """

    def decode(ids: Sequence[int]) -> list[str]:
        kw = {"clean_up_tokenization_spaces": False}
        alone = tok.batch_decode([[i] for i in ids], **kw)
        twice = tok.batch_decode([[i, i] for i in ids], **kw)
        return [
            t[len(a) :] if t.startswith(a) and len(t) > len(a) else a for a, t in zip(alone, twice)
        ]

    return decode
