"""One streaming pass of the SAE over the rows: density, histograms, top examples.

Memory stays O(nb_concepts * (k + bins)) whatever the number of rows. After one
dense scan for the non-zero entries, everything works on those entries only: a
chunk's candidates for the running top k are the entries above their latent's
current k-th value (few, once the first chunks are in), ranked per latent with
two stable sorts and merged with one `topk` over (nb_concepts, 2k).

Histograms are exact and single-pass: each latent has `bins` linear bins over
[0, R) with R a power of two above its largest activation so far. When a chunk
brings a larger value, R doubles (or more) and adjacent bins are summed, which
is exact because the new edges are a subset of the old ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from sae_hooks.devices import sae_device_dtype
from sae_hooks.report.rows import Rows
from sae_hooks.sae.modes import eval_mode

HIST_BINS = 32


@dataclass
class FeatureStats:
    """What the pass over `n_rows` rows kept for every latent."""

    n_rows: int
    fire_count: torch.Tensor  # (L,) int64: rows where z > 0
    act_sum: torch.Tensor  # (L,) float64
    top_values: torch.Tensor  # (L, k) float32, descending; 0 past the firing rows
    top_rows: torch.Tensor  # (L, k) int64 row indices
    hist_counts: torch.Tensor  # (L, bins) int64 over the non-zero activations
    hist_range: torch.Tensor  # (L,) float32: bins span [0, hist_range)

    @property
    def nb_concepts(self) -> int:
        return self.fire_count.shape[0]

    @property
    def density(self) -> torch.Tensor:
        """Fraction of rows on which each latent fires."""
        return self.fire_count.double() / self.n_rows

    @property
    def max_act(self) -> torch.Tensor:
        return self.top_values[:, 0]

    @property
    def mean_act(self) -> torch.Tensor:
        """Mean activation over the rows where the latent fires (0 for dead latents)."""
        return (self.act_sum / self.fire_count.clamp_min(1)).float()


@torch.inference_mode()
def encode_rows(sae: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """z for raw activation rows, computed in eval mode (BatchTopK: running threshold)."""
    device, dtype = sae_device_dtype(sae)
    with eval_mode(sae):
        return sae.encode(rows.to(device=device, dtype=dtype))[1].float()


def _pow2_above(x: torch.Tensor) -> torch.Tensor:
    """The smallest power of two strictly greater than x (x > 0)."""
    _, exponent = torch.frexp(x)  # x = m * 2**e with 0.5 <= m < 1
    return torch.ldexp(torch.ones_like(x), exponent)


class _Collector:
    def __init__(self, nb_concepts: int, k: int, bins: int, device: torch.device):
        self.k, self.bins = k, bins
        self.n_rows = 0
        self.fire_count = torch.zeros(nb_concepts, dtype=torch.int64, device=device)
        self.act_sum = torch.zeros(nb_concepts, dtype=torch.float64, device=device)
        self.top_values = torch.zeros(nb_concepts, k, device=device)
        self.top_rows = torch.zeros(nb_concepts, k, dtype=torch.int64, device=device)
        self.hist = torch.zeros(nb_concepts, bins, dtype=torch.int64, device=device)
        self.hist_range = torch.zeros(nb_concepts, device=device)

    def add(self, start: int, z: torch.Tensor) -> None:
        """Fold in one chunk, touching only its non-zero entries after one dense scan."""
        nb = z.shape[1]
        self.n_rows += z.shape[0]
        row, latent = (z > 0).nonzero(as_tuple=True)
        value = z[row, latent]
        ones = torch.ones_like(latent)
        self.fire_count.scatter_add_(0, latent, ones)  # (scatter_add: ~100x faster than bincount)
        self.act_sum.index_add_(0, latent, value.double())
        chunk_max = torch.zeros(nb, device=z.device).scatter_reduce_(0, latent, value, "amax")
        self._grow_ranges(chunk_max)
        width = self.hist_range[latent] / self.bins
        b = (value / width).long().clamp_(max=self.bins - 1)
        self.hist.view(-1).scatter_add_(0, latent * self.bins + b, ones)
        self._merge_top(row + start, latent, value)

    def _merge_top(self, row: torch.Tensor, latent: torch.Tensor, value: torch.Tensor) -> None:
        """Running top k per latent: candidates above the current k-th value, ranked per latent."""
        keep = value > self.top_values[latent, -1]
        row, latent, value = row[keep], latent[keep], value[keep]
        if value.numel() == 0:
            return
        order = torch.argsort(value, descending=True, stable=True)
        order = order[torch.argsort(latent[order], stable=True)]  # by latent, then value desc
        row, latent, value = row[order], latent[order], value[order]
        counts = torch.zeros_like(self.fire_count).scatter_add_(0, latent, torch.ones_like(latent))
        first = torch.cumsum(counts, 0) - counts
        rank = torch.arange(latent.numel(), device=latent.device) - first[latent]
        top = rank < self.k
        new_values = torch.zeros_like(self.top_values)
        new_rows = torch.zeros_like(self.top_rows)
        new_values[latent[top], rank[top]] = value[top]
        new_rows[latent[top], rank[top]] = row[top]
        values = torch.cat([self.top_values, new_values], 1)
        self.top_values, pick = values.topk(self.k, dim=1)
        self.top_rows = torch.cat([self.top_rows, new_rows], 1).gather(1, pick)

    def _grow_ranges(self, chunk_max: torch.Tensor) -> None:
        grow = chunk_max >= self.hist_range
        if not bool(grow.any()):
            return
        new_range = torch.where(grow & (chunk_max > 0), _pow2_above(chunk_max), self.hist_range)
        had = self.hist_range > 0
        factor = torch.where(had, new_range / torch.where(had, self.hist_range, 1.0), 1.0)
        factor = factor.clamp(max=self.bins).long()  # every old bin lands in bin 0 past that
        target = torch.arange(self.bins, device=factor.device)[None, :] // factor[:, None]
        self.hist = torch.zeros_like(self.hist).scatter_add_(1, target, self.hist)
        self.hist_range = new_range

    def result(self) -> FeatureStats:
        return FeatureStats(
            n_rows=self.n_rows,
            fire_count=self.fire_count.cpu(),
            act_sum=self.act_sum.cpu(),
            top_values=self.top_values.cpu(),
            top_rows=self.top_rows.cpu(),
            hist_counts=self.hist.cpu(),
            hist_range=self.hist_range.cpu(),
        )


def collect_features(
    sae: nn.Module,
    rows: Rows,
    *,
    k: int = 16,
    bins: int = HIST_BINS,
    chunk_rows: int | None = None,
    progress: bool = True,
) -> FeatureStats:
    """Stream every row through `sae.encode` (eval mode), keeping per-latent summaries."""
    if rows.d_model != sae.input_size:
        raise ValueError(
            f"the rows have d_model={rows.d_model} but the SAE expects input_size={sae.input_size}"
        )
    if k <= 0 or bins <= 0:
        raise ValueError(f"k and bins must be positive ints, got k={k}, bins={bins}")
    device, _ = sae_device_dtype(sae)
    acc = _Collector(sae.nb_concepts, k, bins, device)
    bar = tqdm(total=rows.n_rows, disable=not progress, desc="features", unit="row")
    for start, chunk in rows.chunks(chunk_rows):
        acc.add(start, encode_rows(sae, chunk))
        bar.update(chunk.shape[0])
    bar.close()
    return acc.result()


def window_activations(
    sae: nn.Module, rows: Rows, index: np.ndarray, latents: Sequence[int], chunk_rows: int = 4096
) -> torch.Tensor:
    """(len(index), len(latents)): the chosen latents on the rows at sorted unique `index`."""
    cols = torch.as_tensor(list(latents), dtype=torch.long)
    out = []
    for lo in range(0, len(index), chunk_rows):
        z = encode_rows(sae, rows.take(index[lo : lo + chunk_rows]))
        out.append(z[:, cols.to(z.device)].cpu())
    return torch.cat(out) if out else torch.zeros(0, len(cols))
