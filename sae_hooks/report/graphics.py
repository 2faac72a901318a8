"""Inline graphics for a self-contained page: SVG bar charts, PNG data URIs, patch grids.

No plotting library: the dashboard must build where matplotlib is absent, and
a few hundred small charts render faster as SVG than as images.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def bar_svg(
    counts: Sequence[float],
    *,
    x_max: float,
    x_label: str,
    width: int = 260,
    height: int = 70,
    color: str = "#e8710a",
    x_min: float = 0.0,
) -> str:
    """A histogram: bars of `counts` over [x_min, x_max], labelled at both ends."""
    counts = list(counts)
    top = max(counts, default=0) or 1
    plot_h = height - 14
    bar_w = width / max(len(counts), 1)
    bars = "".join(
        f'<rect x="{i * bar_w:.1f}" y="{plot_h - c / top * plot_h:.1f}" '
        f'width="{max(bar_w - 1, 0.5):.1f}" height="{c / top * plot_h:.1f}"><title>{int(c)}</title></rect>'
        for i, c in enumerate(counts)
        if c
    )
    return (
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{x_label}"><g fill="{color}">{bars}</g>'
        f'<line x1="0" x2="{width}" y1="{plot_h}" y2="{plot_h}" stroke="#999"/>'
        f'<text x="0" y="{height - 2}">{_fmt(x_min)}</text>'
        f'<text x="{width / 2}" y="{height - 2}" text-anchor="middle">{x_label}</text>'
        f'<text x="{width}" y="{height - 2}" text-anchor="end">{_fmt(x_max)}</text></svg>'
    )


def activation_histogram_svg(counts: torch.Tensor, hist_range: float, max_act: float) -> str:
    """The bins of one latent's histogram, trimmed to its largest activation."""
    bins = counts.shape[0]
    width = hist_range / bins
    used = min(bins, max(1, math.ceil(max_act / width))) if max_act > 0 else bins
    return bar_svg(counts[:used].tolist(), x_max=used * width, x_label="activation")


def density_histogram_svg(density: torch.Tensor, bins: int = 40) -> str:
    """log10 firing density of every latent that fires at all."""
    live = density[density > 0].double().log10()
    if live.numel() == 0:
        return "<p>No latent fired on these rows.</p>"
    lo, hi = math.floor(float(live.min())), max(math.ceil(float(live.max())), 0)
    hi = hi if hi > lo else lo + 1
    counts = torch.histc(live, bins=bins, min=lo, max=hi)
    return bar_svg(
        counts.tolist(),
        x_min=lo,
        x_max=hi,
        x_label="log10 firing density",
        width=520,
        height=110,
        color="#1a73e8",
    )


# ---------------------------------------------------------------------------- images


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 image as PNG with zlib alone."""
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))  # filter type 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def to_rgb_uint8(image: Any) -> np.ndarray:
    """(H, W, 3) uint8 from a PIL image or an array (C, H, W) / (H, W, C) / (H, W).

    Floats outside [0, 1] (normalised pixel_values) are min-max rescaled for display.
    """
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"an image must be (C, H, W), (H, W, C) or (H, W) with 1, 3 or 4 channels, "
            f"got shape {arr.shape}"
        )
    arr = np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr[..., :3]
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 1:
            arr = (arr - lo) / max(hi - lo, 1e-12)
        arr = np.round(arr * 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def thumbnail(image: np.ndarray, max_side: int = 128) -> np.ndarray:
    """Nearest-neighbour resize so the longer side is at most `max_side`."""
    h, w = image.shape[:2]
    scale = max(h, w) / max_side
    if scale <= 1:
        return image
    ys = (np.arange(round(h / scale)) * scale).astype(int)
    xs = (np.arange(round(w / scale)) * scale).astype(int)
    return image[ys][:, xs]


def patch_grid_svg(
    positions: np.ndarray,
    acts: np.ndarray,
    peak: float,
    *,
    center: int,
    image_uri: str | None = None,
    size: int = 128,
) -> str:
    """The image's patch grid, each patch shaded by activation, the top patch outlined.

    Positions are ViT token indices: 0 is CLS, patch p sits at (p-1) // g, (p-1) % g
    on a g x g grid, g inferred from the largest patch index.
    """
    patches = positions > 0
    n = int(positions[patches].max()) if patches.any() else 0
    g = max(1, math.isqrt(n - 1) + 1) if n else 1
    cell = size / g
    parts = []
    if image_uri is not None:
        parts.append(f'<image href="{image_uri}" width="{size}" height="{size}"/>')
    for pos, a, i in zip(positions, acts, range(len(positions))):
        if pos == 0:
            continue
        y, x = divmod(int(pos) - 1, g)
        alpha = 0.0 if peak <= 0 else min(float(a) / peak, 1.0)
        fill_alpha = alpha * (0.6 if image_uri else 1.0)
        stroke = ' stroke="#d93025" stroke-width="2"' if i == center else ""
        parts.append(
            f'<rect x="{x * cell:.1f}" y="{y * cell:.1f}" width="{cell:.1f}" height="{cell:.1f}" '
            f'fill="rgb(232,113,10)" fill-opacity="{fill_alpha:.2f}"{stroke}>'
            f"<title>patch {int(pos) - 1}: {float(a):.3g}</title></rect>"
        )
    if image_uri is None:
        parts.append(f'<rect width="{size}" height="{size}" fill="none" stroke="#999"/>')
    cls = [float(a) for pos, a in zip(positions, acts) if pos == 0]
    caption = f"CLS {cls[0]:.3g}" if cls else ""
    return (
        f'<figure class="patch"><svg width="{size}" height="{size}" viewBox="0 0 {size} {size}">'
        f"{''.join(parts)}</svg><figcaption>{caption}</figcaption></figure>"
    )
