"""Inference is never silently in train mode: eval_mode, and the SAEs that loading,
importing and training hand back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sae_hooks
from sae_hooks.interop import export_saelens, import_saelens
from sae_hooks.sae import BatchTopKSAE, eval_mode, load_sae
from sae_hooks.sae.modes import module_mode
from sae_hooks.train import TensorSource, TrainConfig, train

D, NB = 16, 64


def mixed_modes() -> nn.Module:
    """A module in train mode with one submodule the owner put in eval mode."""
    net = nn.Sequential(nn.Linear(D, D), nn.Dropout(0.5), nn.Linear(D, D)).train()
    net[1].eval()
    return net


def modes(net: nn.Module) -> list[bool]:
    return [m.training for m in net.modules()]


def test_eval_mode_then_every_submodule_gets_its_own_mode_back():
    net = mixed_modes()
    before = modes(net)
    with eval_mode(net) as inside:
        assert inside is net and not any(modes(net))
    assert modes(net) == before == [True, True, False, True]  # not a blanket train(True)
    with pytest.raises(RuntimeError, match="boom"), eval_mode(net):
        raise RuntimeError("boom")
    assert modes(net) == before
    with module_mode(net.eval(), training=True):
        assert all(modes(net))
    assert not any(modes(net))


def test_eval_mode_leaves_a_duck_typed_sae_alone():
    class Duck:
        training = True

    duck = Duck()
    with eval_mode(duck) as inside:
        assert inside is duck and duck.training
    assert sae_hooks.eval_mode is eval_mode


def _batchtopk_in_train_mode() -> BatchTopKSAE:
    torch.manual_seed(0)
    sae = BatchTopKSAE(D, NB, top_k=8)
    sae.running_threshold = 0.1
    return sae.train()


def test_load_sae_returns_eval_mode(tmp_path):
    sae = _batchtopk_in_train_mode()
    sae.save(tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    assert not loaded.training and not any(modes(loaded))


def test_import_saelens_returns_eval_mode(tmp_path):
    export_saelens(_batchtopk_in_train_mode(), tmp_path / "lens")
    imported = import_saelens(tmp_path / "lens")
    assert isinstance(imported, BatchTopKSAE) and not imported.training


def test_trained_sae_is_returned_in_eval_mode(tmp_path):
    rows = torch.randn(2048, D, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(
        architecture="batchtopk",
        nb_concepts=NB,
        batch_size=128,
        steps=4,
        k_per_token=4,
        log_every=2,
        val_every=None,
        checkpoint_every=None,
        progress=False,
    )
    sae = train(config, TensorSource(rows), tmp_path)
    assert not sae.training
    assert not load_sae(tmp_path / "sae").training
