"""Long texts cut into pieces that tokenise, one by one, to the whole text's token ids.

Tokenising a document whole holds all of its tokens (and the tokenizer's per-token
offsets) at once: a 65 MB paragraph took gigabytes. A text longer than `max_chars` is
cut instead into pieces of at most `max_chars` characters, and the pieces' ids are
concatenated. Where a piece ends decides whether that concatenation equals the whole
text's ids:

- Preferred cut: right before a lone space between two non-space characters ("a b" is
  cut as "a" + " b"). Byte-level BPE tokenizers (GPT-2, RoBERTa, Llama 3, Qwen,
  Pythia) split their pre-tokens before a space that leads a word (GPT-2's
  ` ?\\p{L}+`), WordPiece (BERT, MiniLM) splits at every whitespace and SentencePiece's
  Metaspace turns the space into the "▁" that starts the next word: no token spans
  such a cut, and the ids are exactly those of the whole text.
- Else right before the last whitespace character of a run that is followed by a
  non-space character ("a \\n\\nb" as "a \\n" + "\\nb"): exact for GPT-2's pattern,
  which keeps the run's last character with what follows; a tokenizer that makes one
  token of a newline run (Llama 3's `\\s*[\\r\\n]+`) can differ here.
- A window of `max_chars` with no whitespace at all (a base64 blob, unspaced CJK text)
  is cut at `max_chars`: the tokens at that cut may differ from the whole text's.

A text of at most `max_chars` characters is one piece: its ids are the whole text's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

PIECE_CHARS = 1 << 16  # characters per piece of a long document
_LONE_SPACE = re.compile(r"(?<=\S) (?=\S)")
_RUN_END = re.compile(r"\s(?=\S)")
_LOOK_BACK = (256, 4096)  # chars searched for a cut before the whole window


def cut_point(text: str, start: int, end: int) -> int:
    """Where to end the piece that starts at `start` and may reach `end` (exclusive):
    a position in (start, end] chosen as the module docstring says."""
    for pattern in (_LONE_SPACE, _RUN_END):
        for back in (*_LOOK_BACK, end - start):
            lo = max(start + 1, end - back)
            starts = [m.start() for m in pattern.finditer(text, lo, min(end + 1, len(text)))]
            if starts and starts[-1] <= end:
                return starts[-1]
            if lo == start + 1:
                break
    return end


def text_pieces(text: str, max_chars: int = PIECE_CHARS) -> Iterator[str]:
    """`text` in pieces of at most `max_chars` characters (one piece if it is that short)."""
    if max_chars < 2:
        raise ValueError(f"max_chars must be >= 2, got {max_chars}")
    start = 0
    while len(text) - start > max_chars:
        cut = cut_point(text, start, start + max_chars)
        yield text[start:cut]
        start = cut
    yield text[start:]
