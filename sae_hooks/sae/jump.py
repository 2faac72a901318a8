"""JumpReLU SAE (Rajamanoharan et al. 2024) with the paper's kernel pseudo-derivatives.

z = z_pre * H(z_pre - theta), one learned theta > 0 per latent, stored as log theta
so Adam moves it on a relative scale. The sparsity loss is L0 through the Heaviside
straight-through estimator on the pre-activations.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .base import SAE, SAEOutput
from .kernels import Kernel, get_kernel

DEFAULT_BANDWIDTH = 1e-3
INITIAL_THRESHOLD = 1e-3


class JumpReLU(torch.autograd.Function):
    """z_pre * H(z_pre - theta); d/dz_pre = H, d/dtheta = -(theta/eps) K((z_pre - theta)/eps)."""

    @staticmethod
    def forward(z_pre: torch.Tensor, threshold: torch.Tensor, kernel: Kernel, bandwidth: float):
        return z_pre * (z_pre > threshold)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        z_pre, threshold, kernel, bandwidth = inputs
        ctx.save_for_backward(z_pre, threshold)
        ctx.kernel, ctx.bandwidth = kernel, bandwidth

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        z_pre, threshold = ctx.saved_tensors
        grad_z = grad_theta = None
        if ctx.needs_input_grad[0]:
            grad_z = grad * (z_pre > threshold)
        if ctx.needs_input_grad[1]:
            density = ctx.kernel((z_pre - threshold) / ctx.bandwidth)
            grad_theta = (-(threshold / ctx.bandwidth) * density * grad).sum_to_size(
                threshold.shape
            )
        return grad_z, grad_theta, None, None


class Heaviside(torch.autograd.Function):
    """H(z_pre - theta); d/dz_pre = 0, d/dtheta = -(1/eps) K((z_pre - theta)/eps)."""

    @staticmethod
    def forward(z_pre: torch.Tensor, threshold: torch.Tensor, kernel: Kernel, bandwidth: float):
        return (z_pre > threshold).to(z_pre.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        z_pre, threshold, kernel, bandwidth = inputs
        ctx.save_for_backward(z_pre, threshold)
        ctx.kernel, ctx.bandwidth = kernel, bandwidth

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        z_pre, threshold = ctx.saved_tensors
        grad_z = grad_theta = None
        if ctx.needs_input_grad[0]:
            grad_z = torch.zeros_like(z_pre)
        if ctx.needs_input_grad[1]:
            density = ctx.kernel((z_pre - threshold) / ctx.bandwidth)
            grad_theta = (-(1.0 / ctx.bandwidth) * density * grad).sum_to_size(threshold.shape)
        return grad_z, grad_theta, None, None


def jump_relu(
    z_pre: torch.Tensor, threshold: torch.Tensor, kernel: Kernel, bandwidth: float
) -> torch.Tensor:
    return JumpReLU.apply(z_pre, threshold, kernel, bandwidth)


def heaviside(
    z_pre: torch.Tensor, threshold: torch.Tensor, kernel: Kernel, bandwidth: float
) -> torch.Tensor:
    return Heaviside.apply(z_pre, threshold, kernel, bandwidth)


class JumpSAE(SAE):
    """JumpReLU SAE. `bandwith` (the seed's spelling) and `bandwidth` are the same
    argument (default 1e-3, suited to inputs scaled to E||x||^2 = 1). kernel: one of
    KERNELS. A custom encoder's codes are ignored: JumpReLU acts on its pre-codes.
    """

    architecture = "jumprelu"

    def __init__(
        self,
        input_shape: int | tuple[int, ...],
        nb_concepts: int,
        kernel: str = "silverman",
        bandwith: float | None = None,
        encoder_module: str | nn.Module | None = None,
        dictionary_params: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        *,
        bandwidth: float | None = None,
    ) -> None:
        kernel_fn, width = get_kernel(kernel), _bandwidth(bandwith, bandwidth)
        super().__init__(input_shape, nb_concepts, encoder_module, dictionary_params, device)
        self.kernel, self.kernel_fn, self.bandwidth = kernel, kernel_fn, width
        self.log_threshold = nn.Parameter(
            torch.full((nb_concepts,), math.log(INITIAL_THRESHOLD), device=device)
        )

    @property
    def bandwith(self) -> float:
        """The seed's spelling of `bandwidth`."""
        return self.bandwidth

    @property
    def threshold(self) -> torch.Tensor:
        """theta = exp(log_threshold), (nb_concepts,); gradients reach log_threshold through it."""
        return self.log_threshold.exp()

    def _sparsify(self, pre: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return JumpReLU.apply(pre, self.threshold, self.kernel_fn, self.bandwidth)

    def sparsity_loss(self, out: SAEOutput) -> torch.Tensor:
        """L0 per row, averaged: sum_i H(z_pre_i - theta_i) with the kernel STE."""
        active = Heaviside.apply(out.z_pre, self.threshold, self.kernel_fn, self.bandwidth)
        return active.sum(dim=-1).mean()

    def _variant_config(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "bandwidth": self.bandwidth}


def _bandwidth(bandwith: float | None, bandwidth: float | None) -> float:
    if bandwith is not None and bandwidth is not None and bandwith != bandwidth:
        raise ValueError(
            f"bandwith={bandwith} and bandwidth={bandwidth} disagree; they are the same "
            "argument, pass one"
        )
    value = bandwidth if bandwidth is not None else bandwith
    if value is None:
        return DEFAULT_BANDWIDTH
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"bandwidth must be a positive finite number, got {value!r}")
    return float(value)
