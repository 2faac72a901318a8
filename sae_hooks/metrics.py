"""The one definition of every SAE metric: FVU, MSE, L0, firing, dead and dense latents.

Training validation, `evaluate_reconstruction` (eval.json) and the dashboard all
count with these classes, so the same rows give the same numbers everywhere.

- FVU: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over ALL rows measured (one
  mean over the whole set, not per batch), so it does not depend on batching.
- MSE: sum ||x - x_hat||^2 / rows, the squared error summed over d, mean over rows.
- L0: mean number of non-zero codes per row. Which codes depends on the SAE's mode:
  in training BatchTopK keeps its batch budget, in eval mode its running threshold;
  the training log says which (see sae_hooks.train.runlog.LOG_KEYS).
- dead: a latent that never fired on the rows measured; dense: one that fired on
  more than DENSE_FRACTION of them.
"""

from __future__ import annotations

import torch
from torch import Tensor

DENSE_FRACTION = 0.1
"""A latent firing on more than this share of rows is "dense"."""


def mse(x: Tensor, x_hat: Tensor) -> Tensor:
    """Squared error summed over d, averaged over rows (0-d tensor, no host sync)."""
    return (x - x_hat).pow(2).sum(-1).mean()


def fvu(x: Tensor, x_hat: Tensor) -> Tensor:
    """FVU of one set of rows (0-d tensor, no host sync); `SumOfSquares` streams the same
    quantity over many batches: sum (x - x_hat)^2 / sum (x - mean(x))^2."""
    return (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)


class FiringStats:
    """Streaming per-latent firing counts, for L0, dead and dense fractions."""

    def __init__(self, nb_concepts: int, device: torch.device | str = "cpu") -> None:
        self.counts = torch.zeros(nb_concepts, dtype=torch.int64, device=device)
        self.active = torch.zeros((), dtype=torch.int64, device=device)
        self.rows = 0

    def update(self, z: Tensor) -> None:
        fired = z.reshape(-1, z.shape[-1]) != 0
        counts = fired.sum(0)
        self.counts += counts
        self.active += counts.sum()  # not fired.sum(): a second pass over (rows, n)
        self.rows += fired.shape[0]

    def add_counts(self, counts: Tensor, rows: int) -> None:
        """Fold in per-latent fire counts (n,) already taken over `rows` rows (no host sync)."""
        self.counts += counts
        self.active += counts.sum()
        self.rows += rows

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
    """Streaming FVU and MSE: sum (x - x_hat)^2 over sum (x - mean(x))^2, exact over any
    number of batches. Sums are float64 tensors on the rows' device, so `update` never
    waits for the device; reading `fvu` or `mse` does."""

    def __init__(self) -> None:
        self.state: Tensor | None = None
        """float64 [rows, sum ||x - x_hat||^2, sum ||x||^2, *sum x]; additive over batches
        and over data-parallel ranks."""

    def update(self, x: Tensor, x_hat: Tensor) -> None:
        x64 = x.reshape(-1, x.shape[-1]).double()
        err = (x64 - x_hat.reshape(x64.shape).double()).pow(2).sum()
        rows = torch.full((1,), float(x64.shape[0]), dtype=torch.float64, device=x64.device)
        part = torch.cat([rows, err.reshape(1), x64.pow(2).sum().reshape(1), x64.sum(0)])
        self.state = part if self.state is None else self.state + part

    @property
    def n(self) -> int:
        return 0 if self.state is None else int(self.state[0].item())

    @property
    def fvu(self) -> float:
        if self.state is None or self.state[0] == 0:
            return float("nan")
        n, err, sum_sq = self.state[:3].tolist()
        total = sum_sq - self.state[3:].pow(2).sum().item() / n
        return err / max(total, 1e-30)

    @property
    def mse(self) -> float:
        if self.state is None or self.state[0] == 0:
            return float("nan")
        n, err = self.state[:2].tolist()
        return err / n
