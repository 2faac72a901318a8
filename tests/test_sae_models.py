"""SAE variants: shapes, sparsity semantics, the BatchTopK running threshold, bad inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sae_hooks.sae import (
    ENCODERS,
    SAE,
    SAE_REGISTRY,
    BatchTopKSAE,
    DictionaryLayer,
    JumpSAE,
    SAEOutput,
    TopKSAE,
    register_encoder,
)
from sae_hooks.sae.encoders import SHAPE_FACTORIES
from sae_hooks.sae.output import TrainingSupport

D, NB = 16, 64
VARIANTS = {
    "relu": lambda shape, **kw: SAE(shape, NB, **kw),
    "topk": lambda shape, **kw: TopKSAE(shape, NB, top_k=5, **kw),
    "batchtopk": lambda shape, **kw: BatchTopKSAE(shape, NB, top_k=40, **kw),
    "jumprelu": lambda shape, **kw: JumpSAE(shape, NB, **kw),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_training_support_is_a_typed_field_of_the_output(variant):
    """A forward with a gradient records its support in `out.support` (a TrainingSupport,
    not a tuple item: the output still unpacks in three); no forward sets attributes on
    the tensors it returns."""
    torch.manual_seed(0)
    sparse = {  # codes sparse enough for the support paths (2 of 256 per row)
        "topk": lambda: TopKSAE(D, 256, top_k=2),
        "batchtopk": lambda: BatchTopKSAE(D, 256, top_k=64),
    }
    sae = sparse.get(variant, lambda: VARIANTS[variant](D))()
    sae.train()
    x = torch.randn(32, D)
    out = sae(x)
    assert len(out) == 3 and tuple(out) == (out.z_pre, out.z, out.x_hat)
    assert all(vars(t) == {} for t in out)
    sae.eval()
    with torch.no_grad():
        if variant == "batchtopk":
            sae.running_threshold = 0.0
        assert sae(x).support is None
    assert SAEOutput(out.z_pre, out.z, out.x_hat).support is None
    if variant in ("topk", "batchtopk"):  # selected through the kept support
        assert isinstance(out.support, TrainingSupport)
        assert out.support.kept is not None and out.support.encoder_inputs is not None
    if variant == "jumprelu":  # its L0 comes with the output
        assert isinstance(out.support, TrainingSupport) and out.support.penalty is not None
        assert sae.sparsity_loss(out) is out.support.penalty


class PassThrough(nn.Module):
    """A drop-in overcomplete-style encoder: codes are the (centred) input itself."""

    def forward(self, x):
        return x, torch.relu(x)


def test_registry_holds_every_variant():
    expected = {"relu": SAE, "topk": TopKSAE, "batchtopk": BatchTopKSAE, "jumprelu": JumpSAE}
    assert {name: SAE_REGISTRY[name] for name in expected} == expected


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    ("input_shape", "x_shape", "n_rows"),
    [(D, (8, D), 8), ((5, D), (3, 5, D), 15), ((D, 4, 3), (2, D, 4, 3), 24)],
    ids=["1d", "2d", "3d"],
)
def test_shapes(variant, input_shape, x_shape, n_rows):
    torch.manual_seed(0)
    sae = VARIANTS[variant](input_shape)
    x = torch.randn(x_shape)
    out = sae(x)
    assert isinstance(out, SAEOutput)
    z_pre, z, x_hat = out  # unpacks like overcomplete's tuple
    assert z_pre.shape == z.shape == (n_rows, NB)
    assert x_hat.shape == x.shape
    assert sae.get_dictionary().shape == (NB, D)
    assert sae.input_size == D and sae.nb_concepts == NB
    # rows are tokens / pixels with the feature dim last, and x_hat goes back in place
    rows = x.movedim(1, -1).reshape(-1, D) if len(x_shape) == 4 else x.reshape(-1, D)
    z_pre_rows, _ = sae.encode(rows)
    torch.testing.assert_close(z_pre_rows, z_pre)
    hat_rows = sae.decode(z)
    back = (
        hat_rows.reshape(2, 4, 3, D).movedim(-1, 1)
        if len(x_shape) == 4
        else hat_rows.reshape(x_shape)
    )
    torch.testing.assert_close(back, x_hat)
    assert torch.isfinite(sae.sparsity_loss(out))


@pytest.mark.parametrize("variant", VARIANTS)
def test_wrong_feature_dim_names_expected_and_got(variant):
    sae = VARIANTS[variant](D)
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 16\).*got \(8, 15\)"):
        sae(torch.randn(8, 15))
    images = VARIANTS[variant]((D, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, 16, H, W\).*got \(2, 4, 4, 16\)"):
        images(torch.randn(2, 4, 4, D))


@pytest.mark.parametrize("variant", VARIANTS)
def test_input_scale_is_applied_on_the_way_in_and_out(variant):
    torch.manual_seed(0)
    sae = VARIANTS[variant](D)
    with torch.no_grad():
        sae.dictionary.bias.normal_()
    x = torch.randn(32, D)
    ref = sae(x * 3.0)
    sae.input_scale.fill_(3.0)
    if isinstance(sae, BatchTopKSAE):
        sae.running_threshold = None  # the reference call trained it; start equal
    out = sae(x)
    torch.testing.assert_close(out.z, ref.z)
    torch.testing.assert_close(out.x_hat, ref.x_hat / 3.0)
    centred = x * 3.0 - sae.dictionary.bias
    torch.testing.assert_close(out.z_pre, centred @ sae.encoder.weight.T + sae.encoder.bias)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_unit_input_scale_on_the_host_is_skipped_not_applied(variant):
    """The trainer's scale of 1: no multiply and no divide (each a pass over the batch
    and one in the backward), the same outputs as the scale applied."""
    torch.manual_seed(0)
    sae = VARIANTS[variant](D)
    x = torch.randn(32, D)
    assert sae.scaled(x) is x and sae.unscaled(x) is x
    sae.input_scale.fill_(2.0)
    torch.testing.assert_close(sae.scaled(x), 2 * x, rtol=0, atol=0)
    torch.testing.assert_close(sae.unscaled(x), x / 2, rtol=0, atol=0)
    sae.input_scale.fill_(1.0)
    skipped = sae(x)
    with torch.no_grad():
        sae.input_scale.fill_(1.0 + 2**-23)  # the smallest step up: the passes run
    applied = sae(x / (1.0 + 2**-23))
    torch.testing.assert_close(skipped.x_hat, applied.x_hat * (1.0 + 2**-23))
    traced = torch.compile(sae.scaled, fullgraph=True, backend="eager")  # no .item() there
    torch.testing.assert_close(traced(x), x * sae.input_scale, rtol=0, atol=0)


def test_relu_sae_sparsity_loss_weights_codes_by_atom_norms():
    sae = SAE(D, NB, dictionary_params={"normalization": "identity"})
    with torch.no_grad():
        sae.dictionary.weight.mul_(torch.rand(NB, 1) * 3)
    out = sae(torch.randn(10, D))
    norms = sae.dictionary.weight.norm(dim=-1)
    expected = (out.z * norms).sum(-1).mean()
    torch.testing.assert_close(sae.sparsity_loss(out), expected)
    assert torch.equal(out.z, torch.relu(out.z_pre))


def test_topk_keeps_exactly_k_per_row():
    torch.manual_seed(0)
    sae = TopKSAE(D, NB, top_k=7)
    with torch.no_grad():
        sae.encoder.bias.fill_(10.0)  # every code positive, no zero ties
    z_pre, z = sae.encode(torch.randn(50, D))
    assert ((z != 0).sum(-1) == 7).all()
    kept = torch.gather(z_pre, -1, z_pre.topk(7, dim=-1).indices)
    torch.testing.assert_close(z.topk(7, dim=-1).values.sort(-1).values, kept.sort(-1).values)
    assert sae.sparsity_loss(SAEOutput(z_pre, z, z)).item() == 0.0
    assert TopKSAE(D, 100).top_k == 10  # default: nb_concepts // 10


# -- BatchTopK ---------------------------------------------------------------------


def _batchtopk(**kwargs) -> BatchTopKSAE:
    """Codes are relu(x): thresholds can be checked by hand."""
    return BatchTopKSAE(4, 4, encoder_module=PassThrough(), **kwargs)


def test_batchtopk_keeps_exactly_top_k_over_the_batch():
    torch.manual_seed(0)
    sae = BatchTopKSAE(D, NB, top_k=37)
    with torch.no_grad():
        sae.encoder.bias.fill_(10.0)
    x = torch.randn(8, D)
    _, z = sae.encode(x)
    assert (z != 0).sum() == 37
    per_sample = BatchTopKSAE(D, NB, top_k_per_sample=3)
    with torch.no_grad():
        per_sample.encoder.bias.fill_(10.0)
    assert (per_sample.encode(x)[1] != 0).sum() == 24  # 3 per row, spread over the batch
    assert per_sample.top_k is None and per_sample.top_k_per_sample == 3


def test_batchtopk_running_threshold_by_hand():
    sae = _batchtopk(top_k=3, threshold_momentum=0.8)
    assert sae.running_threshold is None
    x1 = torch.tensor([[5.0, 4.0, 0.5, -1.0], [3.0, 1.0, 2.0, 0.0]])
    _, z1 = sae.encode(x1)
    torch.testing.assert_close(z1, torch.tensor([[5.0, 4.0, 0, 0], [3.0, 0, 0, 0]]))
    torch.testing.assert_close(sae.running_threshold, torch.tensor(3.0))  # t1
    x2 = torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.25, 0.5, 1.5, 0.0]])
    sae(x2)
    torch.testing.assert_close(sae.running_threshold, torch.tensor(0.8 * 3.0 + 0.2 * 1.0))
    assert sae.threshold_initialized.item()

    sae.eval()
    x3 = torch.tensor([[2.5, 2.6, 5.0, -3.0]])
    _, z3 = sae.encode(x3)  # z = codes * (codes >= 2.6)
    torch.testing.assert_close(z3, torch.tensor([[0.0, 0.0, 5.0, 0.0]]))
    sae.encode(torch.randn(4, 4))
    torch.testing.assert_close(sae.running_threshold, torch.tensor(2.6))  # no update in eval


def test_batchtopk_threshold_updates_in_train_mode_unless_told_not_to():
    sae = _batchtopk(top_k=2)
    x = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    with torch.no_grad():
        sae.encode(x, update_threshold=False)
        with sae.frozen_threshold():
            sae(x)
    assert sae.running_threshold is None  # opted out: a look, not a step
    with torch.no_grad():
        sae.encode(x)  # train mode, no grad: still a step (the seed's meaning)
    torch.testing.assert_close(sae.running_threshold, torch.tensor(3.0))


def test_batchtopk_keeps_exactly_its_budget_through_ties():
    sae = _batchtopk(top_k=3)
    x = torch.tensor([[3.0, 2.0, 2.0, 1.0], [2.0, 0.5, 0.0, -1.0]])
    for grad in (False, True):  # the encode path and the training forward
        with torch.set_grad_enabled(grad):
            z = sae.encode(x)[1] if not grad else sae(x).z
        assert (z != 0).sum() == 3  # three 2.0s tie for the last two places: two kept
        assert z[0, 0] == 3.0 and sorted(z[z != 0].tolist()) == [2.0, 2.0, 3.0]
        torch.testing.assert_close(sae.running_threshold, torch.tensor(2.0))


def test_batchtopk_with_fewer_positive_codes_than_top_k_keeps_them_all():
    sae = _batchtopk(top_k=5)
    x = torch.tensor([[1.5, -2.0, 0.0, -1.0], [-0.5, 0.25, -3.0, 0.0]])
    _, z = sae.encode(x)
    torch.testing.assert_close(z, torch.relu(x))
    torch.testing.assert_close(sae.running_threshold, torch.tensor(0.0))
    sae.eval()
    torch.testing.assert_close(sae.encode(x)[1], torch.relu(x))


def test_batchtopk_top_k_larger_than_the_batch_does_not_crash():
    sae = BatchTopKSAE(D, NB, top_k=100_000)
    x = torch.randn(3, D)
    z_pre, z = sae.encode(x)
    torch.testing.assert_close(z, torch.relu(z_pre))
    assert sae.running_threshold.item() == 0.0
    big = BatchTopKSAE(D, NB, top_k_per_sample=NB)
    torch.testing.assert_close(big.encode(x)[1], torch.relu(big.encode(x)[0]))


def test_batchtopk_eval_before_training_is_a_clear_error():
    sae = BatchTopKSAE(D, NB, top_k=10).eval()
    assert sae.running_threshold is None
    with pytest.raises(RuntimeError, match="no running threshold yet"):
        sae(torch.randn(2, D))
    sae.running_threshold = 0.5
    assert sae(torch.randn(2, D)).z.shape == (2, NB)


def test_batchtopk_threshold_survives_state_dict_and_dtype_moves():
    torch.manual_seed(0)
    sae = BatchTopKSAE(D, NB, top_k=30)
    sae(torch.randn(16, D))
    assert {"threshold_ema", "threshold_initialized"} <= set(sae.state_dict())
    fresh = BatchTopKSAE(D, NB, top_k=30)
    fresh.load_state_dict(sae.state_dict())
    assert fresh.running_threshold is not None
    sae.eval()
    fresh.eval()
    x = torch.randn(8, D)
    torch.testing.assert_close(fresh(x).z, sae(x).z)
    doubled = sae.to(torch.float64)
    assert doubled.running_threshold.dtype == torch.float64
    torch.testing.assert_close(doubled(x.double()).z.float(), fresh(x).z, rtol=1e-5, atol=1e-6)


# -- drop-in encoders ----------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_custom_encoders_returning_a_pair_or_a_tensor(variant):
    d = 8
    make = {
        "relu": lambda enc: SAE(d, d, encoder_module=enc),
        "topk": lambda enc: TopKSAE(d, d, top_k=2, encoder_module=enc),
        "batchtopk": lambda enc: BatchTopKSAE(d, d, top_k=4, encoder_module=enc),
        "jumprelu": lambda enc: JumpSAE(d, d, encoder_module=enc),
    }[variant]
    x = torch.randn(4, d)
    pair = make(PassThrough())(x)
    plain = make(nn.Identity())(x)
    torch.testing.assert_close(pair.z_pre, x)
    torch.testing.assert_close(pair.z, plain.z)
    if variant == "relu":
        torch.testing.assert_close(plain.z, torch.relu(x))


@pytest.mark.parametrize("name", sorted(set(ENCODERS) - SHAPE_FACTORIES - {"identity"}))
def test_registered_encoders_run(name):  # all, structured too: test_sae_seed_api.py
    torch.manual_seed(0)
    sae = SAE(D, NB, encoder_module=name)
    out = sae(torch.randn(6, D))
    assert out.z.shape == (6, NB) and (out.z >= 0).all()


def test_tie_encoder_to_dictionary():
    sae = SAE(D, NB, dictionary_params={"normalization": "identity"})
    with torch.no_grad():
        sae.dictionary.weight.mul_(2.0)
    assert sae.tie_encoder_to_dictionary_()
    torch.testing.assert_close(sae.encoder.weight, sae.get_dictionary())
    assert (sae.encoder.bias == 0).all()
    with pytest.warns(UserWarning, match="nothing was tied"):
        assert not SAE(D, NB, encoder_module="linear_bn").tie_encoder_to_dictionary_()


def test_register_encoder_refuses_silent_overwrite():
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("linear", ENCODERS["linear"])


# -- the dictionary ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("normalization", "check"),
    [
        ("l2", lambda w, a: torch.allclose(a.norm(dim=-1), torch.ones(len(a)))),
        ("max_l2", lambda w, a: (a.norm(dim=-1) <= 1 + 1e-6).all() and torch.equal(a[0], w[0])),
        ("l1", lambda w, a: torch.allclose(a.abs().sum(-1), torch.ones(len(a)))),
        ("max_l1", lambda w, a: (a.abs().sum(-1) <= 1 + 1e-6).all() and torch.equal(a[0], w[0])),
        ("identity", lambda w, a: torch.equal(a, w)),
        (lambda w: 2 * w, lambda w, a: torch.equal(a, 2 * w)),
    ],
    ids=["l2", "max_l2", "l1", "max_l1", "identity", "callable"],
)
def test_dictionary_normalizations(normalization, check):
    torch.manual_seed(0)
    layer = DictionaryLayer(6, 10, normalization=normalization)
    with torch.no_grad():
        layer.weight.mul_(torch.linspace(0.01, 5, 10)[:, None])  # row 0 is short
    atoms = layer.get_dictionary()
    assert check(layer.weight.detach(), atoms.detach())
    z = torch.randn(3, 10)
    torch.testing.assert_close(layer.decode(z), z @ atoms + layer.bias)


def test_dictionary_initializer_and_bias():
    init = torch.randn(5, 3)
    layer = DictionaryLayer(3, 5, normalization="identity", initializer=init, use_bias=False)
    assert torch.equal(layer.get_dictionary().detach(), init) and layer.bias is None
    ortho = DictionaryLayer(3, 3, initializer=nn.init.orthogonal_)
    torch.testing.assert_close(ortho.weight @ ortho.weight.T, torch.eye(3), atol=1e-5, rtol=0)
    no_bias = SAE(D, NB, dictionary_params={"use_bias": False})
    assert no_bias(torch.randn(2, D)).x_hat.shape == (2, D)


# -- bad inputs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: SAE(D, 0), ValueError, "nb_concepts must be a positive int"),
        (lambda: SAE(D, -3), ValueError, "nb_concepts must be a positive int"),
        (lambda: SAE(0, NB), ValueError, "input_shape must be"),
        (lambda: SAE((2, 3, 4, 5), NB), ValueError, "input_shape must be"),
        (lambda: TopKSAE(D, NB, top_k=0), ValueError, r"0 < top_k <= nb_concepts=64"),
        (lambda: TopKSAE(D, NB, top_k=65), ValueError, r"0 < top_k <= nb_concepts=64"),
        (lambda: BatchTopKSAE(D, NB, top_k=0), ValueError, "top_k .* must be a positive int"),
        (lambda: BatchTopKSAE(D, NB, top_k_per_sample=0), ValueError, "top_k_per_sample"),
        (lambda: BatchTopKSAE(D, NB, top_k_per_sample=65), ValueError, "top_k_per_sample"),
        (lambda: BatchTopKSAE(D, NB, top_k=8, top_k_per_sample=2), ValueError, "not both"),
        (lambda: BatchTopKSAE(D, NB, threshold_momentum=1.5), ValueError, "threshold_momentum"),
        (lambda: JumpSAE(D, NB, bandwith=0), ValueError, "bandwidth must be a positive"),
        (lambda: JumpSAE(D, NB, bandwidth=-1e-3), ValueError, "bandwidth must be a positive"),
        (lambda: JumpSAE(D, NB, bandwith=1e-3, bandwidth=1e-2), ValueError, "disagree"),
        (
            lambda: JumpSAE(D, NB, kernel="box"),
            ValueError,
            r"unknown kernel 'box'; valid: \['cauchy'",
        ),
        (
            lambda: SAE(D, NB, encoder_module="lstm"),
            ValueError,
            r"unknown encoder 'lstm'; registered: \[",
        ),
        (lambda: SAE(D, NB, encoder_module=3), TypeError, "encoder_module must be"),
        (
            lambda: SAE(D, NB, dictionary_params={"normalization": "l3"}),
            ValueError,
            r"unknown dictionary normalization 'l3'; valid: \['identity', 'l1', 'l2'",
        ),
        (
            lambda: SAE(D, NB, dictionary_params={"norm": "l2"}),
            ValueError,
            "unknown dictionary_params",
        ),
        (
            lambda: DictionaryLayer(3, 4, normalization=lambda w: w[:2]),
            ValueError,
            r"shape \(4, 3\)",
        ),
        (lambda: DictionaryLayer(3, 4, initializer=torch.zeros(3, 4)), ValueError, r"\(4, 3\)"),
    ],
)
def test_bad_arguments_are_clear_errors(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_bad_encoder_output_is_a_clear_error():
    class Triple(nn.Module):
        def forward(self, x):
            return x, x, x

    with pytest.raises(TypeError, match=r"pair \(pre_codes, codes\)"):
        SAE(4, 4, encoder_module=Triple())(torch.randn(2, 4))


def test_folded_decoder_bias_gives_the_centred_encoder_and_its_gradients():
    """The default encoder folds b_dec into its bias for speed; values and gradients are
    those of W (x s - b_dec) + b_enc computed the plain way."""
    torch.manual_seed(0)
    sae = SAE(16, 48)
    with torch.no_grad():
        sae.dictionary.bias.normal_()
        sae.input_scale.fill_(1.7)
    x = torch.randn(32, 16)

    def grads(pre_fn):
        sae.zero_grad()
        pre = pre_fn()
        (pre.relu().pow(2).sum() + pre.sum()).backward()
        return pre.detach(), [p.grad for p in (sae.encoder.weight, sae.encoder.bias, b_dec)]

    enc, b_dec = sae.encoder, sae.dictionary.bias
    folded = grads(lambda: sae._pre_codes(x)[0])
    plain = grads(lambda: torch.nn.functional.linear(x * 1.7 - b_dec, enc.weight, enc.bias))
    torch.testing.assert_close(folded[0], plain[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(folded[1], plain[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_batchtopk_rank_share_splits_the_batch_budget():
    """Under data parallel each of `world` ranks keeps top_k // world codes of its rows."""
    sae = BatchTopKSAE(D, NB, top_k=12)
    assert sae.batch_budget(8, 8 * NB) == 12
    with sae.rank_share(3):
        assert sae.batch_budget(8, 8 * NB) == 4
        codes = sae(torch.randn(8, D)).z
        assert int((codes != 0).sum()) == 4
    assert sae.batch_budget(8, 8 * NB) == 12  # restored on exit
    with pytest.raises(ValueError, match="not divisible by the 5 processes"), sae.rank_share(5):
        pass
    per_row = BatchTopKSAE(D, NB, top_k_per_sample=2.0)
    with per_row.rank_share(5):  # a per-row budget scales with the local batch by itself
        assert per_row.batch_budget(8, 8 * NB) == 16


def test_tie_encoder_to_dictionary_ties_a_custom_linear_encoder():
    """Any encoder whose weight has the dictionary's layout is tied, as the trainer's init needs."""
    sae = SAE(D, NB, encoder_module=nn.Linear(D, NB))
    assert sae.tie_encoder_to_dictionary_(warn=False)
    torch.testing.assert_close(sae.encoder.weight, sae.get_dictionary())
    assert (sae.encoder.bias == 0).all()
