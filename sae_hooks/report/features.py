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

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from sae_hooks.devices import sae_device_dtype
from sae_hooks.metrics import DENSE_FRACTION, FiringStats
from sae_hooks.report.rows import Rows
from sae_hooks.sae.modes import eval_mode

HIST_BINS = 32
SAMPLE_SIZE = 48
"""Firing rows kept per latent uniformly at random, for the activation-quantile examples."""
COFIRE_ROWS = 20_000
"""Rows whose firing pattern is kept for the co-occurrence neighbours."""


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
    sample_values: torch.Tensor | None = None  # (L, S): firing values drawn uniformly at random
    sample_rows: torch.Tensor | None = None  # (L, S) their rows; value 0 = empty slot
    cofire: tuple[torch.Tensor, torch.Tensor] | None = None  # (row, latent) of z > 0, first rows

    @property
    def nb_concepts(self) -> int:
        return self.fire_count.shape[0]

    @property
    def density(self) -> torch.Tensor:
        """Fraction of rows on which each latent fires (z != 0, as `metrics.FiringStats`)."""
        return self.fire_count.double() / self.n_rows

    @property
    def dead(self) -> int:
        """Latents that never fired on these rows (the definition eval.json uses)."""
        return int((self.fire_count == 0).sum())

    @property
    def dense(self) -> int:
        """Latents firing on more than DENSE_FRACTION of the rows (as in eval.json)."""
        return int((self.density > DENSE_FRACTION).sum())

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


class _Keeper:
    """Per latent, the k entries with the largest keys so far (key = value: top examples;
    key = a random number: a uniform sample of the firing rows)."""

    def __init__(self, nb_concepts: int, k: int, device: torch.device):
        self.k = k
        self.keys = torch.zeros(nb_concepts, k, device=device)
        self.values = torch.zeros(nb_concepts, k, device=device)
        self.rows = torch.zeros(nb_concepts, k, dtype=torch.int64, device=device)

    def merge(
        self, row: torch.Tensor, latent: torch.Tensor, value: torch.Tensor, key: torch.Tensor
    ) -> None:
        """Candidates above the current k-th key, ranked per latent with two stable sorts."""
        keep = key > self.keys[latent, -1]
        row, latent, value, key = row[keep], latent[keep], value[keep], key[keep]
        if key.numel() == 0:
            return
        order = torch.argsort(key, descending=True, stable=True)
        order = order[torch.argsort(latent[order], stable=True)]  # by latent, then key desc
        row, latent, value, key = row[order], latent[order], value[order], key[order]
        nb = self.keys.shape[0]
        counts = torch.zeros(nb, dtype=torch.int64, device=latent.device)
        counts.scatter_add_(0, latent, torch.ones_like(latent))
        first = torch.cumsum(counts, 0) - counts
        rank = torch.arange(latent.numel(), device=latent.device) - first[latent]
        top = rank < self.k
        fresh = [torch.zeros_like(t) for t in (self.keys, self.values, self.rows)]
        for t, src in zip(fresh, (key, value, row)):
            t[latent[top], rank[top]] = src[top]
        self.keys, pick = torch.cat([self.keys, fresh[0]], 1).topk(self.k, dim=1)
        self.values = torch.cat([self.values, fresh[1]], 1).gather(1, pick)
        self.rows = torch.cat([self.rows, fresh[2]], 1).gather(1, pick)


class _Collector:
    def __init__(
        self,
        nb_concepts: int,
        k: int,
        bins: int,
        device: torch.device,
        sample: int = SAMPLE_SIZE,
        cofire_rows: int = COFIRE_ROWS,
        seed: int = 0,
    ):
        self.k, self.bins = k, bins
        self.n_rows = 0
        self.firing = FiringStats(nb_concepts, device)  # the same counts as eval.json's
        self.act_sum = torch.zeros(nb_concepts, dtype=torch.float64, device=device)
        self.top = _Keeper(nb_concepts, k, device)
        self.sample = _Keeper(nb_concepts, sample, device) if sample else None
        self.hist = torch.zeros(nb_concepts, bins, dtype=torch.int64, device=device)
        self.hist_range = torch.zeros(nb_concepts, device=device)
        self.cofire_rows = cofire_rows
        self.cofire: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def add(self, start: int, z: torch.Tensor) -> None:
        """Fold in one chunk, touching only its non-zero entries after one dense scan."""
        nb = z.shape[1]
        self.n_rows += z.shape[0]
        self.firing.update(z)
        row, latent = (z > 0).nonzero(as_tuple=True)
        value = z[row, latent]
        ones = torch.ones_like(latent)
        self.act_sum.index_add_(0, latent, value.double())
        chunk_max = torch.zeros(nb, device=z.device).scatter_reduce_(0, latent, value, "amax")
        self._grow_ranges(chunk_max)
        width = self.hist_range[latent] / self.bins
        b = (value / width).long().clamp_(max=self.bins - 1)
        self.hist.view(-1).scatter_add_(0, latent * self.bins + b, ones)
        self.top.merge(row + start, latent, value, value)
        if self.sample is not None:
            key = torch.rand(value.shape, generator=self.gen, device=value.device) + 1e-9
            self.sample.merge(row + start, latent, value, key)
        if start < self.cofire_rows:
            keep = row + start < self.cofire_rows
            self.cofire.append(((row + start)[keep].cpu(), latent[keep].cpu()))

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
        cofire = None
        if self.cofire:
            cofire = (
                torch.cat([r for r, _ in self.cofire]),
                torch.cat([c for _, c in self.cofire]),
            )
        return FeatureStats(
            n_rows=self.n_rows,
            fire_count=self.firing.counts.cpu(),
            act_sum=self.act_sum.cpu(),
            top_values=self.top.values.cpu(),
            top_rows=self.top.rows.cpu(),
            hist_counts=self.hist.cpu(),
            hist_range=self.hist_range.cpu(),
            sample_values=None if self.sample is None else self.sample.values.cpu(),
            sample_rows=None if self.sample is None else self.sample.rows.cpu(),
            cofire=cofire,
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
