"""Matryoshka BatchTopK: its prefix loss, persistence, training, splicing, SAELens export,
and that its first group learns the frequent (parent) features of a hierarchy."""

from __future__ import annotations

import json

import pytest
import torch

from sae_hooks.hooks import capture_batch, splice
from sae_hooks.interop import export_saelens, import_saelens
from sae_hooks.sae import (
    BatchTopKSAE,
    MatryoshkaBatchTopKSAE,
    load_sae,
)
from sae_hooks.train import TensorSource, TrainConfig, read_log, train


def _prefix_losses_by_hand(sae: MatryoshkaBatchTopKSAE, x: torch.Tensor) -> torch.Tensor:
    out = sae(x)
    atoms, total = sae.get_dictionary(), 0.0
    for end in sae.prefix_ends:
        z = out.z.clone()
        z[:, end:] = 0
        total = total + (x - (z @ atoms + sae.dictionary.bias)).pow(2).sum(-1).mean()
    return total


def test_loss_sums_the_reconstruction_of_every_prefix():
    torch.manual_seed(0)
    sae = MatryoshkaBatchTopKSAE(16, 64, top_k=4 * 32, group_sizes=[8, 8, 16, 32])
    x = torch.randn(32, 16)
    out = sae(x)
    loss = sae.reconstruction_loss(x - out.x_hat, out)
    torch.testing.assert_close(loss, _prefix_losses_by_hand(sae, x))
    # one group is plain BatchTopK's loss
    single = MatryoshkaBatchTopKSAE(16, 64, top_k=4 * 32, group_sizes=[64])
    out = single(x)
    torch.testing.assert_close(
        single.reconstruction_loss(x - out.x_hat, out), (x - out.x_hat).pow(2).sum(-1).mean()
    )
    assert sae.prefix_ends == [8, 16, 32, 64]


@pytest.mark.parametrize("bad", [[10, 10], [0, 64], [32.0, 32], "64", []])
def test_group_sizes_are_checked(bad):
    with pytest.raises(ValueError, match="group_sizes must be a non-empty list of positive ints"):
        MatryoshkaBatchTopKSAE(16, 64, group_sizes=bad)


def test_default_groups_are_a_thirty_second_then_the_rest():
    sae = MatryoshkaBatchTopKSAE(16, 512)
    assert sae.group_sizes == [16, 496] and isinstance(sae, BatchTopKSAE)
    assert MatryoshkaBatchTopKSAE(4, 33).group_sizes == [1, 32]
    assert MatryoshkaBatchTopKSAE(4, 7).group_sizes == [7]  # too small to cut: BatchTopK


