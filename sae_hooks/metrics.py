"""The one definition of every SAE metric: FVU, MSE, L0, firing, dead and dense latents.

Training validation, `evaluate_reconstruction` (eval.json) and the dashboard all
count with these classes, so the same rows give the same numbers everywhere.

- FVU: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over ALL rows measured (one
  mean over the whole set, not per batch), so it does not depend on batching.
- L0: mean number of non-zero codes per row.
- dead: a latent that never fired on the rows measured; dense: one that fired on
  more than DENSE_FRACTION of them.
"""

from __future__ import annotations

import torch
from torch import Tensor

DENSE_FRACTION = 0.1
"""A latent firing on more than this share of rows is "dense"."""


class FiringStats:
    """Streaming per-latent firing counts, for L0, dead and dense fractions."""

    def __init__(self, nb_concepts: int, device: torch.device | str = "cpu") -> None:
        self.counts = torch.zeros(nb_concepts, dtype=torch.int64, device=device)
        self.active = torch.zeros((), dtype=torch.int64, device=device)
        self.rows = 0

    def update(self, z: Tensor) -> None:
        fired = z.reshape(-1, z.shape[-1]) != 0
        self.counts += fired.sum(0)
        self.active += fired.sum()
        self.rows += fired.shape[0]

    @property
    def l0(self) -> float:
        return self.active.item() / max(self.rows, 1)

    @property
    def dead_fraction(self) -> float:
        return (self.counts == 0).float().mean().item()

    def dense_fraction(self, above: float = DENSE_FRACTION) -> float:
        return (self.counts.float() / max(self.rows, 1) > above).float().mean().item()

    @property
    def density(self) -> Tensor:
        return self.counts.float() / max(self.rows, 1)


class SumOfSquares:
    """Streaming FVU: sum (x - x_hat)^2 over sum (x - mean(x))^2, exact over any number of batches."""

    def __init__(self) -> None:
        self.n = 0
        self.err = 0.0
        self.sum: Tensor | None = None
        self.sum_sq = 0.0

    def update(self, x: Tensor, x_hat: Tensor) -> None:
        x64 = x.reshape(-1, x.shape[-1]).double()
        self.err += (x64 - x_hat.reshape(x64.shape).double()).pow(2).sum().item()
        s = x64.sum(0)
        self.sum = s if self.sum is None else self.sum + s
        self.sum_sq += x64.pow(2).sum().item()
        self.n += x64.shape[0]

    @property
    def fvu(self) -> float:
        if self.sum is None or self.n == 0:
            return float("nan")
        total = self.sum_sq - (self.sum.pow(2).sum().item() / self.n)
        return self.err / max(total, 1e-30)
