"""Initialisation from data: the decoder bias at the data's centre.

(The encoder is tied by the SAE's own `tie_encoder_to_dictionary_`; variant-specific
init, such as JumpReLU's thresholds, is the SAE's `init_from_data`.)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from sae_hooks.activations import RowPair, to_training

from .constraints import normalize_rows_

if TYPE_CHECKING:
    from sae_hooks.sae import SAE

    from .config import TrainConfig
    from .sources import RowSource


@torch.no_grad()
def geometric_median(
    x: torch.Tensor, *, max_iter: int = 50, tol: float = 1e-6, eps: float = 1e-8
) -> torch.Tensor:
    """The point minimising the summed Euclidean distance to the rows of x (Weiszfeld).

    Robust to the outlier rows (huge-norm tokens such as BOS) that drag the mean.
    Vectorised over rows; stops when the step is below tol relative to the point.
    """
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"geometric_median expects rows (N, d) with N >= 1, got {tuple(x.shape)}")
    x = x.double()
    y = x.mean(0)
    for _ in range(max_iter):
        w = 1.0 / (x - y).norm(dim=-1).clamp_min(eps)
        y_next = (w[:, None] * x).sum(0) / w.sum()
        step = (y_next - y).norm()
        y = y_next
        if step <= tol * y.norm().clamp_min(eps):
            break
    return y.float()


@torch.no_grad()
def init_decoder_bias_(sae: nn.Module, sample: torch.Tensor, method: str) -> None:
    """b_dec = geometric median, mean, or zeros of a sample of (normalised) rows."""
    bias = sae.dictionary.bias
    if bias is None:
        return
    if method == "geometric_median":
        bias.copy_(geometric_median(sample))
    elif method == "mean":
        bias.copy_(sample.float().mean(0))
    elif method == "zeros":
        bias.zero_()
    else:
        raise ValueError(
            f"b_dec_init must be 'geometric_median', 'mean' or 'zeros', got {method!r}"
        )


@torch.no_grad()
def initialise_from_data(
    sae: SAE,
    source: RowSource,
    cfg: TrainConfig,
    constrained: torch.Tensor | None,
    device: torch.device,
) -> float:
    """Input scale from stats or a sample; data-dependent init of the SAE. The scale.

    The scale makes E||s x||^2 = d so one lr and init fit every model's activations.
    """
    sample = to_training(source.sample(cfg.init_rows, seed=cfg.seed), device)
    scale = 1.0
    if cfg.normalize_activations:
        msn = source.mean_sq_norm() or _mean_sq_norm(sample)
        if not msn > 0:
            raise ValueError("cannot normalise activations: their mean squared norm is 0")
        scale = math.sqrt(source.d_model / msn)
    if constrained is not None:
        normalize_rows_(constrained)
    sae.tie_encoder_to_dictionary_(warn=False)
    scaled = to_training(sample, device, scale)
    init_decoder_bias_(sae, sae.training_pair(scaled)[1], cfg.b_dec_init)
    sae.init_from_data(scaled, cfg)
    return scale


def _mean_sq_norm(sample: torch.Tensor | RowPair) -> float:
    """E||row||^2 of a sample; a pair's row is its input and target side by side."""
    if isinstance(sample, RowPair):
        return float(sum(t.pow(2).sum(-1) for t in sample).mean())
    return float(sample.pow(2).sum(-1).mean())
