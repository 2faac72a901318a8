"""The training step's fast paths give the gradients Adam would get without them.

- The dictionary's 'l2' normalisation is skipped inside the trainer's forward
  (rows kept at unit norm, sae/dictionary.py `rows_kept_unit`): after the trainer's
  tangent projection the gradients equal those through the normalisation.
- The projection itself (train/constraints.py) equals the textbook g - (g.u) u.
Every variant, AuxK on, the decoder-norm constraint and clipping included.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from helpers import adam_gradients as recorded_gradients

from sae_hooks.sae.output import kept_support
from sae_hooks.train import TensorSource, TrainConfig, Trainer
from sae_hooks.train import trainer as trainer_module
from sae_hooks.train.constraints import remove_parallel_gradient_

D, NB, K = 16, 256, 4
VARIANTS = ["topk", "batchtopk", "jumprelu", "relu"]


def _trainer(variant: str, run_dir, *, sparse: bool | None = None) -> Trainer:
    torch.manual_seed(0)
    config = TrainConfig(
        architecture=variant,
        nb_concepts=NB,
        k_per_token=K if variant in ("topk", "batchtopk") else None,
        batch_size=32,
        steps=10,
        lr=1e-2,
        dead_tokens=1,
        aux_coefficient=0.5,
        grad_clip=0.05,  # small: clipping is active
        row_topk_warmup=0.0,  # the variants' own selection from the first step
        log_every=100,
        val_every=0,
        checkpoint_every=None,
        progress=False,
    )
    rows = torch.randn(256, D, generator=torch.Generator().manual_seed(2))
    trainer = Trainer(config, TensorSource(rows), run_dir)
    if sparse is not None:
        trainer.sae.sparse_encoder_grad = trainer.sae.sparse_decode = sparse
    trainer.aux_active = True
    trainer.dead.since_fired[::3] = 10  # a third of the latents dead: AuxK on
    return trainer


def adam_gradients(trainers: list[Trainer], steps: int = 3) -> list[list[dict]]:
    batches = torch.randn(steps, 32, D, generator=torch.Generator().manual_seed(3))
    return recorded_gradients(trainers, batches)


def assert_close(a: torch.Tensor, b: torch.Tensor, msg: str = "") -> None:
    scale = b.abs().max().item()
    err = (a - b).abs().max().item()
    assert err <= 1e-5 * scale + 1e-6, f"{msg}: max error {err} at scale {scale}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_skipping_the_normalisation_gives_the_same_adam_gradients(variant, tmp_path, monkeypatch):
    fast = _trainer(variant, tmp_path / "fast")
    slow = _trainer(variant, tmp_path / "slow")
    calls = []
    real = trainer_module.unit_rows_forward

    def only_fast(sae):
        calls.append(sae is fast.sae)
        return real(sae) if sae is fast.sae else contextlib.nullcontext()

    monkeypatch.setattr(trainer_module, "unit_rows_forward", only_fast)
    seen_fast, seen_slow = adam_gradients([fast, slow])
    assert calls and any(calls) and not all(calls)
    for f, s in zip(seen_fast, seen_slow):
        assert set(f) == set(s)
        assert s["dictionary.weight"].abs().sum() > 0
        for name in s:
            assert_close(f[name], s[name], f"{variant} {name}")
    assert fast.window.losses[2] > 0  # AuxK was on
    rows = fast.sae.dictionary.weight.norm(dim=-1)
    torch.testing.assert_close(rows, torch.ones_like(rows))


def test_the_dictionary_normalises_outside_the_trainer_forward():
    from sae_hooks.sae import TopKSAE

    sae = TopKSAE(D, NB, top_k=K)
    with torch.no_grad():
        sae.dictionary.weight.mul_(3.0)
    with sae.dictionary.rows_kept_unit():
        assert torch.equal(sae.get_dictionary(), sae.dictionary.weight)
    atoms = sae.get_dictionary()
    torch.testing.assert_close(atoms.norm(dim=-1), torch.ones(NB))


def test_the_projection_is_the_tangent_projection():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(NB, D) * torch.rand(NB, 1) * 3)
    weight.grad = torch.randn(NB, D)
    unit = weight.detach() / weight.detach().norm(dim=-1, keepdim=True)
    expected = weight.grad - (weight.grad * unit).sum(-1, keepdim=True) * unit
    remove_parallel_gradient_(weight)
    torch.testing.assert_close(weight.grad, expected)
    assert (weight.grad * unit).sum(-1).abs().max() < 1e-5


def test_a_jumprelu_trainer_step_on_its_sparse_path_matches_the_dense_path(tmp_path):
    """At a low L0 JumpReLU trains through its support (sae/jump.py); Adam gets the
    dense path's gradients, with the L0 loss, AuxK, the projection and clipping."""
    trainers = []
    for sparse in (True, False):
        torch.manual_seed(0)
        config = TrainConfig(
            architecture="jumprelu",
            nb_concepts=NB,
            target_l0=K,
            kernel="rectangle",  # support: 0.05 around theta
            bandwidth=0.1,  # theta's gradient amplifies float32 rounding by 1 / bandwidth
            batch_size=32,
            steps=10,
            lr=1e-2,
            dead_tokens=1,
            aux_coefficient=0.5,
            grad_clip=0.05,
            row_topk_warmup=0.0,  # JumpReLU's own path from the first step
            log_every=100,
            val_every=0,
            checkpoint_every=None,
            progress=False,
        )
        rows = torch.randn(256, D, generator=torch.Generator().manual_seed(2))
        trainer = Trainer(config, TensorSource(rows), tmp_path / str(sparse))
        trainer.sae.sparse_encoder_grad = None if sparse else False
        trainer.aux_active = True
        trainer.dead.since_fired[::3] = 10
        trainers.append(trainer)
    outputs = []
    real = trainers[0].sae.forward
    trainers[0].sae.forward = lambda x: outputs.append(real(x)) or outputs[-1]
    seen_sparse, seen_dense = adam_gradients(trainers)
    assert outputs and all(kept_support(o) is not None for o in outputs)
    for f, s in zip(seen_sparse, seen_dense):
        assert s["log_threshold"].abs().sum() > 0
        for name in s:
            assert_close(f[name], s[name], f"jumprelu {name}")
    torch.testing.assert_close(trainers[0].window.firing.counts, trainers[1].window.firing.counts)


