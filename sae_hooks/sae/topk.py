"""TopK SAE (Gao et al. 2024): each row keeps its k largest codes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import SAE, SAEOutput
from .output import TrainingSupport
from .settings import VariantConfig, check_int
from .sparse import LatentOrder, row_top_k
from .sparse_encoder import fixed_support, gather_pre_codes, support_codes

DEFAULT_K_PER_TOKEN = 32
"""Codes per token when a top-k variant is trained with neither top_k nor k_per_token."""


def default_top_k(nb_concepts: int) -> int:
    """overcomplete's default when top_k is None: a tenth of the dictionary, at least 1."""
    return max(nb_concepts // 10, 1)


def check_top_k(name: str, top_k: object, nb_concepts: int) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 < top_k <= nb_concepts:
        raise ValueError(
            f"{name} must be an int with 0 < {name} <= nb_concepts={nb_concepts}, got {top_k!r}"
        )
    return top_k


@dataclass
class TopKConfig(VariantConfig):
    """The budget of a top-k variant: `top_k` in the SAE's own meaning (per row for
    TopK, per batch for BatchTopK) or `k_per_token`, the architecture-independent
    spelling (top_k = k_per_token * the SAE's rows_per_budget). Give one of the two;
    with neither, k_per_token = DEFAULT_K_PER_TOKEN."""

    top_k: int | None = None
    k_per_token: int | None = None

    refused_elsewhere: ClassVar[tuple[str, ...]] = ("top_k", "k_per_token")

    def __post_init__(self) -> None:
        check_int("top_k", self.top_k, minimum=1, optional=True)
        check_int("k_per_token", self.k_per_token, minimum=1, optional=True)

    def check_budget(self, rows: int, architecture: str) -> None:
        """top_k and k_per_token, when both given, must agree at `rows` rows per budget."""
        given = self.top_k is not None and self.k_per_token is not None
        if given and self.top_k != self.k_per_token * rows:
            raise ValueError(
                f"top_k={self.top_k} and k_per_token={self.k_per_token} disagree "
                f"(expected top_k={self.k_per_token * rows} for {architecture!r}); give only one"
            )

    def resolved(self, *, d_model: int, nb_concepts: int, rows: int | None) -> TopKConfig:
        top_k, k_per_token = self.top_k, self.k_per_token
        if rows is None:
            return self
        if top_k is None:
            k_per_token = k_per_token or DEFAULT_K_PER_TOKEN
            top_k = k_per_token * rows
        if top_k // rows > nb_concepts or top_k < 1:
            raise ValueError(
                f"top_k={top_k} must keep between 1 and nb_concepts={nb_concepts} per row"
            )
        return dataclasses.replace(self, top_k=top_k, k_per_token=k_per_token)

    def sae_kwargs(self) -> dict[str, Any]:
        return {"top_k": self.top_k}


class TopKSAE(SAE):
    """k codes per row (top_k; None means nb_concepts // 10), in training and in eval alike."""

    architecture = "topk"
    selection = "TopK: the k largest codes of each row"
    config_class = TopKConfig
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
        indices = row_top_k(pre.detach(), self.top_k)
        flat_rows, cols = fixed_support(indices)
        order = LatentOrder(flat_rows, cols)  # one sort for the encoder's and decoder's grads
        values = F.relu(gather_pre_codes(pre, flat_rows, cols, inputs, order)).view_as(indices)
        sparse = self._sparse_codes and self._decodes_sparsely(pre, True)
        z, kept = support_codes(pre, flat_rows, cols, values.view(-1), sparse=sparse)
        x_hat = self._decode_rows(z, (indices, values), order=order)
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

    def train_budget(self, batch_size: int) -> dict[str, int]:
        return {"top_k": self.top_k}
