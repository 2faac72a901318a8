"""Training that reaches its target out of the box (issue 20): defaults, no hand tuning.

Synthetic rows with a known dictionary (d = 64, 256 true atoms, ~4 active per row);
every registered variant trains with the DEFAULT TrainConfig, given only the run
length, the batch size and its sparsity target (k_per_token or target_l0). A
variant that cannot take the test states why in `synthetic_opt_out`.
"""

import pytest
import torch

from sae_hooks.eval.synthetic import (
    recovery,
    sparsity_fields,
    train_on_synthetic,
    uniform_features,
)
from sae_hooks.sae import SAE_REGISTRY
from sae_hooks.train import TrainConfig, build_sae, read_log, train
from sae_hooks.train.coefficient import SparsityCoefficient
from sae_hooks.train.config import SHORT_RUN_STEPS, default_lr

TARGET_L0 = 4.0
STEPS = 600


@pytest.fixture(scope="module")
def features():
    # seed 7: not the trainer's torch seed (0), so no SAE init can draw the true atoms
    return uniform_features(d=64, n_features=256, active=TARGET_L0, seed=7)


def _first_batch_l0(arch, features):
    config = TrainConfig(architecture=arch, steps=10, **sparsity_fields(arch, TARGET_L0))
    config = config.resolve(64)
    sae = build_sae(config, 64)
    x, _ = features.sample(4096, seed=3)
    x = x * (64 / x.pow(2).sum(-1).mean()).sqrt()  # the trainer's E||x||^2 = d
    sae.tie_encoder_to_dictionary_(warn=False)
    sae.init_from_data(x, config)
    with torch.no_grad():
        return (sae(x).z != 0).sum(-1).float().mean().item()


@pytest.mark.parametrize("arch", ["jumprelu", "relu"])
def test_penalised_variants_start_at_their_target_l0(arch, features):
    """Thresholds (JumpReLU) / encoder biases (ReLU) from the first batch's quantiles:
    L0 = target at step 0, where a fixed threshold of 0.001 * sqrt(d) gave ~200."""
    assert _first_batch_l0(arch, features) == pytest.approx(TARGET_L0, rel=0.05)


def test_explicit_threshold_init_still_wins(features):
    config = TrainConfig(architecture="jumprelu", steps=10, threshold_init=0.5).resolve(64)
    sae = build_sae(config, 64)
    sae.init_from_data(features.sample(256)[0], config)
    assert torch.allclose(sae.threshold, torch.full_like(sae.threshold, 0.5))


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch",  # the library's variants (not toy ones that other test modules register)
    sorted(a for a, cls in SAE_REGISTRY.items() if cls.__module__.startswith("sae_hooks.")),
)
def test_default_config_recovers_the_dictionary(arch, features, tmp_path):
    reason = SAE_REGISTRY[arch].synthetic_opt_out
    if reason:
        pytest.skip(f"{arch}: {reason}")
    torch.set_num_threads(1)
    sae = train_on_synthetic(arch, features, str(tmp_path), l0=TARGET_L0, steps=STEPS)
    got = recovery(features, sae, rows=4096)
    log = read_log(tmp_path)
    l0 = [r["l0"] for r in log if "l0" in r][-1]
    assert l0 == pytest.approx(TARGET_L0, rel=0.2), f"training L0 {l0} vs target {TARGET_L0}"
    assert got["mmcs"] >= 0.95, got


def test_short_runs_get_a_larger_default_lr():
    long_run = TrainConfig(steps=SHORT_RUN_STEPS * 4, nb_concepts=2**14).resolve(768)
    assert long_run.lr == pytest.approx(2e-4)  # Gao et al.'s width rule, unchanged
    short = TrainConfig(steps=SHORT_RUN_STEPS // 4, nb_concepts=2**14).resolve(768)
    assert short.lr == pytest.approx(4e-4)  # sqrt(4) times the width rule
    assert TrainConfig(steps=10, lr=1e-5).resolve(64).lr == 1e-5  # an explicit lr wins
    tiny = TrainConfig(steps=10, nb_concepts=2**14).resolve(768)
    assert tiny.lr == pytest.approx(8e-4)  # capped at 4x: sqrt(750) would be 27x
    assert default_lr(512, 600) == pytest.approx(2e-4 * 32**0.5 * (7500 / 600) ** 0.5)


@pytest.mark.parametrize(
    "arch, expected",
    [
        ("batchtopk", 0.5),
        ("jumprelu", 0.5),
        ("matryoshka_batchtopk", 0.75),
        ("topk", 0.0),
        ("relu", 0.0),
    ],
)
def test_row_topk_warmup_default_comes_from_the_variant(arch, expected):
    fields = sparsity_fields(arch, 4)
    assert (
        TrainConfig(architecture=arch, steps=10, **fields).resolve(64).row_topk_warmup == expected
    )
    explicit = TrainConfig(architecture=arch, steps=10, row_topk_warmup=0.1, **fields)
    assert explicit.resolve(64).row_topk_warmup == 0.1


@pytest.mark.parametrize("bad", [-0.1, 1.5, "half", float("nan")])
def test_row_topk_warmup_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="row_topk_warmup"):
        TrainConfig(steps=10, row_topk_warmup=bad)


