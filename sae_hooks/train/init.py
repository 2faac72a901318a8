"""Initialisation from data: the decoder bias at the data's centre.

(The encoder is tied by the SAE's own `tie_encoder_to_dictionary_`; variant-specific
init, such as JumpReLU's thresholds, is the SAE's `init_from_data`.)
"""

from __future__ import annotations

import torch
from torch import nn


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
