"""Seed noise: mean +- std over seeds and decoder reproducibility against a random null."""

import pytest
import torch

from sae_hooks.eval.seeds import (
    aggregate_metrics,
    decoder_reproducibility,
    format_seed_report,
    mean_std,
    seed_report,
)
from sae_hooks.eval.synthetic import uniform_features
from sae_hooks.train import TrainConfig, train


def test_mean_std_and_nested_metrics():
    assert mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert mean_std([5.0])["std"] == 0.0
    agg = aggregate_metrics([{"fvu": 0.1, "core": {"l0": 4}}, {"fvu": 0.3, "core": {"l0": 6}}])
    assert agg["fvu"]["mean"] == pytest.approx(0.2)
    assert agg["core/l0"]["std"] == pytest.approx(2**0.5)


def test_reproducibility_against_null():
    torch.manual_seed(0)
    atoms = torch.randn(128, 16)
    same = decoder_reproducibility([atoms, atoms.clone(), atoms[torch.randperm(128)]])
    assert same["matched_max_cosine"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert same["null"]["mean"] < 0.8  # random 16-d dictionaries match far worse
    with pytest.raises(ValueError, match="at least 2"):
        decoder_reproducibility([atoms])


@pytest.mark.slow
def test_seed_report_of_small_trainings(tmp_path):
    feats = uniform_features(d=16, n_features=32, active=2.0)
    x, _ = feats.sample(20_000, seed=1)
    runs = []
    for seed in (0, 1):
        cfg = TrainConfig(
            architecture="topk",
            k_per_token=2,
            nb_concepts=64,
            steps=100,
            batch_size=256,
            lr=3e-3,
            seed=seed,
            progress=False,
            log_every=50,
            val_every=0,
            checkpoint_every=0,
        )
        train(cfg, x, tmp_path / f"seed{seed}")
        runs.append(tmp_path / f"seed{seed}")
    report = seed_report(runs)
    assert report["seeds"] == 2
    assert report["metrics"]["val/fvu"]["n"] == 2
    rep = report["decoder_reproducibility"]
    # Trained on the same data, the seeds find the same features: well above chance.
    assert rep["matched_max_cosine"]["mean"] > rep["null"]["mean"] + 0.1
    text = format_seed_report(report, keys=["val/fvu"])
    assert "val/fvu" in text and "random-dictionary null" in text