@pytest.mark.parametrize("dense_in_loss", [False, True], ids=["support", "dense-in-loss"])
@pytest.mark.parametrize("variant", [*VARIANTS, "matryoshka_batchtopk"])
def test_the_trainer_forward_returns_sparse_codes_equal_to_the_dense_ones(
    variant, dense_in_loss, tmp_path, monkeypatch
):
    """Inside `sparse_codes` (the trainer's forward) z is a sparse tensor of the same codes,
    with the same fire counts and losses; a variant whose losses read z densely
    (`dense_codes_in_loss`) keeps it dense."""
    from sae_hooks.sae.sparse_encoder import fire_counts

    trainer = _trainer(variant, tmp_path, sparse=True)
    sae, x = trainer.sae, torch.randn(32, D, generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(type(sae), "dense_codes_in_loss", dense_in_loss)
    dense_out = sae(x)
    with sae.sparse_codes():
        out = sae(x)
    assert out.z.layout == (torch.strided if dense_in_loss else torch.sparse_coo)
    assert dense_out.z.layout == torch.strided
    torch.testing.assert_close(out.z.detach().to_dense(), dense_out.z.detach())
    torch.testing.assert_close(out.x_hat, dense_out.x_hat)
    assert torch.equal(fire_counts(out), fire_counts(dense_out))
    assert fire_counts(out).sum() > 0
    assert sae.sparsity_loss(out).layout == torch.strided
    torch.testing.assert_close(sae.sparsity_loss(out), sae.sparsity_loss(dense_out))
    err = torch.randn_like(x)
    torch.testing.assert_close(
        sae.reconstruction_loss(err, out), sae.reconstruction_loss(err, dense_out)
    )


@pytest.mark.parametrize("variant", [*VARIANTS, "matryoshka_batchtopk"])
def test_the_pre_codes_are_freed_before_the_backward(variant, tmp_path):
    """The sparse paths' backward keeps no (rows, n) tensor, so the trainer drops the
    forward's output first: the pre-codes are gone when the gradients are computed
    (one (rows x n) matrix less at the step's peak). AuxK is on."""
    import weakref

    trainer = _trainer(variant, tmp_path, sparse=True)
    refs, alive = [], []
    trainer.sae.register_forward_hook(lambda m, i, out: refs.append(weakref.ref(out.z_pre)))
    trainer.sae.dictionary.weight.register_hook(lambda g: alive.append(refs[-1]() is not None))
    trainer.train_step(torch.randn(32, D, generator=torch.Generator().manual_seed(7)))
    assert alive == [False]
    assert trainer.window.losses[2] > 0  # AuxK ran
