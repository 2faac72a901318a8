"""Held-out metrics of the SAE being trained, counted as eval.json counts them.

The SAE runs in eval mode (BatchTopK: its running threshold instead of the batch
budget) and FVU, MSE, L0 and dead latents come from `sae_hooks.metrics`, the
classes `evaluate_reconstruction` uses: on the same rows, `val/fvu` and `val/l0`
are eval.json's `fvu` and `l0`. Rows are in the training scale (x * s with
input_scale = 1), which leaves FVU and L0 unchanged; `val/mse` is in that scale.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from sae_hooks.activations import Batch, to_training
from sae_hooks.metrics import FiringStats, SumOfSquares
from sae_hooks.sae.modes import eval_mode


@torch.no_grad()
def validate(
    sae: torch.nn.Module,
    batches: Iterable[Batch],
    *,
    scale: float,
    max_batches: int,
    device: torch.device,
    autocast: torch.dtype | None = None,
) -> dict[str, float]:
    """val/fvu, val/mse, val/l0, val/dead_fraction over up to max_batches batches ({} if none).
    autocast: the dtype the training's forward autocasts to, None when it does not."""
    squares, firing = SumOfSquares(), FiringStats(sae.nb_concepts, device=device)
    with eval_mode(sae):
        for n, batch in enumerate(batches):
            if n == max_batches:
                break
            x, target = sae.training_pair(to_training(batch, device, scale))
            with torch.autocast(
                device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None
            ):
                out = sae(x)
            squares.update(target, out.x_hat.float())
            firing.update(out.z)
    if firing.rows == 0:
        return {}
    return {
        "val/fvu": squares.fvu,
        "val/mse": squares.mse,
        "val/l0": firing.l0,
        "val/dead_fraction": firing.dead_fraction,
    }
