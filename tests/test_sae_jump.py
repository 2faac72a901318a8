"""JumpReLU: kernel densities and the paper's pseudo-derivatives (Rajamanoharan et al. 2024)."""

from __future__ import annotations

import math

import pytest
import torch

from sae_hooks.sae import KERNELS, JumpSAE
from sae_hooks.sae.jump import Heaviside, JumpReLU

EPS = 0.05


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernels_are_densities(name):
    kernel = KERNELS[name]
    half_width = 1e4 if name == "cauchy" else 60.0
    u = torch.linspace(-half_width, half_width, 1_000_001, dtype=torch.float64)
    k = kernel(u)
    assert (k >= 0).all() or name == "silverman"  # Silverman's kernel dips below 0
    integral = torch.trapezoid(k, u).item()
    if name == "cauchy":
        integral += 1 - 2 / math.pi * math.atan(half_width)  # the tails beyond the grid
    assert abs(integral - 1.0) < 1e-3
    torch.testing.assert_close(kernel(u[:5]), kernel(-u[:5]))  # symmetric


def test_kernel_values():
    u = torch.tensor([0.0, 0.25, 0.6])
    torch.testing.assert_close(KERNELS["rectangle"](u), torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(KERNELS["triangular"](u), torch.tensor([1.0, 0.75, 0.4]))
    torch.testing.assert_close(KERNELS["epanechnikov"](u), 0.75 * (1 - u**2))
    torch.testing.assert_close(
        KERNELS["gaussian"](u), torch.exp(-(u**2) / 2) / math.sqrt(2 * math.pi)
    )


def _hand_inputs(dtype=torch.float32):
    theta = torch.tensor([0.1, 0.2, 0.3], dtype=dtype)
    z_pre = torch.tensor(
        [[0.08, 0.21, 0.5], [0.12, 0.19, 0.31], [0.1, -0.4, 0.29], [0.5, 0.2, 0.0]], dtype=dtype
    )
    grad_out = torch.tensor(
        [[1.0, -2.0, 0.5], [0.3, 1.0, 1.0], [-1.0, 0.7, 2.0], [1.0, 1.0, 1.0]], dtype=dtype
    )
    return z_pre, theta, grad_out


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_jumprelu_gradients_match_the_paper(name):
    kernel = KERNELS[name]
    z_pre, theta, g = _hand_inputs()
    z_pre.requires_grad_(True)
    theta.requires_grad_(True)
    out = JumpReLU.apply(z_pre, theta, kernel, EPS)
    torch.testing.assert_close(out.detach(), z_pre.detach() * (z_pre.detach() > theta.detach()))
    out.backward(g)
    z, t = z_pre.detach(), theta.detach()
    expected_theta = (-(t / EPS) * kernel((z - t) / EPS) * g).sum(0)
    torch.testing.assert_close(theta.grad, expected_theta)
    torch.testing.assert_close(z_pre.grad, g * (z > t))


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_heaviside_gradients_match_the_paper(name):
    kernel = KERNELS[name]
    z_pre, theta, g = _hand_inputs()
    z_pre.requires_grad_(True)
    theta.requires_grad_(True)
    out = Heaviside.apply(z_pre, theta, kernel, EPS)
    torch.testing.assert_close(out.detach(), (z_pre.detach() > theta.detach()).float())
    out.backward(g)
    z, t = z_pre.detach(), theta.detach()
    torch.testing.assert_close(theta.grad, (-(1 / EPS) * kernel((z - t) / EPS) * g).sum(0))
    assert z_pre.grad is None  # H passes no gradient to z_pre (None, not a tensor of zeros)


def test_rectangle_threshold_gradient_by_hand():
    """One latent, theta = 0.2, eps = 0.1: only z_pre within eps/2 of theta counts."""
    theta = torch.tensor([0.2], requires_grad=True)
    z_pre = torch.tensor([[0.18], [0.26], [0.9]])
    Heaviside.apply(z_pre, theta, KERNELS["rectangle"], 0.1).sum().backward()
    torch.testing.assert_close(theta.grad, torch.tensor([-10.0]))  # -(1/eps) * 1, once
    theta.grad = None
    JumpReLU.apply(z_pre, theta, KERNELS["rectangle"], 0.1).sum().backward()
    torch.testing.assert_close(theta.grad, torch.tensor([-2.0]))  # -(theta/eps) * 1, once


@pytest.mark.parametrize("fn", [JumpReLU, Heaviside])
def test_gradcheck_wrt_z_pre_away_from_the_threshold(fn):
    torch.manual_seed(0)
    theta = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64)
    z_pre = torch.randn(6, 3, dtype=torch.float64)
    z_pre = torch.where((z_pre - theta).abs() < 0.05, z_pre + 0.2, z_pre).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z: fn.apply(z, theta, KERNELS["gaussian"], 1e-3), (z_pre,)
    )


