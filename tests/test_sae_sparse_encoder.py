"""The sparse encoder backward gives the dense path's values and gradients (every
variant that uses it, AuxK, a whole Trainer step with the decoder-norm constraint),
with no host sync; bf16 autocast keeps a large activation mean exact."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from helpers import adam_gradients

from sae_hooks.sae import BatchTopKSAE, JumpSAE, SAEOutput, TopKSAE
from sae_hooks.sae import sparse as sparse_module
from sae_hooks.sae.output import kept_support
from sae_hooks.sae.sparse_encoder import fire_counts
from sae_hooks.train import TensorSource, TrainConfig, Trainer
from sae_hooks.train.losses import aux_k_loss

D, NB, K, ROWS = 16, 256, 4, 24  # density K / NB = 1/64, below the cut-offs


def make(variant: str) -> TopKSAE | BatchTopKSAE:
    torch.manual_seed(0)
    sae = TopKSAE(D, NB, top_k=K) if variant == "topk" else BatchTopKSAE(D, NB, top_k_per_sample=K)
    with torch.no_grad():  # every term of the gradient exercised
        sae.dictionary.bias.normal_()
        sae.encoder.bias.normal_()
        sae.input_scale.fill_(1.7)
    return sae


def pair(variant: str, decode: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    sparse = make(variant)
    dense = copy.deepcopy(sparse)
    sparse.sparse_encoder_grad, dense.sparse_encoder_grad = True, False
    sparse.sparse_decode = dense.sparse_decode = decode
    return sparse, dense


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in module.named_parameters() if p.grad is not None}


def assert_close(a: torch.Tensor, b: torch.Tensor, msg: str = "") -> None:
    """Equal up to float summation order, relative to the tensor's scale."""
    if not b.is_floating_point():
        assert torch.equal(a, b), msg
        return
    scale = b.abs().max().item()
    err = (a - b).abs().max().item()
    assert err <= 1e-5 * scale + 1e-6, f"{msg}: max error {err} at scale {scale}"


@pytest.mark.parametrize("decode", [True, False], ids=["sparse-decode", "dense-decode"])
@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
def test_values_and_gradients_match_the_dense_encoder(variant, decode):
    sparse, dense = pair(variant, decode)
    x = torch.randn(ROWS, D)
    outs, x_grads = [], []
    for sae in (sparse, dense):
        xi = x.clone().requires_grad_()
        out = sae(xi)
        loss = (xi - out.x_hat).pow(2).sum(-1).mean() + (out.z * torch.arange(NB)).sum()
        loss.backward()
        outs.append(out)
        x_grads.append(xi.grad)
    assert (outs[0].z != 0).sum() == K * ROWS  # exactly the budget, both variants
    for a, b in zip(outs[0], outs[1]):
        assert_close(a, b)
    g_sparse, g_dense = grads(sparse), grads(dense)
    assert set(g_sparse) == set(g_dense) == {n for n, _ in sparse.named_parameters()}
    for name in g_dense:
        assert_close(g_sparse[name], g_dense[name], name)
    assert_close(x_grads[0], x_grads[1], "x")
    if variant == "batchtopk":
        torch.testing.assert_close(sparse.threshold_ema, dense.threshold_ema)


def test_aux_k_gradient_matches_the_dense_encoder():
    sparse, dense = pair("topk", True)
    x = torch.randn(ROWS, D)
    dead = torch.rand(NB, generator=torch.Generator().manual_seed(1)) < 0.3
    for sae in (sparse, dense):
        out = sae(x)
        residual = (x - out.x_hat).detach()
        aux_k_loss(
            residual, out.z_pre, dead, sae.get_dictionary(), 8, support=out.support
        ).backward()
    g_sparse, g_dense = grads(sparse), grads(dense)
    assert g_dense["encoder.weight"].abs().sum() > 0
    for name in g_dense:
        assert_close(g_sparse[name], g_dense[name], name)


