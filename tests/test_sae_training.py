"""Short training runs on synthetic sparse data: the SAEs must find the true atoms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sae_hooks.sae import BatchTopKSAE, JumpSAE, TopKSAE
from sae_hooks.sae.training import squared_error

D_IN, N_ATOMS, ACTIVE, BATCH = 32, 64, 3, 256


@pytest.fixture
def one_thread():
    """Small matmuls run fastest, and steadiest on a shared machine, on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sampler(seed: int):
    gen = torch.Generator().manual_seed(seed)
    atoms = F.normalize(torch.randn(N_ATOMS, D_IN, generator=gen), dim=-1)

    def batch(n: int = BATCH) -> torch.Tensor:
        support = torch.rand(n, N_ATOMS, generator=gen).argsort(-1)[:, :ACTIVE]
        magnitude = torch.rand(n, ACTIVE, generator=gen) + 0.5
        return torch.zeros(n, N_ATOMS).scatter(-1, support, magnitude) @ atoms

    return atoms, batch


def _recovery(sae, atoms: torch.Tensor) -> float:
    """Mean over true atoms of the best cosine with a learned atom."""
    cos = F.normalize(sae.get_dictionary().detach(), dim=-1) @ atoms.T
    return cos.max(dim=0).values.mean().item()


def _train(sae, batch, steps: int, sparsity_weight: float = 0.0, threshold_lr: float = 0.0):
    sae.tie_encoder_to_dictionary_()
    groups = [{"params": [p for n, p in sae.named_parameters() if n != "log_threshold"]}]
    if threshold_lr:
        groups.append({"params": [sae.log_threshold], "lr": threshold_lr})
    opt = torch.optim.Adam(groups, lr=3e-3)
    for _ in range(steps):
        x = batch()
        out = sae(x)
        loss = (out.x_hat - x).pow(2).sum(-1).mean()
        if sparsity_weight:
            loss = loss + sparsity_weight * sae.sparsity_loss(out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return sae.eval()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda: BatchTopKSAE(D_IN, 128, top_k_per_sample=ACTIVE), id="batchtopk-per-sample"
        ),
        pytest.param(lambda: BatchTopKSAE(D_IN, 128, top_k=ACTIVE * BATCH), id="batchtopk"),
        pytest.param(lambda: TopKSAE(D_IN, 128, top_k=ACTIVE), id="topk"),
    ],
)
def test_topk_family_recovers_atoms(make, one_thread):
    torch.manual_seed(0)
    atoms, batch = _sampler(0)
    sae = _train(make(), batch, steps=400)
    assert _recovery(sae, atoms) > 0.9
    with torch.no_grad():
        x = batch(1024)
        out = sae(x)
        fvu = (out.x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        l0 = (out.z > 0).sum(-1).float().mean()
    assert fvu < 0.3
    assert 1.5 < l0 < 6  # the eval threshold keeps about the training budget


def test_jumprelu_recovers_atoms_and_learns_its_threshold(one_thread):
    torch.manual_seed(0)
    atoms, batch = _sampler(0)
    sae = JumpSAE(D_IN, 128, bandwidth=0.1)
    sae = _train(sae, batch, steps=1000, sparsity_weight=0.1, threshold_lr=0.02)
    assert _recovery(sae, atoms) > 0.9
    with torch.no_grad():
        l0 = (sae(batch(1024)).z > 0).sum(-1).float().mean()
    assert l0 < 6  # from ~64 active at the initial threshold of 1e-3
    assert sae.threshold.median() > 0.01


@pytest.mark.parametrize("shape", [(257, 48), (3, 5, 16)])
def test_squared_error_has_autograds_gradient_in_one_pass(shape):
    """The reconstruction loss's backward is err * 2g / N: autograd's chain through pow,
    sum and mean up to the rounding of 2g / N (an ulp), and float64's gradcheck."""
    err = torch.randn(shape, requires_grad=True)
    (3.0 * squared_error(err)).backward()
    ours = err.grad.clone()
    err.grad = None
    (3.0 * err.pow(2).sum(-1).mean()).backward()
    torch.testing.assert_close(ours, err.grad, rtol=2**-22, atol=0)
    torch.testing.assert_close(squared_error(err), err.pow(2).sum(-1).mean(), rtol=0, atol=0)
    assert torch.autograd.gradcheck(squared_error, (err.detach().double().requires_grad_(),))
