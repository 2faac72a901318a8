"""Unit tests of the trainer's parts: config, losses, schedules, init, constraints."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from sae_hooks.train import TrainConfig, aux_k_loss, fvu, geometric_median, mse
from sae_hooks.train.constraints import normalize_rows_, remove_parallel_gradient_
from sae_hooks.train.schedule import coefficient_factor, lr_factor

# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"architecture": "gated"}, "architecture must be one of ['batchtopk', "),
        ({"kernel": "box"}, "kernel must be one of"),
        ({"b_dec_init": "median"}, "b_dec_init must be one of ['geometric_median', 'mean'"),
        ({"batch_size": 0}, "batch_size must be an int >= 1"),
        ({"steps": None}, "give the run length"),
        ({"steps": 10, "total_tokens": 999}, "disagree"),
        ({"lr": -1.0}, "lr must be a number in (0.0, inf)"),
        ({"warmup_fraction": 0.9, "decay_fraction": 0.2}, "warmup_fraction + decay_fraction"),
        ({"adam_betas": (0.9, 1.5)}, "adam_betas must be two floats"),
        ({"architecture": "relu", "k_per_token": 4}, "top_k / k_per_token apply to"),
        ({"architecture": "topk", "target_l0": 8.0}, "target_l0 applies to"),
        ({"top_k": 10, "k_per_token": 4, "batch_size": 8}, "expected top_k=32"),
        ({"dtype": "float8"}, "dtype must be one of"),
        ({"normalize_activations": "yes"}, "normalize_activations must be a bool"),
        ({"grad_clip": 0.0}, "grad_clip must be a number"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    base = {"steps": 10, **kwargs}
    with pytest.raises((ValueError, TypeError)) as err:
        TrainConfig(**base)
    assert message in str(err.value)


def test_from_dict_names_unknown_and_valid_keys():
    with pytest.raises(ValueError) as err:
        TrainConfig.from_dict({"steps": 10, "learning_rate": 1e-3, "topk": 3})
    text = str(err.value)
    assert "['learning_rate', 'topk']" in text and "'lr'" in text and "'top_k'" in text


def test_json_round_trip(tmp_path):
    config = TrainConfig(architecture="jumprelu", steps=100, adam_betas=(0.0, 0.99), target_l0=12)
    assert TrainConfig.from_json(config.to_json()) == config
    config.to_json(tmp_path / "c.json")
    assert TrainConfig.from_json(tmp_path / "c.json") == config
    assert json.loads(config.to_json())["adam_betas"] == [0.0, 0.99]


def test_resolve_fills_defaults():
    c = TrainConfig(total_tokens=4096 * 100).resolve(d_model=768)
    assert c.nb_concepts == 8 * 768 and c.steps == 100
    assert c.top_k == 32 * 4096  # BatchTopK: per batch
    assert c.lr == pytest.approx(4 * 2e-4 / math.sqrt(6144 / 2**14))  # a short run: 4x
    assert c.aux_k == 384 and c.aux_coefficient == pytest.approx(1 / 32)
    assert c.dead_tokens == 4096 * 10  # a tenth of a short run
    assert c.adam_betas == (0.9, 0.999)
    j = TrainConfig(architecture="jumprelu", steps=10, expansion_factor=4).resolve(64)
    assert j.adam_betas == (0.0, 0.999) and j.nb_concepts == 256
    assert j.bandwidth == pytest.approx(0.008) and j.aux_coefficient == 0.0
    assert TrainConfig(architecture="topk", steps=5, k_per_token=7).resolve(16).top_k == 7
    assert TrainConfig(steps=5, top_k=100, batch_size=50).resolve(16).top_k == 100


def test_resolve_rejects_impossible_budget():
    with pytest.raises(ValueError, match="top_k=40"):
        TrainConfig(architecture="topk", steps=5, top_k=40, nb_concepts=32).resolve(16)
    with pytest.raises(ValueError, match="less than one batch"):
        TrainConfig(total_tokens=10, batch_size=64).resolve(16)


# ----------------------------------------------------------------------------- losses


def test_mse_and_fvu():
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    x_hat = torch.tensor([[1.0, 1.0], [3.0, 5.0]])
    assert mse(x, x_hat) == pytest.approx(1.0)  # (1 + 1) / 2 rows
    # sum err^2 = 2; deviations from the batch mean (2, 4): 1+4+1+4 = 10
    assert fvu(x, x_hat) == pytest.approx(0.2)
    assert fvu(x, x.mean(0).expand_as(x)) == pytest.approx(1.0)


def test_aux_k_loss_uses_only_dead_latents():
    torch.manual_seed(0)
    atoms = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    z_pre = torch.rand(5, 6)
    dead = torch.tensor([False, False, True, True, False, False])
    residual = z_pre[:, 2:3] * atoms[2] + z_pre[:, 3:4] * atoms[3]  # exactly explainable
    assert aux_k_loss(residual, z_pre, dead, atoms, k_aux=2) == pytest.approx(0.0, abs=1e-6)
    # Nothing dead: zero, whatever the residual.
    none = torch.zeros(6, dtype=torch.bool)
    assert aux_k_loss(torch.randn(5, 4), z_pre, none, atoms, k_aux=2) == 0.0
    # Scaled by min(n_dead / k_aux, 1): one dead latent of k_aux = 4 weighs a quarter.
    one = torch.zeros(6, dtype=torch.bool)
    one[0] = True
    e = torch.randn(5, 4)
    quarter = aux_k_loss(e, z_pre, one, atoms, k_aux=4)
    full = aux_k_loss(e, z_pre, one, atoms, k_aux=1)
    assert quarter == pytest.approx(full.item() / 4, rel=1e-5)


# ----------------------------------------------------------------------------- schedule


def test_lr_schedule_shape():
    total, warm = 100, 10
    f = [lr_factor(s, total, warm, 0.2) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0
    assert all(v == 1.0 for v in f[10:80])
    decay = f[80:]
    assert all(a > b for a, b in itertools.pairwise(decay))  # strictly decreasing
    assert 0 < f[-1] < 0.05
    assert lr_factor(0, 10, 0, 0.0) == 1.0


def test_coefficient_warmup():
    assert coefficient_factor(0, 100, 0.1) == pytest.approx(0.1)
    assert coefficient_factor(50, 100, 0.1) == 1.0
    assert coefficient_factor(0, 100, 0.0) == 1.0


# ----------------------------------------------------------------------------- init, constraints


def test_geometric_median_resists_outliers():
    torch.manual_seed(0)
    x = torch.randn(4000, 8) * 0.1 + 3.0
    x[:100] = 1000.0  # 2.5% huge outliers drag the mean, not the median
    assert (x.mean(0) - 3.0).abs().max() > 20
    assert (geometric_median(x) - 3.0).abs().max() < 0.05
    with pytest.raises(ValueError, match="rows"):
        geometric_median(torch.zeros(0, 3))


def test_parallel_gradient_removed_and_rows_renormalised():
    w = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(5, 3), dim=-1))
    w.grad = torch.randn(5, 3)
    remove_parallel_gradient_(w)
    assert torch.allclose((w.grad * w).sum(-1), torch.zeros(5), atol=1e-6)
    with torch.no_grad():
        w.mul_(3.0)
    normalize_rows_(w)
    assert torch.allclose(w.norm(dim=-1), torch.ones(5), atol=1e-6)


def test_unit_rows_projection_equals_the_general_one_on_unit_rows():
    w = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(64, 16), dim=-1))
    g = torch.randn(64, 16)
    w.grad = g.clone()
    remove_parallel_gradient_(w)
    general = w.grad.clone()
    w.grad = g.clone()
    remove_parallel_gradient_(w, unit_rows=True)
    torch.testing.assert_close(w.grad, general, rtol=0, atol=1e-6)
    assert (w.grad - g).abs().max() > 0.1  # a projection happened


def test_row_dots_by_chunks_of_rows_equal_one_vecdot(monkeypatch):
    """The host's row dots go ROW_DOT_ROWS rows at a time: each row's dot is the same
    number as in one vecdot over the whole matrix, a partial last chunk included."""
    from sae_hooks.train import constraints

    monkeypatch.setattr(constraints, "ROW_DOT_ROWS", 7)
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(45, 33, generator=gen), torch.randn(45, 33, generator=gen)
    found = constraints._row_dot(a, b)
    assert found.shape == (45, 1)
    assert torch.equal(found[:, 0], torch.linalg.vecdot(a, b))


@pytest.mark.parametrize("max_norm", [0.5, 1e6, "at the norm"])
def test_clip_grad_norm_gives_torchs_gradients_bit_for_bit(max_norm):
    """Below, at and above the norm: the same gradients and total as torch's foreach
    clip (which multiplies by a clamped coefficient even where it is 1)."""
    from sae_hooks.train.constraints import clip_grad_norm_

    gen = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter(torch.randn(50, 8, generator=gen)) for _ in range(3)]
    grads = [torch.randn(50, 8, generator=gen) * 0.1 for _ in params]
    if max_norm == "at the norm":
        max_norm = float(torch.nn.utils.get_total_norm(grads)) + 5e-7  # within torch's 1e-6
    ours = [p.detach().clone().requires_grad_() for p in params]
    for p, q, g in zip(params, ours, grads, strict=True):
        p.grad, q.grad = g.clone(), g.clone()
    total_ref = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    total = clip_grad_norm_(ours, max_norm)
    assert torch.equal(total, total_ref)
    for p, q in zip(params, ours, strict=True):
        assert torch.equal(p.grad, q.grad)


def test_log_window_reads_a_checkpoint_from_before_sum_of_squares():
    """Checkpoints written before the window kept FVU sums (6 slots: loss, mse, sq_err,
    sq_dev, l0, aux_loss) still resume: the loss terms carry over, the FVU restarts."""
    from sae_hooks.train.window import LogWindow

    window = LogWindow(4, torch.device("cpu"), rows_per_step=4)
    old = {
        "sums": torch.tensor([6.0, 4.0, 9.0, 9.0, 2.0, 0.5]),
        "window_fires": torch.tensor([3, 0, 1, 0]),
        "window_steps": 2,
    }
    window.load_state_dict(old)
    record = window.record()
    assert (record["loss"], record["mse"], record["aux_loss"]) == (3.0, 2.0, 0.25)
    assert record["l0"] == 0.5 and record["dense_fraction"] == 0.5
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    window.add(torch.zeros(3), x, torch.zeros_like(x), torch.zeros(4, dtype=torch.int64), 4)
    assert window.record()["fvu"] == pytest.approx(20.0 / 4.0)  # only the new rows
    resumed = LogWindow(4, torch.device("cpu"), rows_per_step=4)
    resumed.load_state_dict(window.state_dict())
    assert resumed.record() == window.record()
