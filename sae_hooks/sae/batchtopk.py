"""BatchTopK SAE (Bussmann et al. 2024): a budget of codes for the whole batch in
training, a single learned threshold at inference.

The running threshold lives in registered buffers (value + "initialised" flag) so
state_dict, `.to()`, save and load keep it, and its EMA is updated on device without
a host sync.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import SAE, SAEOutput
from .output import TrainingSupport
from .settings import check_float
from .shapes import positive_int
from .sparse import LatentOrder, row_top_k
from .sparse_encoder import batch_top_k, gather_pre_codes, support_codes
from .topk import TopKConfig, default_top_k

DEFAULT_THRESHOLD_MOMENTUM = 0.9
"""EMA momentum of the running (inference) threshold."""


@dataclass
class BatchTopKConfig(TopKConfig):
    """A BatchTopK budget (top_k per batch, or k_per_token) and its threshold's EMA momentum."""

    threshold_momentum: float = DEFAULT_THRESHOLD_MOMENTUM

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float("threshold_momentum", self.threshold_momentum, 0.0, 1.0, hi_open=True)

    def sae_kwargs(self) -> dict[str, Any]:
        return {"top_k": self.top_k, "threshold_momentum": self.threshold_momentum}


class BatchTopKSAE(SAE):
    """BatchTopK SAE.

    top_k counts codes for the ENTIRE batch (the seed's meaning): training keeps the
    top_k largest codes of the flattened batch, exactly top_k of them (a tie at the
    budget's edge, common under bf16, is broken by the top-k, not kept whole).
    `top_k_per_sample=k` is the peers' spelling: k * B codes for a batch of B rows
    (may be fractional). Give one of the two; with neither, top_k = nb_concepts // 10
    (overcomplete's default). A budget larger than the batch keeps every positive code.

    The batch threshold is the k-th largest code floored at 0, i.e. the smallest kept
    positive code, or 0 when fewer than k codes are positive. Every forward in train
    mode (grad enabled or not: the seed's meaning) moves the running threshold,
    theta <- m * theta + (1 - m) * t_batch, m = threshold_momentum, starting at the
    first batch's t_batch; opt out with `encode(x, update_threshold=False)` or
    `with sae.frozen_threshold():`. Eval uses z = codes * (codes >= theta) (ties kept,
    as in training) and no top-k.
    """

    architecture = "batchtopk"
    selection = "BatchTopK: codes >= its running threshold"
    config_class = BatchTopKConfig
    penalty_field = None
    default_aux_coefficient = 1 / 32
    default_row_topk_warmup = 0.5

    def __init__(
        self,
        input_shape: int | tuple[int, ...],
        nb_concepts: int,
        top_k: int | None = None,
        threshold_momentum: float = DEFAULT_THRESHOLD_MOMENTUM,
        encoder_module: str | nn.Module | None = None,
        dictionary_params: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        *,
        top_k_per_sample: float | None = None,
    ) -> None:
        nb_concepts = positive_int("nb_concepts", nb_concepts)  # before k is checked against it
        if top_k is not None and top_k_per_sample is not None:
            raise ValueError(
                "give top_k (codes for the whole batch) or top_k_per_sample (codes per row), not both"
            )
        if top_k_per_sample is None:
            top_k = default_top_k(nb_concepts) if top_k is None else top_k
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
                raise ValueError(
                    f"top_k (codes for the whole batch) must be a positive int, got {top_k!r}"
                )
        elif (
            isinstance(top_k_per_sample, bool)
            or not isinstance(top_k_per_sample, (int, float))
            or not 0 < top_k_per_sample <= nb_concepts
        ):
            raise ValueError(
                f"top_k_per_sample must be a number with 0 < top_k_per_sample <= "
                f"nb_concepts={nb_concepts}, got {top_k_per_sample!r}"
            )
        if (
            isinstance(threshold_momentum, bool)
            or not isinstance(threshold_momentum, (int, float))
            or not 0.0 <= threshold_momentum <= 1.0
        ):
            raise ValueError(f"threshold_momentum must be in [0, 1], got {threshold_momentum!r}")
        super().__init__(input_shape, nb_concepts, encoder_module, dictionary_params, device)
        self.top_k = top_k
        self.top_k_per_sample = top_k_per_sample
        self.threshold_momentum = float(threshold_momentum)
        self._ranks = 1  # data-parallel ranks sharing top_k (see rank_share)
        self._per_row = False  # each row keeps its own share of the budget (step_phase)
        self.register_buffer("threshold_ema", torch.zeros((), device=device))
        self.register_buffer(
            "threshold_initialized", torch.zeros((), dtype=torch.bool, device=device)
        )
        self._threshold_known = False  # host mirror of threshold_initialized: no sync in eval
        self._threshold_frozen = False
        self.register_load_state_dict_post_hook(_refresh_threshold_flag)

    @property
    def running_threshold(self) -> torch.Tensor | None:
        """The inference threshold (0-d tensor), None until the first training batch."""
        return self.threshold_ema if self._threshold_known else None

    @running_threshold.setter
    def running_threshold(self, value: float | torch.Tensor | None) -> None:
        with torch.no_grad():
            if value is None:
                self.threshold_ema.zero_()
                self.threshold_initialized.fill_(False)
            else:
                self.threshold_ema.copy_(torch.as_tensor(value).reshape(()))
                self.threshold_initialized.fill_(True)
        self._threshold_known = value is not None

    def batch_budget(self, n_rows: int, n_codes: int) -> int:
        """How many codes a batch of n_rows keeps in training, clamped to [1, n_codes]."""
        if self.top_k_per_sample is None:
            k = self.top_k // self._ranks
        else:
            k = round(self.top_k_per_sample * n_rows)
        return max(1, min(k, n_codes))

    @contextlib.contextmanager
    def rank_share(self, world: int) -> Iterator[None]:
        """Each of `world` ranks keeps top_k // world codes of its share of the batch
        (a per-row budget, top_k_per_sample, scales with the local batch by itself)."""
        if self.top_k_per_sample is None and self.top_k % world:
            raise ValueError(
                f"BatchTopK top_k={self.top_k} codes per global batch is not divisible by the "
                f"{world} processes; each rank keeps top_k // world codes of its rows. "
                "Use k_per_token (top_k = k_per_token * batch_size) or a divisible top_k"
            )
        ranks, self._ranks = self._ranks, world
        try:
            yield
        finally:
            self._ranks = ranks

    @contextlib.contextmanager
    def step_phase(self, step: int, config: Any, gather: Any = None) -> Iterator[None]:
        """For the first `config.row_topk_warmup` of the run every row keeps its own share
        of the budget (the TopK selection, budget / rows codes each), then the batch does.

        From a random dictionary the batch-wide selection lets the latents that start
        with the largest pre-codes take most of the budget, and about half of the
        dictionary never learns: on synthetic rows with a known dictionary (d = 64, 256
        atoms, 4 per row, 600 steps) it recovered 0.67-0.79 mean max-cosine, against
        0.97+ once the first quarter of the run selects per row (docs/evaluation.md)."""
        warm = step < round(config.row_topk_warmup * config.steps)
        previous, self._per_row = self._per_row, warm
        try:
            yield
        finally:
            self._per_row = previous

    def encode(
        self, x: torch.Tensor, update_threshold: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_pre, z). update_threshold: None = in train mode unless frozen_threshold()."""
        pre, codes = self._pre_codes(self._to_rows(x))
        return pre, self._sparsify(pre, codes, update_threshold)

    def _sparsify(
        self, pre: torch.Tensor, codes: torch.Tensor, update_threshold: bool | None = None
    ) -> torch.Tensor:
        if not self.training:
            if not self._threshold_known:
                raise RuntimeError(
                    "BatchTopKSAE in eval mode has no running threshold yet: train it on at "
                    "least one batch (train mode), or set sae.running_threshold"
                )
            return codes * (codes >= self.threshold_ema)
        if codes.numel() == 0:
            return codes
        values, flat = self._batch_top_k(codes.detach())
        self._maybe_update_threshold(values, update_threshold)
        kept = codes.flatten().gather(0, flat)
        return torch.zeros_like(codes).flatten().scatter(0, flat, kept).view_as(codes)

    def _batch_top_k(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, flat indices) of the batch budget's largest codes, exactly the budget
        (in the per-row phase of `step_phase`: each row's budget / rows largest)."""
        k = self.batch_budget(codes.shape[0], codes.numel())
        if self._per_row and codes.dim() == 2:
            n_rows, n = codes.shape
            cols = row_top_k(codes, max(1, min(k // n_rows, n)))
            values = codes.gather(1, cols)
            self._per_row_rows = n_rows
            rows = torch.arange(n_rows, device=codes.device).unsqueeze(-1) * n
            return values.flatten(), (rows + cols).flatten()
        return batch_top_k(codes.reshape(-1, codes.shape[-1]), k)

    def _maybe_update_threshold(self, values: torch.Tensor, update: bool | None) -> None:
        """The batch threshold is the smallest kept code floored at 0 (see the class); in
        the per-row phase of `step_phase`, the mean over rows of each row's smallest kept
        code (the smallest of all would admit nearly every code at inference)."""
        if not (not self._threshold_frozen if update is None else update):
            return
        if self._per_row:
            n_rows = self._per_row_rows
            t = values.view(n_rows, -1).min(-1).values.clamp_min(0.0).mean()
        else:
            t = values.min().clamp_min(0.0)
        self._update_running_threshold(t)

    def _forward_rows(self, rows: torch.Tensor) -> SAEOutput:
        found = self._sparse_pre_codes(rows) if self.training else None
        if found is None:
            return super()._forward_rows(rows)
        pre, inputs = found
        # The budget's largest pre-codes, then ReLU (as top-k of ReLU(pre), one pass
        # fewer); the kept pairs, grouped by row, give the decoder its row offsets and
        # the encoder its sparse gradient, with no host sync.
        values, flat = self._batch_top_k(pre.detach())
        self._maybe_update_threshold(values, None)
        n = self.nb_concepts
        flat_rows, cols = flat.div(n, rounding_mode="floor"), flat.remainder(n)
        order = LatentOrder(flat_rows, cols)  # one sort for the encoder's and decoder's grads
        kept = F.relu(gather_pre_codes(pre, flat_rows, cols, inputs, order))
        sparse = self._sparse_codes and self._decodes_sparsely(pre, True)
        z, support = support_codes(pre, flat_rows, cols, kept, sparse=sparse)
        x_hat = self._decode_rows(z, (flat_rows, cols, kept), order=order)
        return SAEOutput(pre, z, x_hat, TrainingSupport(support, inputs))

    @contextlib.contextmanager
    def frozen_threshold(self) -> Iterator[BatchTopKSAE]:
        """Train-mode forwards inside leave the running threshold where it is."""
        previous, self._threshold_frozen = self._threshold_frozen, True
        try:
            yield self
        finally:
            self._threshold_frozen = previous

    @torch.no_grad()
    def _update_running_threshold(self, batch_threshold: torch.Tensor) -> None:
        t = batch_threshold.to(self.threshold_ema.dtype)
        m = self.threshold_momentum
        ema = torch.where(self.threshold_initialized, m * self.threshold_ema + (1.0 - m) * t, t)
        self.threshold_ema.copy_(ema)
        self.threshold_initialized.fill_(True)
        self._threshold_known = True

    def _code_density(self, z: torch.Tensor) -> float:
        """The training budget's share; eval's threshold was learnt to keep about as many."""
        n_codes = z.numel()
        return self.batch_budget(n_codes // self.nb_concepts, n_codes) / n_codes

    def sparsity_loss(self, out: SAEOutput) -> torch.Tensor:
        """Zero: sparsity is enforced by construction."""
        return out.x_hat.new_zeros(())

    def _variant_config(self) -> dict[str, Any]:
        budget = (
            {"top_k": self.top_k}
            if self.top_k_per_sample is None
            else {"top_k_per_sample": self.top_k_per_sample}
        )
        return {**budget, "threshold_momentum": self.threshold_momentum}

    @classmethod
    def rows_per_budget(cls, batch_size: int) -> int:
        return batch_size

    def train_budget(self, batch_size: int) -> dict[str, int]:
        if self.top_k_per_sample is not None:
            return {"top_k": round(self.top_k_per_sample * batch_size)}
        return {"top_k": self.top_k}


def _refresh_threshold_flag(module: nn.Module, incompatible_keys: Any) -> None:
    module._threshold_known = bool(module.threshold_initialized)