def test_jump_sae_encode_and_l0():
    torch.manual_seed(0)
    sae = JumpSAE(8, 32, kernel="rectangle", bandwith=0.5)
    assert sae.bandwidth == sae.bandwith == 0.5
    torch.testing.assert_close(sae.threshold, torch.full((32,), 1e-3))
    with torch.no_grad():
        sae.log_threshold.copy_(torch.linspace(-3, 0, 32))
    out = sae(torch.randn(20, 8))
    theta = sae.threshold.detach()
    torch.testing.assert_close(out.z, out.z_pre * (out.z_pre > theta))
    l0 = sae.sparsity_loss(out)
    torch.testing.assert_close(l0, (out.z_pre > theta).float().sum(-1).mean())
    # the STE gradient reaches log_threshold through theta = exp(log_threshold)
    l0.backward()
    z = out.z_pre.detach()
    d_theta = (-(1 / 0.5) * KERNELS["rectangle"]((z - theta) / 0.5)).sum(0) / 20
    torch.testing.assert_close(sae.log_threshold.grad, d_theta * theta)


def test_jump_sae_default_bandwidth_and_kernel():
    sae = JumpSAE(8, 16)
    assert sae.bandwidth == 1e-3 and sae.kernel == "silverman"
    assert JumpSAE(8, 16, bandwith=0.01, bandwidth=0.01).bandwidth == 0.01


@pytest.mark.parametrize("kernel_name", ["silverman", "rectangle", "gaussian"])
def test_fused_jumprelu_l0_matches_the_two_estimators(kernel_name):
    """JumpSAE's loss (MSE + L0) has the same gradients as with JumpReLU and Heaviside apart."""
    torch.manual_seed(0)
    sae = JumpSAE(16, 32, kernel=kernel_name, bandwidth=0.5)
    with torch.no_grad():
        sae.log_threshold.uniform_(-2.0, 0.0)
    x = torch.randn(64, 16)

    def grads(loss_fn):
        sae.zero_grad()
        loss_fn().backward()
        return [p.grad.clone() for p in sae.parameters()]

    def fused():
        out = sae(x)
        return (out.x_hat - x).pow(2).sum(-1).mean() + 0.3 * sae.sparsity_loss(out)

    def apart():
        pre, _ = sae._pre_codes(sae._to_rows(x))
        z = JumpReLU.apply(pre, sae.threshold, sae.kernel_fn, sae.bandwidth)
        x_hat = sae.decode(z)
        l0 = Heaviside.apply(pre, sae.threshold, sae.kernel_fn, sae.bandwidth).sum(-1).mean()
        return (x_hat - x).pow(2).sum(-1).mean() + 0.3 * l0

    for a, b in zip(grads(fused), grads(apart), strict=True):
        torch.testing.assert_close(a, b)
    # An output from another forward is not mistaken for the cached one.
    other = sae(torch.randn(8, 16))
    sae(x)
    expected = (other.z_pre > sae.threshold).float().sum(-1).mean()
    torch.testing.assert_close(sae.sparsity_loss(other), expected)
