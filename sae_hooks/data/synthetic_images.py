"""Synthetic images: coloured squares and discs on grey, for image runs with no dataset.

They let the ViT path (capture, train, a colour concept) run offline and in tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sae_hooks.data.images import ImageBatches, image_batches

RED, BLUE = (220, 30, 30), (30, 60, 220)
Color = tuple[int, int, int]


def shapes(n: int, size: int, colors: Sequence[Color], seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) uint8: one filled square or disc on a grey background per image.

    Colour i % len(colors), jittered; position, size and shape are random.
    """
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for i in range(n):
        r = size * (0.15 + 0.2 * torch.rand((), generator=gen).item())
        cy, cx = (r + (size - 2 * r) * torch.rand(2, generator=gen)).tolist()
        if i % 2:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        else:
            inside = ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r)
        grey = 90 + 120 * torch.rand((), generator=gen).item()
        color = torch.tensor(colors[i % len(colors)], dtype=torch.float32)
        color = (color + 20 * torch.randn(3, generator=gen)).clamp(0, 255)
        image = torch.full((3, size, size), grey)
        image[:, inside] = color[:, None]
        images[i] = image.round().to(torch.uint8)
    return images


def palette(n: int) -> list[Color]:
    """n saturated colours evenly spaced around the hue circle."""
    out = []
    for i in range(n):
        h = 6 * i / n
        x = 1 - abs(h % 2 - 1)
        rgb = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(h)]
        out.append(tuple(round(220 * c + 20) for c in rgb))
    return out


def shape_batches(
    n: int,
    colors: Sequence[Color],
    *,
    image_size: int,
    batch_size: int,
    processor: Any = None,
    seed: int = 0,
) -> ImageBatches:
    """`shapes` as model inputs, normalised with the processor's mean and std (0.5 if none)."""
    norm = {
        "mean": getattr(processor, "image_mean", None) or (0.5, 0.5, 0.5),
        "std": getattr(processor, "image_std", None) or (0.5, 0.5, 0.5),
    }
    images = shapes(n, image_size, colors, seed=seed)
    return image_batches(images, image_size=image_size, batch_size=batch_size, **norm)
