"""Contexts cut from texts, for concept examples: right before a word, or at a random word.

A context cut right before a word is one where the model should predict that word
next; the same texts cut anywhere else are the controls.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any


def fits_context(tokenizer: Any, context_length: int) -> Callable[[str], bool]:
    """Whether a text has words and fits one context whole after a leading BOS token,
    so its last token stays last."""
    room = context_length - 1
    return lambda text: bool(text.strip()) and len(tokenizer(text)["input_ids"]) <= room


def cut_before_word(texts: list[str], word: str, keep: Callable[[str], bool]) -> list[str]:
    """Each text that contains `word`, cut right before its first occurrence."""
    pattern = re.compile(re.escape(word) + r"\b")
    cut = [t[: m.start()] for t in texts if (m := pattern.search(t))]
    return [t for t in cut if keep(t)]


def cut_at_random(texts: list[str], keep: Callable[[str], bool], seed: int = 0) -> list[str]:
    """Each text cut right before a random one of its words (a deterministic choice)."""
    rng = random.Random(seed)
    out = []
    for text in texts:
        spaces = [m.start() for m in re.finditer(" ", text) if m.start() > 0]
        if spaces:
            cut = text[: rng.choice(spaces)]
            if keep(cut):
                out.append(cut)
    return out
