"""Learning-rate and penalty-coefficient schedules: plain functions of the step.

Being pure functions of (step, config) they need no state in a checkpoint: a
resumed run recomputes exactly the values the uninterrupted run would have used.
"""

from __future__ import annotations


def lr_factor(step: int, total_steps: int, warmup_steps: int, decay_fraction: float) -> float:
    """Multiplier of the peak lr at `step` (0-based): linear warm-up, flat, linear decay to 0.

    Warm-up reaches 1 at the end of step warmup_steps - 1; the decay spans the last
    round(decay_fraction * total_steps) steps and ends just above 0 on the final step.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = round(decay_fraction * total_steps)
    decay_start = total_steps - decay_steps
    if decay_steps > 0 and step >= decay_start:
        return max(total_steps - step, 0) / (decay_steps + 1)
    return 1.0


def coefficient_factor(step: int, total_steps: int, warmup_fraction: float) -> float:
    """Linear warm-up of a sparsity coefficient from ~0 to 1 over warmup_fraction of the run."""
    warmup_steps = round(warmup_fraction * total_steps)
    if warmup_steps <= 0:
        return 1.0
    return min((step + 1) / warmup_steps, 1.0)
