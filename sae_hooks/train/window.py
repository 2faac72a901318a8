"""What the trainer measures between two log lines, kept on device until the log step.

`DeadLatents` counts, per latent, the tokens since it last fired (the dead latents
AuxK revives and `dead_fraction` reports). `LogWindow` holds the sums of one log
interval: the per-step loss terms, the FVU's sums of squares and the fire counts
(L0, dense latents), counted with the same `sae_hooks.metrics` classes that
validation and eval use. Neither waits for the device until it is read. Each has a
state_dict / load_state_dict, whose keys are those of the checkpoint's files.
"""

from __future__ import annotations

from typing import Any

import torch

from sae_hooks.distributed import ProcessRank
from sae_hooks.metrics import DENSE_FRACTION, FiringStats, SumOfSquares

LOSS_TERMS = ("loss", "mse", "aux_loss")
"""Per-step means summed over the window, in the order of `LogWindow.losses`."""


class DeadLatents:
    """Tokens since each latent last fired; dead once that reaches dead_tokens."""

    def __init__(self, nb_concepts: int, dead_tokens: int, device: torch.device) -> None:
        self.dead_tokens = dead_tokens
        self.since_fired = torch.zeros(nb_concepts, dtype=torch.int64, device=device)

    def update(self, fires: torch.Tensor, rows: int) -> None:
        self.since_fired = torch.where(fires > 0, 0, self.since_fired + rows)

    def mask(self) -> torch.Tensor:
        return self.since_fired >= self.dead_tokens

    def any(self) -> bool:
        return bool(self.mask().any())

    def fraction(self) -> float:
        return float(self.mask().float().mean())

    def state_dict(self) -> dict[str, Any]:
        return {"since_fired": self.since_fired}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.since_fired = state["since_fired"].to(self.since_fired.device)


class LogWindow:
    """Sums of one log interval; `record()` turns them into the log's train metrics."""

    def __init__(self, nb_concepts: int, device: torch.device, rows_per_step: int = 1) -> None:
        """rows_per_step: the global batch's rows, which a resumed window counts per step."""
        self.nb_concepts, self.device, self.rows_per_step = nb_concepts, device, rows_per_step
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.losses = torch.zeros(len(LOSS_TERMS), device=self.device)
        self.squares = SumOfSquares()
        self.firing = FiringStats(self.nb_concepts, device=self.device)

    def add(
        self,
        losses: torch.Tensor,
        x: torch.Tensor,
        x_hat: torch.Tensor,
        fires: torch.Tensor,
        rows: int,
        err: torch.Tensor | None = None,
    ) -> None:
        """One step: its LOSS_TERMS (a stacked tensor), this rank's rows and their
        reconstruction (err: x - x_hat, where the step has it), and the fire counts of
        the step's `rows` rows over all ranks."""
        self.losses += losses.float()
        self.squares.update(x, x_hat, err)
        self.firing.add_counts(fires, rows)
        self.steps += 1

    def all_reduce(self, rank: ProcessRank) -> None:
        """Make the window global: loss terms averaged over ranks, sums of squares added.
        (Fire counts are already global: the step's all-reduce carries them.)"""
        if not rank.distributed:
            return
        rank.all_reduce_sum_(self.losses).div_(rank.world)
        if self.squares.state is not None:
            rank.all_reduce_sum_(self.squares.state)

    def record(self) -> dict[str, float]:
        """loss, mse, aux_loss (means of per-step values), fvu (one mean over the window's
        rows), l0 (codes the training-mode forward kept, per row) and dense_fraction."""
        n = max(self.steps, 1)
        means = {k: v / n for k, v in zip(LOSS_TERMS, self.losses.tolist())}
        return {
            "loss": means["loss"],
            "mse": means["mse"],
            "fvu": self.squares.fvu,
            "l0": self.firing.l0,
            "dense_fraction": self.firing.dense_fraction(DENSE_FRACTION),
            "aux_loss": means["aux_loss"],
        }

    def state_dict(self) -> dict[str, Any]:
        """For a checkpoint: a window resumed mid-way logs what the uninterrupted one would."""
        squares = self.squares.state
        return {
            "window_fires": self.firing.counts,
            "sums": self.losses,
            "sum_of_squares": squares if squares is not None else torch.zeros(0),
            "window_steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        self.steps = steps = state["window_steps"]
        self.firing.add_counts(state["window_fires"].to(self.device), steps * self.rows_per_step)
        sums = state["sums"].to(self.device)
        if sums.numel() == 6:  # a checkpoint from before: loss, mse, sq_err, sq_dev, l0, aux
            sums = sums[[0, 1, 5]]
        self.losses = sums
        squares = state.get("sum_of_squares")
        if squares is not None and squares.numel():
            self.squares.state = squares.to(self.device)
