"""What an overwrite may delete: an activation store, and nothing else (issue 30).

`capture --overwrite --store DIR`, `capture_to_store(..., overwrite=True)` and
`StoreWriter(mode="overwrite")` replace whatever is at their location. They do so
only where that is recognisably a store sae-hooks wrote: nothing, the folder of a
creation killed before its zarr.json, or a zarr group carrying the store attributes
(`schema_version`, or a sharded store's parent) that holds nothing but a store's
entries. Anything else (a user's folder, a plain file, another zarr group, a store
folder someone also put notes in) is refused with one line naming what is there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from fsspec.core import url_to_fs

from sae_hooks.jsonio import loads
from sae_hooks.store.layout import (
    META_ARRAYS,
    PARTIAL_SUFFIX,
    SHARDED_ATTR,
    describe,
    is_unborn,
    is_url,
)

#: The entries of one store's folder, and those of a sharded store's parent.
STORE_ENTRIES = frozenset({"zarr.json", "acts", *META_ARRAYS})
_RANK = re.compile(r"rank-\d{4,}")


def check_replaceable(
    location: str | os.PathLike, storage_options: dict[str, Any] | None = None
) -> None:
    """Nothing if an overwrite may replace what is at `location`; else a one-line
    ValueError naming what is there."""
    where = describe(location)
    target = str(location) if is_url(location) else str(Path(location).expanduser())
    fs, path = url_to_fs(target, **(storage_options or {}))
    if not fs.exists(path) or is_unborn(location):
        return
    what = _foreign(fs, path)
    if what is not None:
        raise ValueError(
            f"refusing to overwrite {where}: {what}; an overwrite replaces only an "
            "activation store sae-hooks wrote. Move it away or choose another location"
        )


def _foreign(fs: Any, path: str) -> str | None:
    """What makes `path` something other than a store (None when it is one)."""
    if not fs.isdir(path):
        return "it is a file, not an activation store"
    names = sorted(_name(p) for p in fs.ls(path, detail=False))
    names = [n for n in names if not n.endswith(PARTIAL_SUFFIX)]
    if "zarr.json" not in names:
        return f"it is a folder holding {_listing(names)}, not an activation store"
    try:
        meta = loads(fs.cat_file(f"{path.rstrip('/')}/zarr.json"))
    except (OSError, ValueError):
        return "its zarr.json is not valid JSON, so it is not recognisably a store"
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    if not isinstance(attrs, dict) or meta.get("node_type") != "group":
        return "it is a zarr array or node, not an activation store"
    if isinstance(attrs.get(SHARDED_ATTR), dict):
        extra = [n for n in names if n != "zarr.json" and not _RANK.fullmatch(n)]
    elif "schema_version" in attrs:
        extra = [n for n in names if n not in STORE_ENTRIES]
    else:
        return "it is a zarr group without the attributes of an activation store"
    if extra:
        return f"it is an activation store that also holds {_listing(extra)}"
    return None


def _name(entry: str) -> str:
    return entry.rstrip("/").rsplit("/", 1)[-1]


def _listing(names: list[str], most: int = 4) -> str:
    if not names:
        return "nothing"
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")
