"""Kernel densities for the JumpReLU pseudo-derivatives (Rajamanoharan et al. 2024).

Each K is a density in the standardised variable u = (z_pre - theta) / bandwidth and
integrates to 1; the 1/bandwidth factor belongs to the pseudo-derivative, not to K
(overcomplete 0.3 divides twice, making threshold gradients 1/bandwidth too large).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Kernel = Callable[[torch.Tensor], torch.Tensor]

# Exponential tails are cut where they fall below e^-40 (~4e-18): the mass lost is
# negligible, and it keeps exp/sin off huge arguments and subnormal results, which
# made the backward pass ~100x slower on CPU.
_FAR = 40.0


def _inside(u: torch.Tensor, half_width: float = 1.0) -> torch.Tensor:
    return (u.abs() < half_width).to(u.dtype)


def rectangle(u: torch.Tensor) -> torch.Tensor:
    return _inside(u, 0.5)


def gaussian(u: torch.Tensor) -> torch.Tensor:
    half_sq = (0.5 * u * u).clamp_max(_FAR)
    return torch.exp(-half_sq) * (half_sq < _FAR) * (1.0 / math.sqrt(2.0 * math.pi))


def triangular(u: torch.Tensor) -> torch.Tensor:
    return (1.0 - u.abs()).clamp_min(0.0)


def cosine(u: torch.Tensor) -> torch.Tensor:
    return (math.pi / 4.0) * torch.cos((math.pi / 2.0) * u.clamp(-1.0, 1.0)) * _inside(u)


def epanechnikov(u: torch.Tensor) -> torch.Tensor:
    return 0.75 * (1.0 - u * u).clamp_min(0.0)


def quartic(u: torch.Tensor) -> torch.Tensor:
    return (15.0 / 16.0) * (1.0 - u * u).clamp_min(0.0).square()


def silverman(u: torch.Tensor) -> torch.Tensor:
    # In place on temporaries: it runs on every (rows, n) code of a JumpReLU backward.
    a = u.abs().mul_(1.0 / math.sqrt(2.0)).clamp_max_(_FAR)
    far = a == _FAR
    out = torch.exp(a.neg()).mul_(0.5).mul_(a.add_(math.pi / 4.0).sin_())
    return out.masked_fill_(far, 0.0)


def cauchy(u: torch.Tensor) -> torch.Tensor:
    return 1.0 / (math.pi * (1.0 + u * u))


KERNELS: dict[str, Kernel] = {
    "rectangle": rectangle,
    "gaussian": gaussian,
    "triangular": triangular,
    "cosine": cosine,
    "epanechnikov": epanechnikov,
    "quartic": quartic,
    "silverman": silverman,
    "cauchy": cauchy,
}


DEFAULT_KERNEL = "silverman"
"""The kernel JumpSAE (and TrainConfig.kernel) use when none is named."""


def get_kernel(name: str) -> Kernel:
    if not isinstance(name, str) or name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; valid: {sorted(KERNELS)}")
    return KERNELS[name]
