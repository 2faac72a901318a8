"""The weight of the SAE's sparsity penalty, and the controller that can steer it to a target L0.

Which TrainConfig field gives the starting weight (and names it in the log) is the
SAE class's `penalty_field`; a variant without one (sparse by construction) has no
penalty and this object stays inactive. The weight follows the sparsity warm-up,
or, with `target_l0`, a multiplicative integral controller updated on device after
every step: log(lambda) += gain * clip(log(L0 / target_l0), -1, 1).
"""

from __future__ import annotations

from typing import Any

import torch

from .config import TrainConfig
from .schedule import coefficient_factor

REWARD_SCALE = 1.0
"""Near lambda = 0 a penalty that may reward moves by gain * REWARD_SCALE * its start."""


class SparsityCoefficient:
    """`at(step)` is the penalty weight of that step; `value` the (checkpointed) base weight."""

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        self.config = config
        self.field: str | None = config.sae_class.penalty_field
        base = getattr(config, self.field) if self.field is not None else 0.0
        self.value = torch.tensor(float(base), device=device)
        self.base = float(base)
        self.can_reward = bool(config.sae_class.penalty_can_reward)

    def state_dict(self) -> dict[str, Any]:
        return {"coefficient": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = state["coefficient"].to(self.value.device)

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
        gain = self.config.target_l0_gain
        if not self.can_reward:
            self.value *= torch.exp(gain * error)
            return
        # Dual ascent on the constraint L0 = target: steps proportional to |lambda| far
        # from 0 (as the multiplicative rule), of the starting weight's scale near it,
        # so lambda can cross 0 into a bounded reward for firing.
        step = gain * error * self.value.abs().clamp_min(REWARD_SCALE * self.base)
        self.value.copy_((self.value + step).clamp_min(-self.base))