def _trainer(variant: str, tmp_path, sparse: bool) -> Trainer:
    torch.manual_seed(0)
    config = TrainConfig(
        architecture=variant,
        nb_concepts=NB,
        k_per_token=K,
        batch_size=32,
        steps=10,
        lr=1e-2,
        dead_tokens=1,
        aux_coefficient=0.5,
        log_every=100,
        val_every=0,
        checkpoint_every=None,
        progress=False,
    )
    rows = torch.randn(256, D, generator=torch.Generator().manual_seed(2))
    trainer = Trainer(config, TensorSource(rows), tmp_path / ("sparse" if sparse else "dense"))
    trainer.sae.sparse_encoder_grad = trainer.sae.sparse_decode = sparse
    trainer.aux_active = True
    trainer.dead.since_fired[::3] = 10  # a third of the latents dead: AuxK on
    return trainer


@pytest.mark.parametrize("variant", ["topk", "batchtopk", "matryoshka_batchtopk"])
def test_a_trainer_step_matches_the_dense_path(variant, tmp_path):
    """Forward, MSE + AuxK, backward, decoder-gradient projection and clipping give
    the gradients Adam sees; fire statistics and the running threshold follow.
    (Compared before Adam: its first step is lr * sign(g), which turns the float
    noise of gradients that are ~0 into steps of lr.)"""
    trainers = [_trainer(variant, tmp_path, sparse) for sparse in (True, False)]
    batches = torch.randn(3, 32, D, generator=torch.Generator().manual_seed(3))
    seen = adam_gradients(trainers, batches, buffers=False)  # buffers follow on their own
    for sparse, dense in zip(*seen):
        for name in dense:
            assert_close(sparse[name], dense[name], name)
    torch.testing.assert_close(trainers[0].dead.since_fired, trainers[1].dead.since_fired)
    torch.testing.assert_close(trainers[0].window.firing.counts, trainers[1].window.firing.counts)
    assert trainers[0].window.losses[2] > 0  # AuxK was on


@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
def test_fire_counts_come_from_the_support_and_match_a_dense_count(variant):
    out = make(variant)(torch.randn(ROWS, D))
    dense_count = (out.z != 0).sum(0)
    assert kept_support(out) is not None
    torch.testing.assert_close(fire_counts(out), dense_count)
    torch.testing.assert_close(
        fire_counts(SAEOutput(out.z_pre, out.z.detach().clone(), out.x_hat)), dense_count
    )


@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
def test_a_training_step_makes_no_host_sync(variant, tmp_path, monkeypatch):
    """On CUDA each of these waits for the device; none may run in train_step. (CPU
    stands in for a device: BatchTopK's candidate check reads a flag on host tensors
    only, `sparse.HOST_DEVICES`.)"""
    monkeypatch.setattr(sparse_module, "HOST_DEVICES", ())
    trainer = _trainer(variant, tmp_path, sparse=True)
    x = torch.randn(32, D)
    trainer.train_step(x)  # warm-up (Adam state)

    def refuse(name):
        def call(*args, **kwargs):
            raise AssertionError(f"host sync on the hot path: {name}")

        return call

    for name in ("item", "tolist", "nonzero", "bincount", "__bool__", "unique"):
        monkeypatch.setattr(torch.Tensor, name, refuse(name))
    for name in ("nonzero", "bincount", "unique"):
        monkeypatch.setattr(torch, name, refuse(name))
    trainer.train_step(x)
    monkeypatch.undo()
    assert trainer.window.steps == 2


