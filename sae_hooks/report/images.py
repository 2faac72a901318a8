"""Images under the patch grids: the report keeps a small PNG thumbnail per shown image.

The store keeps activations, not pixels; it knows which image each row came
from (doc_index). The pixels come from the caller: a tensor or array (N, C, H, W),
a list of images (arrays or PIL), an `ImageBatches` or a folder of image files
(read in the same sorted order `ImageBatches` uses, so doc_index i is file i).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from sae_hooks.report import graphics

THUMB_SIDE = 160


def _folder_files(folder: Path) -> list[Path]:
    from sae_hooks.data.images import IMAGE_SUFFIXES

    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


class ImageSource:
    """Image i (document index i) as an (H, W, 3) uint8 array, or None when unknown."""

    def __init__(self, images: Any):
        self.files: list[Path] | None = None
        self.items: Any = None
        if isinstance(images, (str, os.PathLike)):
            folder = Path(images).expanduser()
            if not folder.is_dir():
                raise ValueError(f"images={folder} is not a folder of image files")
            self.files = _folder_files(folder)
        elif getattr(images, "files", None) is not None:  # ImageBatches over a folder
            self.files = list(images.files)
        elif getattr(images, "tensor", None) is not None:  # ImageBatches over a tensor
            self.items = images.tensor
        elif hasattr(images, "__getitem__") and hasattr(images, "__len__"):
            self.items = images
        else:
            raise TypeError(
                "images must be a tensor/array (N, C, H, W), a list of images, an "
                f"ImageBatches or a folder path; got {type(images).__name__}"
            )

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else len(self.items)

    def get(self, doc: int) -> np.ndarray | None:
        if not 0 <= doc < len(self):
            return None
        if self.files is not None:
            from PIL import Image

            with Image.open(self.files[doc]) as im:
                return np.asarray(im.convert("RGB"))
        return graphics.to_rgb_uint8(self.items[doc])


def write_thumbnails(images: Any, docs: Iterable[int], folder: Path) -> set[int]:
    """thumbs/<doc>.png for each document index that has an image; the ones written."""
    source = ImageSource(images)
    folder.mkdir(parents=True, exist_ok=True)
    written = set()
    for doc in sorted(set(int(d) for d in docs)):
        image = source.get(doc)
        if image is None:
            continue
        side = max(image.shape[:2])
        thumb = graphics.thumbnail(image, THUMB_SIDE) if side > THUMB_SIDE else image
        (folder / f"{doc}.png").write_bytes(graphics.png_bytes(np.ascontiguousarray(thumb)))
        written.add(doc)
    return written
