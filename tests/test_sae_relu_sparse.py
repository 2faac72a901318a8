"""A ReLU SAE trains through its positive codes when they are few: the dense path's
values and gradients (encoder, decoder, b_dec, input), with the L1 loss and fire counts."""

from __future__ import annotations

import copy

import pytest
import torch

from sae_hooks.sae import SAE
from sae_hooks.sae.output import kept_support
from sae_hooks.sae.sparse_encoder import fire_counts

D, NB, ROWS, L0 = 16, 256, 48, 4


def sparse_relu() -> SAE:
    torch.manual_seed(0)
    sae = SAE(D, NB)
    with torch.no_grad():
        sae.dictionary.bias.normal_(std=0.3)
        sae.input_scale.fill_(1.3)
        pre = sae.encode(torch.randn(512, D))[0]
        sae.encoder.bias.sub_(pre.quantile(1 - L0 / NB, dim=0))  # about 4 of 256 fire
    return sae


@pytest.mark.parametrize("decode", [None, False], ids=["sparse-decode", "dense-decode"])
def test_values_and_gradients_match_the_dense_path(decode):
    sparse = sparse_relu().double()
    dense = copy.deepcopy(sparse)
    sparse.sparse_encoder_grad, dense.sparse_encoder_grad = None, False
    sparse.sparse_decode = decode
    x = torch.randn(ROWS, D, dtype=torch.float64)
    outs, x_grads = [], []
    for sae in (sparse, dense):
        xi = x.clone().requires_grad_()
        out = sae(xi)
        loss = (xi - out.x_hat).pow(2).sum(-1).mean() + 0.1 * sae.sparsity_loss(out)
        (loss + (out.z * torch.linspace(0, 1, NB, dtype=torch.float64)).sum()).backward()
        outs.append(out)
        x_grads.append(xi.grad)
    assert kept_support(outs[0]) is not None  # the sparse path ran
    assert kept_support(outs[1]) is None
    assert 0 < (outs[0].z != 0).sum() < 0.05 * ROWS * NB
    for a, b in zip(outs[0], outs[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for (name, p), q in zip(sparse.named_parameters(), dense.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=name)
    torch.testing.assert_close(x_grads[0], x_grads[1], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(fire_counts(outs[0]), (outs[1].z != 0).sum(0))


def test_dense_codes_a_selecting_variant_or_no_gradient_take_the_dense_path():
    fresh = SAE(D, NB)  # about half the codes positive
    assert kept_support(fresh(torch.randn(ROWS, D))) is None
    with torch.no_grad():
        assert kept_support(sparse_relu()(torch.randn(ROWS, D))) is None
    forced = sparse_relu()
    forced.sparse_encoder_grad = False
    assert kept_support(forced(torch.randn(ROWS, D))) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_latent_grad_is_the_dense_product(dtype):
    """The atoms' / encoder's gradient of the sparse paths: sum over pairs of g x[row]
    into row col, written by addmm with beta = 0 into uninitialised memory on CPU."""
    from sae_hooks.sae.sparse import latent_grad

    gen = torch.Generator().manual_seed(0)
    rows = torch.arange(40).repeat_interleave(3)
    cols = torch.randint(0, 50, (120,), generator=gen)
    grad = torch.randn(120, generator=gen, dtype=dtype)
    x = torch.randn(40, 8, generator=gen, dtype=dtype)
    dense = torch.zeros(50, 40, dtype=dtype).index_put_((cols, rows), grad, accumulate=True)
    for _ in range(3):  # fresh allocations each time: none may leak into the result
        torch.testing.assert_close(latent_grad(50, rows, cols, grad, x), dense @ x)