@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
def test_bf16_autocast_keeps_a_large_activation_mean_exact(variant):
    """GPT-2-like rows: a mean 4x the norm of the rest. Folding W b_dec into the bias
    cancels it after bf16 rounding; the input is centred in fp32 instead."""
    torch.manual_seed(0)
    d, n, rows = 64, 512, 512
    sae = TopKSAE(d, n, top_k=16) if variant == "topk" else BatchTopKSAE(d, n, top_k_per_sample=16)
    mean = torch.randn(d)
    mean *= 4 * d**0.5 / mean.norm()
    x = mean + torch.randn(rows, d)
    with torch.no_grad():
        sae.dictionary.bias.copy_(mean)
        reference = torch.nn.functional.linear(
            x.double() - mean.double(), sae.encoder.weight.double()
        )
        reference += sae.encoder.bias.double()
    for grad in (True, False):  # the sparse training path and the dense one
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
            pre = sae(x).z_pre.double()
        rel_err = (pre - reference).norm() / reference.norm()
        assert rel_err < 0.005, rel_err  # centred: 0.003; folded W b_dec in bf16: 0.012
        top = pre.topk(16, dim=-1).indices
        ref_top = reference.topk(16, dim=-1).indices
        agree = (top[..., None] == ref_top[..., None, :]).any(-1).float().mean()
        assert agree > 0.99, agree  # centred: 0.993; folded: 0.985


def test_jump_sae_keeps_no_rows_by_n_tensor_after_its_output_is_gone():
    sae = JumpSAE(D, NB)
    x = torch.randn(ROWS, D)
    out = sae(x)
    loss = (x - out.x_hat).pow(2).sum() + sae.sparsity_loss(out)
    loss.backward()
    assert sae.log_threshold.grad is not None
    pre = weakref.ref(out.z_pre)
    del out, loss
    gc.collect()
    assert pre() is None
    assert not any(
        isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape[-1] == NB
        for v in vars(sae).values()
    )


@pytest.mark.parametrize("dense_products", [False, True])
def test_a_trainer_step_with_auxks_sparse_rows_equals_dense_rows(
    dense_products, tmp_path, monkeypatch
):
    """The trainer's AuxK through `DeadColumnDecode` gives the weights its dead rows as
    sparse gradient rows: fused Adam steps on the dense sum autograd makes of them, and
    the step's parameters are those of the dense rows' form."""
    from sae_hooks.train import auxk_columns, losses

    monkeypatch.setattr(losses, "MAX_SPARSE_AUX_DENSITY", 0.0)
    monkeypatch.setattr(auxk_columns, "DENSE_PICKS_FROM", 0.0 if dense_products else 1.01)
    on_rows = auxk_columns._on_rows
    seen = []

    def spy(rows_grad, cols, n, sparse=False):
        seen.append(sparse)
        return on_rows(rows_grad, cols, n, sparse and not dense_rows)

    monkeypatch.setattr(auxk_columns, "_on_rows", spy)
    x = torch.randn(32, D, generator=torch.Generator().manual_seed(5))
    params = []
    for dense_rows in (False, True):
        trainer = _trainer("topk", tmp_path / str(dense_rows), sparse=True)
        trainer.train_step(x)
        params.append({k: v.detach().clone() for k, v in trainer.sae.state_dict().items()})
    assert seen[:2] == [True, True]  # dictionary and encoder rows, sparse
    for name, value in params[0].items():
        torch.testing.assert_close(value, params[1][name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu", "matryoshka_batchtopk"])
def test_a_bfloat16_sae_trains_in_a_loop_of_ones_own_without_autocast(arch):
    """sae(x) in train mode with fp32 rows and bf16 parameters, outside autocast (a
    loop of one's own): the sparse paths compute in bf16 (they centred in fp32 and met
    the bf16 weights in a bare matmul before) and give the fp32 twin's loss to bf16's
    precision, with finite bf16 gradients."""
    from sae_hooks.train.trainer import build_sae

    config = TrainConfig(
        architecture=arch,
        nb_concepts=128,
        k_per_token=4 if "topk" in arch else None,
        steps=10,
        batch_size=64,
    ).resolve(16)
    torch.manual_seed(0)
    twin = build_sae(config, 16)
    with torch.no_grad():
        twin.encoder.bias.normal_()
    sae = copy.deepcopy(twin).bfloat16()
    for each in (twin, sae):
        each.sparse_decode = each.sparse_encoder_grad = True
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    loss = (x - sae(x).x_hat.float()).pow(2).sum()
    loss.backward()
    expected = (x - twin(x).x_hat).pow(2).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=2e-2)
    grads = [p.grad for p in sae.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.bfloat16 and bool(g.isfinite().all()) for g in grads)