def _resolved(arch, steps=100, **kw):
    return TrainConfig(
        architecture=arch, steps=steps, batch_size=64, **sparsity_fields(arch, 4), **kw
    ).resolve(16)


def test_batchtopk_selects_per_row_during_the_warmup_then_per_batch():
    config = _resolved("batchtopk")
    sae = build_sae(config, 16)
    x = torch.randn(64, 16) * torch.linspace(0.1, 3, 64)[:, None]  # uneven row norms
    with sae.step_phase(49, config):  # round(0.5 * 100) = 50 warm steps: 0..49
        warm = (sae(x).z != 0).sum(-1)
    with sae.step_phase(50, config):
        after = (sae(x).z != 0).sum(-1)
    assert warm.tolist() == [4] * 64  # every row its own share
    assert int(after.sum()) == 4 * 64 and after.max() > 4  # one budget, unevenly spread
    assert not sae._per_row  # the phase ends with its context


def test_jumprelu_warmup_is_topk_then_one_threshold_at_the_target():
    config = _resolved("jumprelu")
    sae = build_sae(config, 16)
    x = torch.randn(64, 16)
    with sae.step_phase(0, config):
        out = sae(x)
        assert (out.z != 0).sum(-1).tolist() == [4] * 64
        assert float(sae.sparsity_loss(out)) == 0.0  # no threshold is trained yet
    with sae.step_phase(50, config):  # the first step after the warm-up
        out = sae(x)
    theta = sae.threshold.detach()
    assert torch.allclose(theta, theta[0].expand_as(theta))  # one threshold for all
    assert float((out.z != 0).sum(-1).float().mean()) == pytest.approx(4, abs=0.1)
    with sae.step_phase(51, config):
        sae(x)
    assert torch.equal(sae.threshold.detach(), theta)  # set once, then learnt


def test_the_trainer_runs_the_warmup_and_leaves_the_batch_rule(tmp_path, features):
    x, _ = features.sample(2048, seed=5)
    config = TrainConfig(
        architecture="batchtopk",
        steps=8,
        batch_size=64,
        k_per_token=2,
        row_topk_warmup=1.0,
        progress=False,
        log_every=1,
        val_every=0,
        checkpoint_every=0,
    )
    sae = train(config, x, str(tmp_path))
    assert not sae._per_row
    # every logged training step kept exactly 2 codes per row: the per-row rule
    assert {r["l0"] for r in read_log(tmp_path) if "l0" in r and "step" in r} <= {2.0}


def test_a_penalty_that_may_reward_crosses_zero_and_one_that_may_not_stays_positive():
    for arch, can in (("jumprelu", True), ("relu", False)):
        config = TrainConfig(architecture=arch, steps=10, target_l0=4.0).resolve(16)
        coefficient = SparsityCoefficient(config, torch.device("cpu"))
        for _ in range(200):
            coefficient.steer(torch.tensor(1.0))  # far below the target: less penalty
        value = float(coefficient.value)
        start = getattr(config, SAE_REGISTRY[arch].penalty_field)
        if can:
            assert value == pytest.approx(-start)  # the bounded reward
        else:
            assert 0 < value < 1e-3 * start


def test_jumprelu_warmup_gradients_match_the_dense_path():
    config = _resolved("jumprelu")
    x = torch.randn(64, 16)
    grads = []
    for sparse in (None, False):
        torch.manual_seed(0)
        sae = build_sae(config, 16)
        sae.sparse_encoder_grad = sparse
        with sae.step_phase(0, config):
            out = sae(x)
        ((x - out.x_hat).pow(2).sum(-1).mean()).backward()
        grads.append({n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5)
