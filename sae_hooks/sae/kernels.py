"""Kernel densities for the JumpReLU pseudo-derivatives (Rajamanoharan et al. 2024).

Each K is a density in the standardised variable u = (z_pre - theta) / bandwidth and
integrates to 1; the 1/bandwidth factor belongs to the pseudo-derivative, not to K
(overcomplete 0.3 divides twice, making threshold gradients 1/bandwidth too large).
The rectangle is 1 on the closed interval |u| <= 1/2, overcomplete's boundary.

`rectangle_kernel(x, bandwidth)` ... `cauchy_kernel` are overcomplete's two-argument
spellings: K(x / bandwidth) / bandwidth, the same kernels as densities in x itself.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch

Kernel = Callable[[torch.Tensor], torch.Tensor]

# Exponential tails are cut where they fall below e^-40 (~4e-18): the mass lost is
# negligible, and it keeps exp/sin off huge arguments and subnormal results, which
# made the backward pass ~100x slower on CPU.
_FAR = 40.0

# Silverman's tail decays only as e^-(|u| / sqrt 2): cut at e^-40 it reaches 57
# bandwidths, and at the default bandwidth a third of a layer's pre-codes sit within
# that of their threshold, so a JumpReLU backward could not be sparse. Cut at e^-14
# instead: the tail beyond holds sqrt(2) e^-14 < 1.2e-6 of the kernel's unit mass.
_SILVERMAN_CUT = 14.0


def _inside(u: torch.Tensor, half_width: float = 1.0) -> torch.Tensor:
    return (u.abs() < half_width).to(u.dtype)


def rectangle(u: torch.Tensor) -> torch.Tensor:
    return (u.abs() <= 0.5).to(u.dtype)


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
    a = u.abs().mul_(1.0 / math.sqrt(2.0)).clamp_max_(_SILVERMAN_CUT)
    far = a == _SILVERMAN_CUT
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


KERNEL_SUPPORT: dict[str, float | None] = {
    "rectangle": 0.5,
    "gaussian": math.sqrt(2.0 * _FAR),
    "triangular": 1.0,
    "cosine": 1.0,
    "epanechnikov": 1.0,
    "quartic": 1.0,
    "silverman": _SILVERMAN_CUT * math.sqrt(2.0),
    "cauchy": None,
}
"""|u| beyond which each kernel above is exactly 0 (None: nowhere). A JumpReLU backward
needs the codes within this many bandwidths of their threshold, no others."""


DEFAULT_KERNEL = "silverman"
"""The kernel JumpSAE (and TrainConfig.kernel) use when none is named."""


def get_kernel(name: str) -> Kernel:
    if not isinstance(name, str) or name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; valid: {sorted(KERNELS)}")
    return KERNELS[name]


def _in_x(name: str) -> Callable[[torch.Tensor, float], torch.Tensor]:
    density = KERNELS[name]

    def kernel(x: torch.Tensor, bandwith: float) -> torch.Tensor:
        return density(x / bandwith) / bandwith

    kernel.__name__ = kernel.__qualname__ = f"{name}_kernel"
    kernel.__doc__ = f"The {name} kernel as a density in x: K(x / bandwith) / bandwith."
    return kernel


rectangle_kernel = _in_x("rectangle")
gaussian_kernel = _in_x("gaussian")
triangular_kernel = _in_x("triangular")
cosine_kernel = _in_x("cosine")
epanechnikov_kernel = _in_x("epanechnikov")
quartic_kernel = _in_x("quartic")
silverman_kernel = _in_x("silverman")
cauchy_kernel = _in_x("cauchy")


def as_kernel(kernel_fn: object, bandwidth: object) -> tuple[Kernel, float]:
    """(K of the standardised variable u, bandwidth as a float) from what a caller of
    jump_relu / heaviside passes: a name in KERNELS, a one-argument K(u), or an
    overcomplete-style kernel_fn(x, bandwidth) read as a density in x = u * bandwidth.
    """
    if isinstance(bandwidth, torch.Tensor) and bandwidth.numel() == 1:
        bandwidth = float(bandwidth)
    if (
        isinstance(bandwidth, bool)
        or not isinstance(bandwidth, (int, float))
        or not (0 < bandwidth < math.inf)
    ):
        raise ValueError(f"bandwidth must be a positive finite number, got {bandwidth!r}")
    width = float(bandwidth)
    if isinstance(kernel_fn, str):
        return get_kernel(kernel_fn), width
    if not callable(kernel_fn):
        raise TypeError(
            f"kernel_fn must be a name in {sorted(KERNELS)} or a callable, "
            f"got {type(kernel_fn).__name__}"
        )
    if not _needs_bandwidth(kernel_fn):
        return kernel_fn, width
    return (lambda u: kernel_fn(u * width, width) * width), width


def _needs_bandwidth(fn: Callable) -> bool:
    """True for a callable that must be given two arguments (x, bandwidth)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    for args in ((0.0,), (0.0, 0.0)):
        try:
            sig.bind(*args)
        except TypeError:
            continue
        return len(args) == 2
    return False
