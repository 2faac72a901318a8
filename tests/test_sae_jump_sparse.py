"""JumpReLU's sparse training path (the support z_pre >= theta - kernel reach) gives
the dense path's values and gradients: encoder, decoder, b_dec, thresholds, input;
with the L0 loss, AuxK and a whole Trainer step."""

from __future__ import annotations

import copy

import pytest
import torch

from sae_hooks.sae import JumpSAE
from sae_hooks.sae.output import kept_support
from sae_hooks.sae.sparse_encoder import fire_counts
from sae_hooks.train.losses import aux_k_loss

D, NB, ROWS, L0 = 16, 256, 48, 4


def make(kernel: str, bandwidth: float) -> JumpSAE:
    torch.manual_seed(0)
    sae = JumpSAE(D, NB, kernel=kernel, bandwidth=bandwidth)
    with torch.no_grad():
        sae.dictionary.bias.normal_(std=0.3)
        sae.encoder.bias.normal_(std=0.3)
        sae.input_scale.fill_(1.3)
        pre = sae.encode(torch.randn(512, D))[0]
        theta = pre.quantile(1 - L0 / NB, dim=0).clamp_min(1e-3)  # L0 about 4 of 256
        sae.log_threshold.copy_(theta.log())
    return sae


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in module.named_parameters() if p.grad is not None}


def assert_close(a: torch.Tensor, b: torch.Tensor, msg: str = "") -> None:
    scale = b.abs().max().item()
    err = (a - b).abs().max().item()
    assert err <= 1e-9 * scale + 1e-12, f"{msg}: max error {err} at scale {scale}"


@pytest.mark.parametrize("decode", [None, False], ids=["sparse-decode", "dense-decode"])
@pytest.mark.parametrize(
    ("kernel", "bandwidth"), [("silverman", 1e-3), ("rectangle", 0.2), ("gaussian", 0.01)]
)
def test_values_and_gradients_match_the_dense_path(kernel, bandwidth, decode):
    # float64: u = (z_pre - theta) / bandwidth amplifies the pre-codes' float32
    # rounding (folded vs centred bias) by 1 / bandwidth in theta's gradient
    sparse = make(kernel, bandwidth).double()
    dense = copy.deepcopy(sparse)
    sparse.sparse_encoder_grad, dense.sparse_encoder_grad = None, False
    sparse.sparse_decode = decode
    x = torch.randn(ROWS, D, dtype=torch.float64)
    dead = torch.rand(NB, generator=torch.Generator().manual_seed(1)) < 0.3
    outs, x_grads = [], []
    for sae in (sparse, dense):
        xi = x.clone().requires_grad_()
        out = sae(xi)
        residual = (xi - out.x_hat).detach()
        loss = (
            (xi - out.x_hat).pow(2).sum(-1).mean()
            + 0.1 * sae.sparsity_loss(out)
            + (out.z * torch.linspace(0, 1, NB, dtype=torch.float64)).sum()
            + aux_k_loss(residual, out.z_pre, dead, sae.get_dictionary(), 8, support=out.support)
        )
        loss.backward()
        outs.append(out)
        x_grads.append(xi.grad)
    assert kept_support(outs[0]) is not None  # the sparse path ran
    assert kept_support(outs[1]) is None
    assert 0 < (outs[0].z != 0).sum() < 0.05 * ROWS * NB
    for a, b in zip(outs[0], outs[1]):
        assert_close(a, b)
    g_sparse, g_dense = grads(sparse), grads(dense)
    assert set(g_sparse) == set(g_dense) == {n for n, _ in sparse.named_parameters()}
    assert g_dense["log_threshold"].abs().sum() > 0
    for name in g_dense:
        assert_close(g_sparse[name], g_dense[name], name)
    assert_close(x_grads[0], x_grads[1], "x")
    torch.testing.assert_close(fire_counts(outs[0]), (outs[1].z != 0).sum(0))


def test_a_dense_support_or_an_unbounded_kernel_takes_the_dense_path():
    low = make("silverman", 1e-3)
    with torch.no_grad():
        low.log_threshold.fill_(-10.0)  # fires on half the codes
    assert kept_support(low(torch.randn(ROWS, D))) is None
    cauchy = make("cauchy", 1e-3)  # K > 0 everywhere: every code carries a gradient
    assert kept_support(cauchy(torch.randn(ROWS, D))) is None
    with torch.no_grad():  # no gradient wanted: the plain dense eval forward
        assert kept_support(make("silverman", 1e-3)(torch.randn(ROWS, D))) is None


@pytest.mark.parametrize("host", [True, False], ids=["host", "device"])
def test_the_support_cut_picks_the_path_on_the_host_and_on_a_device(host, monkeypatch):
    """Support at or below MAX_SPARSE_SUPPORT_DENSITY: the sparse path, decoder included
    (its pairs at 0 cost the decoder only their gradient); above it: dense. On the host
    the support is counted before it is listed; on a device its listing is the count."""
    from sae_hooks.sae import jump
    from sae_hooks.sae import sparse as sparse_module

    if not host:
        monkeypatch.setattr(sparse_module, "HOST_DEVICES", ())
    sae, x = make("rectangle", 0.2), torch.randn(ROWS, D)
    with torch.no_grad():
        pre = sae.encode(x)[0]
        sae.log_threshold.copy_(pre.quantile(0.92, dim=0).clamp_min(1e-3).log())
        reach = (pre >= sae.threshold - sae._kernel_radius()).double().mean().item()
    assert 0.05 < reach < 0.5  # above the decoder's own cut (MAX_SPARSE_DENSITY)
    decoded = []
    real_decode = sae.dictionary.decode
    monkeypatch.setattr(sae.dictionary, "decode", lambda z: decoded.append(z) or real_decode(z))
    monkeypatch.setattr(jump, "MAX_SPARSE_SUPPORT_DENSITY", reach * 1.01)
    sparse_out = sae(x)
    assert kept_support(sparse_out) is not None and not decoded
    monkeypatch.setattr(jump, "MAX_SPARSE_SUPPORT_DENSITY", reach * 0.99)
    dense_out = sae(x)
    assert kept_support(dense_out) is None and len(decoded) == 1
    torch.testing.assert_close(sparse_out.x_hat, dense_out.x_hat)


