"""The SynthSAEBench generator keeps its spec, and its metrics score a perfect dictionary 1."""

import dataclasses

import pytest
import torch

from sae_hooks.eval.synthetic import match
from sae_hooks.eval.synthsaebench import (
    PRESETS,
    dictionary_metrics,
    hungarian_match,
    synthsaebench,
    zipf_probabilities,
)

SMALL = dataclasses.replace(PRESETS["cpu"], n_features=1024, d=64, n_roots=8, depth=2, max_prob=0.3)


@pytest.fixture(scope="module")
def world_and_rows():
    world = synthsaebench(SMALL)
    x, codes = world.sample(20_000, seed=7)
    return world, x, codes


def test_zipf_probabilities_follow_the_exponent():
    p = zipf_probabilities(1000, 0.7, 0.4, 0.01)
    assert p[0] == pytest.approx(0.4) and p[-1] == pytest.approx(0.01)
    raw = (p - 0.01) / 0.39 * (1 - 1000**-0.7) + 1000**-0.7  # undo the rescaling
    logr, logp = torch.arange(1, 1001).double().log(), raw.double().log()
    fit = torch.linalg.lstsq(torch.stack([logr, torch.ones_like(logr)], 1), logp[:, None])
    assert float(fit.solution[0]) == pytest.approx(-0.7, abs=1e-3)


def test_free_features_fire_at_their_zipf_probability(world_and_rows):
    world, _, codes = world_and_rows
    free = world.parent < 0
    free[: world.level_sizes[0]] = True  # roots are gated by nothing either
    freq = (codes[:, free] > 0).float().mean(0)
    spec = world.zipf_probs[free]
    big = spec > 0.02
    rel = ((freq[big] - spec[big]) / spec[big]).abs()
    assert float(rel.median()) < 0.05 and float(rel.max()) < 0.25


def test_children_fire_only_with_their_parent_and_exclusively(world_and_rows):
    world, _, codes = world_and_rows
    fires = codes > 0
    child = (world.parent >= 0).nonzero().flatten()
    assert child.numel() > 0
    assert not (fires[:, child] & ~fires[:, world.parent[child]]).any()
    assert bool(world.exclusive.all())  # the preset makes every parent exclusive
    per_parent = fires[:, child].view(fires.shape[0], -1, world.branching).sum(-1)
    assert int(per_parent.max()) == 1
    assert fires[:, child].any()


def test_l0_is_near_the_preset_and_a_seed_reproduces_the_rows(world_and_rows):
    world, x, codes = world_and_rows
    l0 = float((codes > 0).sum(1).float().mean())
    assert 0.6 * float(world.zipf_probs.sum()) < l0 <= 1.05 * float(world.zipf_probs.sum())
    x2, codes2 = synthsaebench(SMALL).sample(20_000, seed=7)
    assert torch.equal(x, x2) and torch.equal(codes, codes2)
    assert not torch.equal(x, world.sample(20_000, seed=8)[0])
    assert torch.allclose(x, codes @ world.atoms, atol=1e-5)


def test_the_cpu_preset_has_the_promised_l0():
    x, codes = synthsaebench("cpu").sample(2048, seed=3)
    assert x.shape == (2048, 256)
    assert 21 < float((codes > 0).sum(1).float().mean()) < 27


def test_the_2k_preset_keeps_the_papers_l0_to_d_ratio():
    x, codes = synthsaebench("2k").sample(4096, seed=3)
    assert x.shape == (4096, 128)
    l0 = float((codes > 0).sum(1).float().mean())
    assert 5.4 < l0 < 6.6  # L0/d ~0.047, the paper's 34/768 = 0.044


def test_a_perfect_dictionary_scores_one(world_and_rows):
    world, _, codes = world_and_rows
    shuffled = torch.randperm(world.n_features, generator=torch.Generator().manual_seed(0))
    m = dictionary_metrics(world, -world.atoms[shuffled], codes[:, shuffled], codes)
    assert m["mcc_hungarian"] == pytest.approx(1.0)
    assert m["f1_latent"] == pytest.approx(1.0)
    assert m["absorption_hungarian"] == 0.0


def test_a_wrong_dictionary_scores_below_one(world_and_rows):
    world, _, codes = world_and_rows
    noise = torch.randn(world.atoms.shape, generator=torch.Generator().manual_seed(1))
    z = codes.roll(1, dims=1)
    m = dictionary_metrics(world, world.atoms + noise, z, codes)
    assert m["mcc_hungarian"] < 0.9 and m["f1_latent"] < 0.9


def test_the_matching_is_one_to_one():
    a = torch.nn.functional.normalize(torch.randn(50, 16), dim=-1)
    rows, cols, _ = hungarian_match(a, a[torch.arange(49, -1, -1)])
    assert sorted(rows.tolist()) == list(range(50)) and sorted(cols.tolist()) == list(range(50))
    assert torch.equal(cols, 49 - rows)


def _greedy_one_pair_at_a_time(true_atoms, atoms):
    cos = (true_atoms @ atoms.T).abs().clone()
    pairs = []
    for _ in range(min(cos.shape)):
        r, c = divmod(int(cos.argmax()), cos.shape[1])
        pairs.append((r, c))
        cos[r, :] = -1.0
        cos[:, c] = -1.0
    return pairs


@pytest.mark.parametrize("n_atoms", [150, 200, 300])
def test_the_greedy_match_in_rounds_equals_one_pair_at_a_time(n_atoms):
    gen = torch.Generator().manual_seed(n_atoms)
    true = torch.nn.functional.normalize(torch.randn(200, 32, generator=gen), dim=-1)
    atoms = torch.nn.functional.normalize(torch.randn(n_atoms, 32, generator=gen), dim=-1)
    rows, cols = match(true, atoms)
    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == _greedy_one_pair_at_a_time(
        true, atoms
    )
