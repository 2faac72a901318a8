"""TopK SAE (Gao et al. 2024): each row keeps its k largest codes."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import SAE, SAEOutput
from .output import TrainingSupport
from .sparse_encoder import fixed_support, gather_pre_codes, support_codes


def default_top_k(nb_concepts: int) -> int:
    """overcomplete's default when top_k is None: a tenth of the dictionary, at least 1."""
    return max(nb_concepts // 10, 1)


def check_top_k(name: str, top_k: object, nb_concepts: int) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 < top_k <= nb_concepts:
        raise ValueError(
            f"{name} must be an int with 0 < {name} <= nb_concepts={nb_concepts}, got {top_k!r}"
        )
    return top_k


class TopKSAE(SAE):
    """k codes per row (top_k; None means nb_concepts // 10), in training and in eval alike."""

    architecture = "topk"
    penalty_field = None
    default_aux_coefficient = 1 / 32

    def __init__(
        self,
        input_shape: int | tuple[int, ...],
        nb_concepts: int,
        top_k: int | None = None,
        encoder_module: str | nn.Module | None = None,
        dictionary_params: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(input_shape, nb_concepts, encoder_module, dictionary_params, device)
        self.top_k = check_top_k(
            "top_k", default_top_k(nb_concepts) if top_k is None else top_k, nb_concepts
        )

    def _sparsify(self, pre: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return self._keep_top_k(codes)[0]

    def _keep_top_k(
        self, codes: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """z and its support (indices, values), (N, k) each."""
        values, indices = codes.topk(self.top_k, dim=-1, sorted=False)
        return torch.zeros_like(codes).scatter(-1, indices, values), (indices, values)

    def _forward_rows(self, rows: torch.Tensor) -> SAEOutput:
        found = self._sparse_pre_codes(rows)
        if found is None:
            pre, codes = self._pre_codes(rows)
            z, support = self._keep_top_k(codes)
            return SAEOutput(pre, z, self._decode_rows(z, support))
        # The k largest pre-codes, then ReLU: the same codes as top-k of ReLU(pre), one
        # (rows, n) pass fewer; gradient reaches the encoder through the k kept only.
        pre, inputs = found
        indices = pre.detach().topk(self.top_k, dim=-1, sorted=False).indices
        flat_rows, cols = fixed_support(indices)
        values = F.relu(gather_pre_codes(pre, flat_rows, cols, inputs)).view_as(indices)
        sparse = self._sparse_codes and self._decodes_sparsely(pre, True)
        z, kept = support_codes(pre, flat_rows, cols, values.view(-1), sparse=sparse)
        x_hat = self._decode_rows(z, (indices, values))
        return SAEOutput(pre, z, x_hat, TrainingSupport(kept, inputs))

    def _code_density(self, z: torch.Tensor) -> float:
        return self.top_k / self.nb_concepts

    def sparsity_loss(self, out: SAEOutput) -> torch.Tensor:
        """Zero: sparsity is enforced by construction."""
        return out.x_hat.new_zeros(())

    def _variant_config(self) -> dict[str, Any]:
        return {"top_k": self.top_k}

    @classmethod
    def rows_per_budget(cls, batch_size: int) -> int:
        return 1

    @classmethod
    def train_kwargs(cls, config: Any) -> dict[str, Any]:
        return {"top_k": config.top_k}

    def train_budget(self, batch_size: int) -> dict[str, int]:
        return {"top_k": self.top_k}
