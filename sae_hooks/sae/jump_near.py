"""JumpReLU's pairs just below their threshold, in its sparse training step.

The support of a JumpReLU step is every (row, latent) pair within the kernel's reach
of its threshold, z_pre >= theta - r; at the default Silverman bandwidth that is 5-8
pairs for each kept one (768 -> 6144, L0 32: 319k pairs, 43k kept). A pair below its
threshold has a zero code and a zero gradient for z_pre (H = 0); it matters only to
theta's gradient, -(1/eps) K(u) (theta dL/dz + dL/dH), where dL/dz through the decoder
is the dot G_r . a_j of the output's gradient with the atom. Summed over the pair's
rows that is a_j . (sum_r K(u_rj) G_r): one (n, rows) CSR product with G and n row
dots (`NearThreshold`), where a per-pair dot (the decoder's per-sample-weights
backward) did M x d gathers at half that speed or less.
Gradients equal the per-pair sums up to float summation order (tests/test_sae_jump_sparse.py).
"""

from __future__ import annotations

from typing import Any

import torch

from .kernels import Kernel
from .sparse import latent_grad, pairs_of


class SplitSupport:
    """A support's pairs (row-major) split at the threshold: kept (pre > theta) and
    near (below it, within reach), each as positions into the support and their
    (rows, cols); `pre_near`, the near pairs' pre-codes (detached)."""

    def __init__(
        self, pre: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, theta: torch.Tensor
    ) -> None:
        values = pairs_of(pre.detach(), rows, cols)
        # the comparison JumpReLUWithL0's forward makes: H = z_pre > theta
        kept = values > theta.detach().index_select(0, cols)
        self.rows, self.cols, self.size = rows, cols, rows.numel()
        self.kept_at = kept.nonzero().squeeze(1)
        self.near_at = kept.logical_not_().nonzero().squeeze(1)
        self.kept_rows = rows.index_select(0, self.kept_at)
        self.kept_cols = cols.index_select(0, self.kept_at)
        self.near_rows = rows.index_select(0, self.near_at)
        self.near_cols = cols.index_select(0, self.near_at)
        self.pre_near = values.index_select(0, self.near_at)

    def merged(self, kept: torch.Tensor, near: torch.Tensor) -> torch.Tensor:
        """Per-pair values of the whole support (row-major) from the kept and near
        ones, differentiable in both."""
        out = kept.new_zeros(self.size)
        return out.index_copy(0, self.kept_at, kept).index_copy(0, self.near_at, near)

    def near_codes(
        self,
        x_hat: torch.Tensor,
        theta: torch.Tensor,
        atoms: torch.Tensor,
        kernel: Kernel,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_hat, z, H) of the near pairs through `NearThreshold`."""
        near = (self.pre_near, self.near_rows, self.near_cols)
        return NearThreshold.apply(x_hat, theta, atoms.detach(), *near, kernel, eps)


class NearThreshold(torch.autograd.Function):
    """(x_hat, z, H) for the pairs below their threshold: x_hat passed through unchanged
    (their codes are 0 and add nothing to it), z and H zeros (M,), whose backward gives
    theta the pseudo-derivatives of JumpReLUWithL0 at these pairs:
    d/dtheta_j = -(1/eps) sum_r K(u_rj) (theta_j (G_r . a_j + dL/dz_rj) + dL/dH_rj),
    with G = dL/dx_hat, the decoder's term as a_j . (CSR(K) @ G)_j."""

    @staticmethod
    def forward(
        x_hat: torch.Tensor,
        threshold: torch.Tensor,
        atoms: torch.Tensor,
        pre: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        kernel: Kernel,
        bandwidth: float,
    ):
        return x_hat.view_as(x_hat), pre.new_zeros(pre.shape), pre.new_zeros(pre.shape)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        _, threshold, atoms, pre, rows, cols, kernel, bandwidth = inputs
        ctx.save_for_backward(threshold, atoms, pre, rows, cols)
        ctx.kernel, ctx.bandwidth = kernel, bandwidth
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None

    @staticmethod
    def backward(ctx: Any, grad_x: torch.Tensor | None, grad_z: Any, grad_active: Any):
        threshold, atoms, pre, rows, cols = ctx.saved_tensors
        grad_theta = None
        wanted = grad_x is not None or grad_z is not None or grad_active is not None
        if ctx.needs_input_grad[1] and wanted:
            theta = threshold.detach()
            picked = theta.index_select(0, cols)
            # K(u) as `jump._density` evaluates it for JumpReLUWithL0
            density = ctx.kernel(torch.sub(pre, picked).div_(ctx.bandwidth))
            grad_theta = torch.zeros_like(theta)
            if grad_z is not None or grad_active is not None:
                weight = grad_active if grad_z is None else grad_z * picked
                if grad_z is not None and grad_active is not None:
                    weight = weight + grad_active
                grad_theta.index_add_(0, cols, (density * weight).to(theta.dtype))
            if grad_x is not None:
                g = grad_x.reshape(-1, atoms.shape[1]).to(atoms.dtype)
                weights = density.to(atoms.dtype)  # K = 0 only at the reach's very edge
                summed = latent_grad(atoms.shape[0], rows, cols, weights, g, drop_zeros=False)
                dots = summed.mul_(atoms).sum(-1)  # row dots, in place: no (n, d) temporary
                grad_theta.add_(dots.to(theta.dtype) * theta)
            grad_theta.mul_(-1.0 / ctx.bandwidth)
        return grad_x, grad_theta, None, None, None, None, None, None
