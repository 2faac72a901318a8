"""The sparse decoder gives the dense decoder's values and gradients, and is picked by density."""

from __future__ import annotations

import copy

import pytest
import torch

import sae_hooks.sae.base as base
from sae_hooks.sae import SAE, BatchTopKSAE, JumpSAE, TopKSAE
from sae_hooks.sae import sparse as sparse_module
from sae_hooks.sae.sparse import MAX_SPARSE_DENSITY, decode_fixed, decode_pairs, decode_ragged

D, NB, K, ROWS = 16, 256, 4, 24  # density K / NB = 1/64, below MAX_SPARSE_DENSITY


def make(variant: str) -> SAE:
    torch.manual_seed(0)
    if variant == "topk":
        sae = TopKSAE(D, NB, top_k=K)
    elif variant == "batchtopk":
        sae = BatchTopKSAE(D, NB, top_k_per_sample=K)
    elif variant == "jumprelu":
        sae = JumpSAE(D, NB)
    else:
        sae = SAE(D, NB)
    with torch.no_grad():  # non-zero b_dec and encoder bias, so every term is exercised
        sae.dictionary.bias.normal_()
        sae.encoder.bias.normal_()
    return sae


def sparse_and_dense(variant: str, mode: str) -> tuple[SAE, SAE]:
    sparse = make(variant)
    if variant == "batchtopk":
        sparse(torch.randn(ROWS, D))  # a training batch sets the running threshold
    sparse.train(mode == "train")
    dense = copy.deepcopy(sparse)
    sparse.sparse_decode, dense.sparse_decode = True, False
    return sparse, dense


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
def test_forward_values_and_parameter_gradients_match_dense(variant, mode):
    sparse, dense = sparse_and_dense(variant, mode)
    x = torch.randn(ROWS, D)
    outs = []
    for sae in (sparse, dense):
        out = sae(x)
        ((x - out.x_hat).pow(2).sum(-1).mean() + out.x_hat.sum()).backward()
        outs.append(out)
    assert (outs[0].z != 0).sum() > 0
    torch.testing.assert_close(outs[0].z, outs[1].z)
    torch.testing.assert_close(outs[0].x_hat, outs[1].x_hat)
    g_sparse, g_dense = grads(sparse), grads(dense)
    assert {"dictionary.weight", "dictionary.bias", "encoder.weight"} <= set(g_dense)
    assert g_sparse.keys() == g_dense.keys()
    for name in g_dense:
        torch.testing.assert_close(g_sparse[name], g_dense[name], msg=name)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("variant", ["topk", "batchtopk", "relu", "jumprelu"])
def test_decode_without_grad_matches_dense(variant, mode):
    sparse, dense = sparse_and_dense(variant, mode)
    with torch.no_grad():
        z = sparse.encode(torch.randn(ROWS, D))[1]
        z[0] = 0.0  # a row with no active latent decodes to b_dec alone
        got, want = sparse.decode(z), dense.decode(z)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got[0], sparse.dictionary.bias.detach())


@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
def test_decode_of_codes_needing_grad_gives_every_latents_gradient(variant):
    sae, _ = sparse_and_dense(variant, "train")
    with torch.no_grad():
        z = sae.encode(torch.randn(ROWS, D))[1]
    z.requires_grad_()
    upstream = torch.randn(ROWS, D)
    (sae.decode(z) * upstream).sum().backward()
    # d x_hat / d z_j = atom_j for every latent, active or not
    torch.testing.assert_close(z.grad, upstream @ sae.get_dictionary().detach().T)
    assert (z.grad[z == 0] != 0).any()


