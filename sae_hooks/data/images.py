"""Image batches (pixel_values) from a folder of image files or from a tensor."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae_hooks.data.batch import InputBatch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageBatches:
    """Deterministic batches of `pixel_values` (B, 3, image_size, image_size).

    A folder is read recursively in sorted path order; each image is converted to
    RGB, resized to image_size (bicubic) and normalised with `mean`/`std` (ViT's
    0.5/0.5 by default), or handed to a Hugging Face image `processor` instead.
    A tensor (N, 3, H, W) must already have H = W = image_size; uint8 is scaled to
    [0, 1] first, and normalize=False passes already-normalised pixels through.
    doc_index is the image index; `iter_from(k)` resumes at batch k.
    """

    def __init__(
        self,
        source: str | os.PathLike | torch.Tensor | np.ndarray,
        *,
        image_size: int,
        batch_size: int,
        processor: Any = None,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        normalize: bool = True,
        start_batch: int = 0,
    ) -> None:
        if image_size < 1 or batch_size < 1 or start_batch < 0:
            raise ValueError(
                "need image_size >= 1, batch_size >= 1 and start_batch >= 0, got "
                f"{image_size}, {batch_size}, {start_batch}"
            )
        self.image_size, self.batch_size, self.start_batch = image_size, batch_size, start_batch
        self.processor, self.normalize = processor, normalize
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.files: list[Path] | None = None
        self.tensor: torch.Tensor | None = None
        if isinstance(source, (torch.Tensor, np.ndarray)):
            t = torch.as_tensor(source)
            if t.ndim != 4 or t.shape[1] != 3:
                raise ValueError(f"image tensor must be (N, 3, H, W), got {tuple(t.shape)}")
            if tuple(t.shape[-2:]) != (image_size, image_size):
                raise ValueError(
                    f"images are {t.shape[-2]}x{t.shape[-1]}, expected {image_size}x{image_size} "
                    "(the model's image_size); resize them first or pass a folder"
                )
            self.tensor, n = t, t.shape[0]
            self.description = f"images: tensor of {n}, batch {batch_size}"
        else:
            folder = Path(source).expanduser()
            if not folder.is_dir():
                raise ValueError(f"image source {folder} is not a folder (nor a tensor)")
            self.files = sorted(
                p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
            n = len(self.files)
            self.description = f"images: {n} files in {folder}, batch {batch_size}"
        if n == 0:
            raise ValueError(
                f"the data source is empty: no images (looked for {', '.join(IMAGE_SUFFIXES)})"
            )
        self.n_images = n

    def __len__(self) -> int:
        return max(0, math.ceil(self.n_images / self.batch_size) - self.start_batch)

    def __iter__(self) -> Iterator[InputBatch]:
        return self.iter_from(self.start_batch)

    def iter_from(self, batch: int) -> Iterator[InputBatch]:
        for index in range(batch, math.ceil(self.n_images / self.batch_size)):
            lo = index * self.batch_size
            hi = min(lo + self.batch_size, self.n_images)
            pixels = self._tensor_batch(lo, hi) if self.files is None else self._file_batch(lo, hi)
            yield InputBatch({"pixel_values": pixels}, doc_offset=lo, index=index)

    def _tensor_batch(self, lo: int, hi: int) -> torch.Tensor:
        x = self.tensor[lo:hi]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return (x - self.mean) / self.std if self.normalize else x

    def _file_batch(self, lo: int, hi: int) -> torch.Tensor:
        from PIL import Image

        images = []
        for path in self.files[lo:hi]:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        if self.processor is not None:
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
            if tuple(pixels.shape[-2:]) != (self.image_size, self.image_size):
                raise ValueError(
                    f"the processor made {pixels.shape[-2]}x{pixels.shape[-1]} images, expected "
                    f"{self.image_size}x{self.image_size}; configure its size to match the model"
                )
            return pixels
        size = (self.image_size, self.image_size)
        arrays = [np.asarray(im.resize(size, Image.Resampling.BICUBIC)) for im in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
        return (x - self.mean) / self.std if self.normalize else x


image_batches = ImageBatches  # the functional spelling of the same constructor