@pytest.mark.parametrize("host", [True, False], ids=["host", "device"])
def test_the_host_splits_the_support_at_the_threshold_with_the_same_gradients(host, monkeypatch):
    """On the host only the kept pairs reach the decoder, the pairs below their threshold
    reach theta through `NearThreshold`; elsewhere every pair of the support is decoded.
    Either gives the dense path's values and gradients (z in the loss included)."""
    from sae_hooks.sae import jump_near
    from sae_hooks.sae import sparse as sparse_module

    if not host:
        monkeypatch.setattr(sparse_module, "HOST_DEVICES", ())
    decoded, split = [], []
    real_decode, real_near = sparse_module.SparseDecode.apply, jump_near.NearThreshold.apply
    monkeypatch.setattr(
        sparse_module.SparseDecode, "apply", lambda *a: decoded.append(a[1]) or real_decode(*a)
    )
    monkeypatch.setattr(
        jump_near.NearThreshold, "apply", lambda *a: split.append(a[4]) or real_near(*a)
    )
    sparse = make("silverman", 0.005).double()
    dense = copy.deepcopy(sparse)
    dense.sparse_encoder_grad = False
    x = torch.randn(ROWS, D, dtype=torch.float64)
    for sae in (sparse, dense):
        out = sae(x)
        weights = torch.linspace(-1, 1, NB, dtype=torch.float64)
        loss = out.x_hat.pow(2).sum() + 0.3 * sae.sparsity_loss(out) + (out.z * weights).sum()
        loss.backward()
        if sae is sparse:
            support = kept_support(out)
            kept = int((support.values != 0).sum())
            assert kept < support.cols.numel()  # pairs below their threshold in the support
    assert [c.numel() for c in decoded] == [kept if host else support.cols.numel()]
    assert [c.numel() for c in split] == ([support.cols.numel() - kept] if host else [])
    g_sparse, g_dense = grads(sparse), grads(dense)
    assert g_dense["log_threshold"].abs().sum() > 0
    for name in g_dense:
        assert_close(g_sparse[name], g_dense[name], name)


@pytest.mark.parametrize("outputs", [(0,), (1,), (2,), (0, 1, 2)], ids=["x", "z", "H", "all"])
@pytest.mark.parametrize("kernel", ["silverman", "rectangle", "gaussian"])
def test_near_threshold_gives_theta_the_per_pair_pseudo_derivatives(kernel, outputs):
    """NearThreshold's theta gradient (one CSR product for the decoder's term) equals
    JumpReLUWithL0's on the same pairs decoded pair by pair, whichever outputs the loss
    reads; x_hat passes through unchanged with its gradient."""
    from sae_hooks.sae.jump import JumpReLUWithL0
    from sae_hooks.sae.jump_near import NearThreshold
    from sae_hooks.sae.kernels import get_kernel

    torch.manual_seed(3)
    n, rows, d, bandwidth, k = 40, 12, 6, 0.3, get_kernel(kernel)
    atoms = torch.randn(n, d, dtype=torch.float64)
    base = torch.randn(rows, d, dtype=torch.float64)
    weights = [torch.randn(rows, d, dtype=torch.float64), torch.randn(150, dtype=torch.float64)]
    flat = torch.randperm(rows * n)[:150].sort().values
    pair_rows, cols = flat // n, flat % n
    theta0 = torch.rand(n, dtype=torch.float64) + 1.0
    pre = theta0.index_select(0, cols) - torch.rand(150, dtype=torch.float64) * 0.4

    def loss(x_hat, z, active):
        parts = [(x_hat * weights[0]).sum(), (z * weights[1]).sum(), 0.7 * active.sum()]
        return sum(parts[i] for i in outputs)

    theta, x0 = theta0.clone().requires_grad_(), base.clone().requires_grad_()
    z, active = JumpReLUWithL0.apply(pre, theta.index_select(0, cols), k, bandwidth)
    x_hat = x0.index_add(0, pair_rows, z[:, None] * atoms.index_select(0, cols))
    loss(x_hat, z, active).backward()
    expected = theta.grad, x0.grad
    theta, x0 = theta0.clone().requires_grad_(), base.clone().requires_grad_()
    outs = NearThreshold.apply(x0, theta, atoms, pre, pair_rows, cols, k, bandwidth)
    assert torch.equal(outs[0], base) and not outs[1].any() and not outs[2].any()
    loss(*outs).backward()
    assert expected[0].abs().sum() > 0
    assert_close(theta.grad, expected[0], "theta")
    if 0 in outputs:
        assert_close(x0.grad, expected[1], "x_hat")