def test_trains_saves_loads_splices_and_exports(tiny_gpt2, tmp_path):
    torch.manual_seed(0)
    ids = torch.randint(0, tiny_gpt2.config.vocab_size, (16, 32))
    rows = capture_batch(tiny_gpt2, "resid_post.1", ids).acts["resid_post.1"].float()
    d = rows.shape[1]
    config = TrainConfig(
        architecture="matryoshka_batchtopk",
        nb_concepts=4 * d,
        k_per_token=8,
        extra={"group_sizes": [d // 2, d // 2, 3 * d]},
        steps=60,
        batch_size=64,
        lr=2e-3,
        log_every=20,
        val_every=0,
        checkpoint_every=0,
        progress=False,
    )
    sae = train(config, TensorSource(rows), tmp_path / "run")
    assert type(sae) is MatryoshkaBatchTopKSAE and sae.group_sizes == [d // 2, d // 2, 3 * d]
    log = [r for r in read_log(tmp_path / "run") if "loss" in r]
    assert log[-1]["fvu"] < log[0]["fvu"] and log[-1]["loss"] < log[0]["loss"]
    saved = json.loads((tmp_path / "run" / "sae" / "config.json").read_text())
    assert saved["architecture"] == "matryoshka_batchtopk"
    assert saved["group_sizes"] == [d // 2, d // 2, 3 * d]

    loaded = load_sae(tmp_path / "run" / "sae")
    assert type(loaded) is MatryoshkaBatchTopKSAE
    torch.testing.assert_close(loaded(rows).x_hat, sae.eval()(rows).x_hat)
    with torch.no_grad():
        clean = tiny_gpt2(ids).logits
        with splice(tiny_gpt2, "resid_post.1", loaded):
            edited = tiny_gpt2(ids).logits
        with splice(tiny_gpt2, "resid_post.1", loaded, error_term=True):
            exact = tiny_gpt2(ids).logits
    assert not torch.allclose(clean, edited)
    torch.testing.assert_close(exact, clean, rtol=0, atol=0)

    # SAELens saves a trained MatryoshkaBatchTopK as JumpReLU (one shared threshold)
    path = export_saelens(loaded, tmp_path / "saelens")
    cfg = json.loads((path / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu"
    back = import_saelens(path)
    assert type(back) is MatryoshkaBatchTopKSAE and back.group_sizes == loaded.group_sizes
    torch.testing.assert_close(back(rows).x_hat, loaded(rows).x_hat, rtol=1e-4, atol=1e-4)


def _hierarchy(n_rows: int, d: int, generator: torch.Generator):
    """4 frequent parents, each with 4 rare children that only fire with their parent."""
    dirs = torch.linalg.qr(torch.randn(d, d, generator=generator))[0].T[:20]  # orthonormal
    parents, children = dirs[:4], dirs[4:].reshape(4, 4, d)
    on_p = torch.rand(n_rows, 4, generator=generator) < 0.35
    on_c = (torch.rand(n_rows, 4, 4, generator=generator) < 0.12) & on_p[:, :, None]
    mag_p = 1 + torch.rand(n_rows, 4, generator=generator)
    mag_c = 1 + torch.rand(n_rows, 4, 4, generator=generator)
    x = (on_p * mag_p) @ parents + torch.einsum("npc,pcd->nd", on_c * mag_c, children)
    return x, parents


@pytest.mark.slow
def test_first_group_learns_the_frequent_parent_features(tmp_path):
    """Parents fire often and carry most of the variance; the 4-atom first group must
    reconstruct alone, so it takes them (a plain BatchTopK scatters them: ~0.5 here).

    Without the default per-row warm-up (0.75 of the run): every row here holds 0 to 4
    parents, and a per-row top-2 forces exactly 2 codes on each, so the first group
    learns mixtures (0.81 after 200 steps, 0.73 after 600; docs/evaluation.md). The
    nested loss is what this tests; the warm-up is tested on the benchmark."""
    g = torch.Generator().manual_seed(0)
    x, parents = _hierarchy(12_000, 32, g)
    config = TrainConfig(
        architecture="matryoshka_batchtopk",
        nb_concepts=32,
        k_per_token=2,
        extra={"group_sizes": [4, 28]},
        row_topk_warmup=0.0,
        steps=200,
        batch_size=256,
        lr=3e-3,
        b_dec_init="zeros",
        normalize_activations=False,
        log_every=100,
        val_every=0,
        checkpoint_every=0,
        progress=False,
    )
    sae = train(config, TensorSource(x), tmp_path / "run")
    atoms = torch.nn.functional.normalize(sae.get_dictionary().detach(), dim=-1)
    cos = parents @ atoms.T  # (4 parents, 32 atoms)
    first = cos[:, :4].max(dim=1).values.mean()
    last = cos[:, 4:].max(dim=1).values.mean()
    assert first > 0.9 and first > last + 0.1, (float(first), float(last))


@pytest.mark.slow
def test_defaults_beat_batchtopk_on_the_hierarchical_benchmark(tmp_path):
    """`sae-hooks bench-synthetic`'s features at 600 steps, both at their defaults:
    Matryoshka absorbs less and scores a higher F1, MMCS >= 0.9 (issue 31 item 6;
    seed 0 measured F1 0.76 vs 0.74, absorption 0.29 vs 0.54; docs/evaluation.md)."""
    from sae_hooks.eval.synthetic import run_benchmark

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the documented figures' setting; restored for later tests
    try:
        rows = run_benchmark(["batchtopk", "matryoshka_batchtopk"], str(tmp_path), steps=600)
    finally:
        torch.set_num_threads(threads)
    btk, mat = rows
    assert mat["mmcs"] >= 0.9, mat
    assert mat["f1"] > btk["f1"] and mat["absorption"] < btk["absorption"], (btk, mat)
