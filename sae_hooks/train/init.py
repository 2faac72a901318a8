"""Initialisation from data: tied encoder, decoder bias at the data's centre."""

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
def tie_encoder_to_dictionary_(sae: nn.Module) -> bool:
    """W_enc = W_dec^T and b_enc = 0, the init every strong SAE recipe uses.

    Returns False (leaving the encoder as built) for an encoder without a weight of
    the dictionary's shape, e.g. an MLP encoder.
    """
    weight = getattr(sae.encoder, "weight", None)
    atoms = sae.get_dictionary()
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != tuple(atoms.shape):
        return False
    weight.copy_(atoms)
    bias = getattr(sae.encoder, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.zero_()
    return True


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
