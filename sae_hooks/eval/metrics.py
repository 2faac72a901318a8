"""Per-batch measurements of what a spliced SAE changes in a model's output.

Every function takes a mask of the positions that count, so padding never
enters an average; reductions happen in float32 or wider whatever the model's
dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def next_token_ce(logits: Tensor, input_ids: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-position next-token cross-entropy, shape (B, T-1); masked positions are NaN-free zeros.

    Position t predicts token t+1; a prediction counts only when both tokens are real.
    """
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    ce = -logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    if mask is not None:
        ce = ce * pair_mask(mask)
    return ce


def pair_mask(mask: Tensor) -> Tensor:
    """Mask of next-token predictions whose context and target are both real tokens."""
    return (mask[:, :-1] * mask[:, 1:]).to(torch.float32)


def kl_div(clean_logits: Tensor, other_logits: Tensor) -> Tensor:
    """KL(clean || other) over the last dimension, one value per position."""
    p = F.log_softmax(clean_logits.float(), dim=-1)
    q = F.log_softmax(other_logits.float(), dim=-1)
    return (p.exp() * (p - q)).sum(-1)


def mean_pool(hidden: Tensor, mask: Tensor | None) -> Tensor:
    """Sentence-transformers pooling: the mean of the real tokens' states."""
    if mask is None:
        return hidden.float().mean(1)
    m = mask.unsqueeze(-1).to(torch.float32)
    return (hidden.float() * m).sum(1) / m.sum(1).clamp_min(1.0)


def cosine(a: Tensor, b: Tensor) -> Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def loss_recovered(ce_clean: float, ce_spliced: float, ce_ablated: float) -> float:
    """(CE_ablated - CE_spliced) / (CE_ablated - CE_clean): 1 is perfect, 0 is no better than ablation."""
    denom = ce_ablated - ce_clean
    if abs(denom) < 1e-12:
        return float("nan")
    return (ce_ablated - ce_spliced) / denom