@pytest.mark.parametrize("layout", ["fixed", "ragged"])
def test_sparse_layouts_match_a_matmul_in_values_and_gradients(layout):
    torch.manual_seed(1)
    atoms0, bias0 = torch.randn(NB, D, dtype=torch.float64), torch.randn(D, dtype=torch.float64)
    indices = torch.stack([torch.randperm(NB)[:K] for _ in range(ROWS)])
    values0 = torch.rand(ROWS, K, dtype=torch.float64) + 0.1  # all on the support
    upstream = torch.randn(ROWS, D, dtype=torch.float64)
    results = []
    for path in (layout, "dense"):
        atoms, bias = atoms0.clone().requires_grad_(), bias0.clone().requires_grad_()
        values = values0.clone().requires_grad_()
        z = torch.zeros(ROWS, NB, dtype=torch.float64).scatter(-1, indices, values)
        if path == "fixed":
            x_hat = decode_fixed(indices, values, atoms, bias)
        elif path == "ragged":
            x_hat = decode_ragged(z, atoms, bias)
        else:
            x_hat = z @ atoms + bias
        (x_hat * upstream).sum().backward()
        results.append((x_hat, values.grad, atoms.grad, bias.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)
    z = torch.zeros(ROWS, NB, dtype=torch.float64).scatter(-1, indices, values0)
    torch.testing.assert_close(decode_ragged(z, atoms0), z @ atoms0)  # no bias


def test_decode_keeps_leading_dimensions_of_codes():
    sparse, dense = sparse_and_dense("topk", "eval")
    z = torch.relu(torch.randn(2, 3, NB)) * (torch.rand(2, 3, NB) < 0.05)
    torch.testing.assert_close(sparse.decode(z), dense.decode(z))
    assert sparse.decode(z).shape == (2, 3, D)


def test_density_decides_the_path(monkeypatch):
    calls: list[str] = []

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)

        monkeypatch.setattr(base, name, wrapped)

    spy("decode_fixed", base.decode_fixed)
    spy("decode_ragged", base.decode_ragged)
    spy("decode_pairs", base.decode_pairs)
    x = torch.randn(ROWS, D)

    TopKSAE(D, NB, top_k=K)(x)  # TopK decodes from its top-k indices: no scan of z
    BatchTopKSAE(D, NB, top_k_per_sample=K)(x)  # rows vary: pairs from its sorted top-k
    assert calls == ["decode_fixed", "decode_pairs"]

    calls.clear()
    dense_k = int(MAX_SPARSE_DENSITY * NB) + 1
    TopKSAE(D, NB, top_k=dense_k)(x)
    BatchTopKSAE(D, NB, top_k_per_sample=dense_k)(x)
    SAE(D, NB)(x)  # ReLU codes have no density by construction: dense unless forced
    JumpSAE(D, NB)(x)
    assert calls == []

    jump = JumpSAE(D, NB)
    jump.sparse_decode = True
    jump(x)  # its threshold gradient needs the zeroed codes: dense while grad is on
    assert calls == []
    with torch.no_grad():
        jump(x)
    topk = TopKSAE(D, NB, top_k=K)
    topk.sparse_decode = False
    topk(x)
    assert calls == ["decode_ragged"]

    calls.clear()
    with torch.no_grad():
        z = topk.encode(x)[1]
    topk.sparse_decode = None
    topk.decode(z)
    topk.decode(z.requires_grad_())  # the caller may want d x_hat / d z: dense
    assert calls == ["decode_ragged"]


def test_bad_inputs_are_named():
    sae = TopKSAE(D, NB, top_k=K)
    sae.sparse_decode = "yes"
    with pytest.raises(TypeError, match="sparse_decode must be None"):
        sae(torch.randn(2, D))
    atoms = torch.randn(NB, D)
    with pytest.raises(ValueError, match=r"same shape \(N, k\)"):
        decode_fixed(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4), atoms)
    with pytest.raises(ValueError, match=rf"codes of shape \(N, {NB}\)"):
        decode_ragged(torch.ones(2, NB + 1), atoms)


@pytest.mark.parametrize("host", [True, False])
def test_pairs_at_zero_decode_and_differentiate_like_the_dense_codes(host, monkeypatch):
    """JumpReLU's support carries codes at 0 (near their threshold); on the host they are
    dropped from the sums (`nonzero_pairs`), elsewhere kept: the same x_hat and the
    same gradients for every value (the zeros' included) and every atom either way."""
    if not host:
        monkeypatch.setattr(sparse_module, "HOST_DEVICES", ())
    torch.manual_seed(0)
    n_rows, n, d = 6, 40, 8
    dense = torch.zeros(n_rows, n, dtype=torch.float64)
    rows = torch.arange(n_rows).repeat_interleave(5)
    cols = torch.stack([torch.randperm(n)[:5] for _ in range(n_rows)]).reshape(-1)
    values = torch.randn(rows.numel(), dtype=torch.float64)
    values[::3] = 0.0  # a third of the pairs at zero
    values.requires_grad_(True)
    atoms = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    out = decode_pairs(rows, cols, values, atoms, n_rows=n_rows)
    dense = dense.index_put((rows, cols), values.detach()).requires_grad_(True)
    ref_atoms = atoms.detach().clone().requires_grad_(True)
    ref = dense @ ref_atoms
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(values.grad, dense.grad[rows, cols])
    assert values.grad[::3].abs().sum() > 0  # the zeros get their gradient too
    torch.testing.assert_close(atoms.grad, ref_atoms.grad)
