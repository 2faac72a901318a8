"""The weight of the SAE's sparsity penalty, and the controller that can steer it to a target L0.

Which TrainConfig field gives the starting weight (and names it in the log) is the
SAE class's `penalty_field`; a variant without one (sparse by construction) has no
penalty and this object stays inactive. The weight follows the sparsity warm-up,
or, with `target_l0`, a multiplicative integral controller updated on device after
every step: log(lambda) += gain * clip(log(L0 / target_l0), -1, 1).
"""

from __future__ import annotations

import torch

from .config import TrainConfig
from .schedule import coefficient_factor


class SparsityCoefficient:
    """`at(step)` is the penalty weight of that step; `value` the (checkpointed) base weight."""

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        self.config = config
        self.field: str | None = config.sae_class.penalty_field
        base = getattr(config, self.field) if self.field is not None else 0.0
        self.value = torch.tensor(float(base), device=device)

    @property
    def active(self) -> bool:
        """Whether the variant takes a penalty at all."""
        return self.field is not None

    def at(self, step: int) -> torch.Tensor:
        cfg = self.config
        if cfg.target_l0 is not None:
            return self.value
        return self.value * coefficient_factor(step, cfg.steps, cfg.sparsity_warmup_fraction)

    @torch.no_grad()
    def steer(self, l0: torch.Tensor) -> None:
        """One controller step towards target_l0 from this step's L0 (no host sync)."""
        target = self.config.target_l0
        if target is None:
            return
        error = torch.log(l0.clamp_min(1e-2) / target).clamp(-1.0, 1.0)
        self.value *= torch.exp(self.config.target_l0_gain * error)
