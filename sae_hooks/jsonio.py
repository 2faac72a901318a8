"""JSON read from files sae-hooks did not necessarily write, with one clear error.

Python's parser recurses once per nesting level, so a file of a few thousand `[`
raises RecursionError ("maximum recursion depth exceeded while decoding a JSON
array"), naming no file and caught by no `except ValueError`. `loads` turns that into
a `json.JSONDecodeError` (a ValueError) saying the text is nested too deeply, so every
loader's existing handling of invalid JSON names the file and what to do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def loads(text: str | bytes, where: str = "the JSON text") -> Any:
    """json.loads; a nesting too deep to parse is a JSONDecodeError naming `where`."""
    try:
        return json.loads(text)
    except RecursionError:
        doc = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        raise json.JSONDecodeError(
            f"{where} is nested too deeply to read (deeper than any file sae-hooks writes)",
            doc,
            0,
        ) from None


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in the UTF-8 file `path` (errors as `loads`, naming the file)."""
    return loads(Path(path).read_text(encoding="utf-8"), str(path))
