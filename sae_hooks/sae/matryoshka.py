"""Matryoshka BatchTopK SAE (Bussmann, Nabeshima, Karvonen & Nanda 2025, "Learning
multi-level features with Matryoshka sparse autoencoders").

The dictionary is cut into consecutive groups; prefix m is the first m groups. The
codes are BatchTopK's (one global budget per batch, a running threshold at
inference), computed once over the whole dictionary, and the training loss sums the
reconstruction error of every prefix, each decoded with the prefixes' atoms plus
b_dec:

    L = sum_m || x - (b_dec + sum_{j < end_m} z_j d_j) ||^2     (mean over rows)

with equal weights and the full dictionary as the last prefix: Bussmann et al.'s
form (and SAELens's MatryoshkaBatchTopK), not Nabeshima's 2024 one, which samples
prefix lengths at random. Early groups must reconstruct on their own, so they take
the frequent, high-variance directions; later groups add the detail.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import SAEOutput
from .batchtopk import DEFAULT_THRESHOLD_MOMENTUM, BatchTopKConfig, BatchTopKSAE
from .output import Support, kept_support
from .sparse import check_sparse_decode, decode_pairs
from .training import squared_error

_DEFAULT_SHARES = (1, 31)  # a first group of 1/32 of the atoms, then the rest


def default_group_sizes(nb_concepts: int) -> list[int]:
    """Two groups: the first 1/32 of the dictionary, then the rest (one group when
    nb_concepts < 32). Bussmann et al.'s five doubling prefixes (1/16 ... 1) starve
    the later groups in short runs: the four inner losses make the early latents fire
    on half the budget and 200 of the 512 latents never learn (docs/evaluation.md)."""
    total = sum(_DEFAULT_SHARES)
    sizes = [nb_concepts * s // total for s in _DEFAULT_SHARES]
    sizes = [s for s in sizes if s > 0] or [0]
    sizes[-1] += nb_concepts - sum(sizes)
    return sizes


class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    """BatchTopK codes, trained so that every prefix of the dictionary reconstructs x.

    group_sizes: sizes of the consecutive latent groups, positive ints summing to
    nb_concepts (default: `default_group_sizes`). Inference is BatchTopK's (codes at or
    above the running threshold, decoded with the whole dictionary); the groups only
    change the training loss (`reconstruction_loss`).
    """

    architecture = "matryoshka_batchtopk"
    config_class = BatchTopKConfig  # BatchTopK's budget and EMA; group_sizes is an `extra`
    # A longer per-row warm-up than BatchTopK's 0.5: from a random dictionary the batch
    # selection hands the budget to the first group's latents, which the inner loss
    # pushes up (docs/evaluation.md, "Matryoshka at its defaults").
    default_row_topk_warmup = 0.75

    def __init__(
        self,
        input_shape: int | tuple[int, ...],
        nb_concepts: int,
        top_k: int | None = None,
        group_sizes: list[int] | tuple[int, ...] | None = None,
        threshold_momentum: float = DEFAULT_THRESHOLD_MOMENTUM,
        encoder_module: str | nn.Module | None = None,
        dictionary_params: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        *,
        top_k_per_sample: float | None = None,
    ) -> None:
        super().__init__(
            input_shape,
            nb_concepts,
            top_k,
            threshold_momentum,
            encoder_module,
            dictionary_params,
            device,
            top_k_per_sample=top_k_per_sample,
        )
        self.group_sizes = _check_group_sizes(group_sizes, self.nb_concepts)

    @property
    def prefix_ends(self) -> list[int]:
        """The width of each prefix (cumulative group sizes); the last is nb_concepts."""
        ends, total = [], 0
        for size in self.group_sizes:
            total += size
            ends.append(total)
        return ends

    def reconstruction_loss(self, err: torch.Tensor, out: SAEOutput) -> torch.Tensor:
        """Sum over prefixes of the squared error (summed over d, mean over rows).

        err = x - x_hat is the full dictionary's error; prefix m's error adds back the
        decoded codes of the groups after it: err_m = err + sum_{j >= end_m} z_j d_j,
        accumulated from the last group. Where the forward recorded its kept support (the
        sparse paths), a group's term decodes the support's pairs in that group (M x d
        work, no (rows, n) codes); otherwise one (N, group) @ (group, d) product.
        """
        atoms = self.get_dictionary()
        support = kept_support(out)
        if check_sparse_decode(self.sparse_decode) is False:
            support = None
        z = out.z.to(atoms.dtype) if support is None else None
        loss = squared_error(err)
        suffix = torch.zeros_like(err)
        starts = [0, *self.prefix_ends[:-1]]
        for start, end in zip(reversed(starts[1:]), reversed(self.prefix_ends[1:])):
            if support is None:
                group = z[:, start:end] @ atoms[start:end]
            else:
                group = _decode_group(support, start, end, atoms, n_rows=err.shape[0])
            suffix = suffix + group.to(err.dtype)
            loss = loss + squared_error(err + suffix)
        return loss

    def prefix_reconstruction(self, x: torch.Tensor, width: int) -> torch.Tensor:
        """x rebuilt from the first `width` latents only (raw scale, rows (N, d))."""
        if not 0 < width <= self.nb_concepts:
            raise ValueError(f"width must be in 1..{self.nb_concepts}, got {width}")
        _, z = self.encode(x)
        z = torch.cat([z[:, :width], torch.zeros_like(z[:, width:])], dim=-1)
        return self.unscaled(self.dictionary.decode(z))

    def _variant_config(self) -> dict[str, Any]:
        return {**super()._variant_config(), "group_sizes": list(self.group_sizes)}


def _decode_group(
    support: Support, start: int, end: int, atoms: torch.Tensor, *, n_rows: int
) -> torch.Tensor:
    """sum over the kept pairs with start <= latent < end of value * atom, rows (n_rows, d).
    The other pairs enter at 0 (no host sync to drop them; on the host the decoder
    skips them, `sparse.nonzero_pairs`)."""
    in_group = (support.cols >= start) & (support.cols < end)
    values = support.values * in_group.to(support.values.dtype)
    return decode_pairs(support.rows, support.cols, values, atoms, n_rows=n_rows)


def _check_group_sizes(group_sizes: Any, nb_concepts: int) -> list[int]:
    if group_sizes is None:
        return default_group_sizes(nb_concepts)
    sizes = list(group_sizes) if isinstance(group_sizes, (list, tuple)) else None
    if (
        not sizes
        or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in sizes)
        or sum(sizes) != nb_concepts
    ):
        raise ValueError(
            f"group_sizes must be a non-empty list of positive ints summing to "
            f"nb_concepts={nb_concepts}, got {group_sizes!r}"
        )
    return sizes
