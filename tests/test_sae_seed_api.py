"""overcomplete (seed) API parity: structured inputs, the encoder registry, tied /
untied, DictionaryLayer's signature, BatchTopK's threshold rule, the public
jump_relu / heaviside, and loading overcomplete's state_dict."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import sae_hooks
from sae_hooks.sae import (
    ENCODERS,
    SAE,
    AttentionEncoder,
    BatchTopKSAE,
    DictionaryLayer,
    EncoderFactory,
    JumpSAE,
    MLPEncoder,
    ResNetEncoder,
    TopKSAE,
    heaviside,
    jump_relu,
    load_overcomplete_state_dict,
    load_sae,
    shapes,
)
from sae_hooks.sae.encoders import SHAPE_FACTORIES
from sae_hooks.sae.kernels import KERNELS, rectangle_kernel

D, NB = 8, 24
CLASSES = {
    "relu": lambda shape, **kw: SAE(shape, NB, **kw),
    "topk": lambda shape, **kw: TopKSAE(shape, NB, top_k=4, **kw),
    "batchtopk": lambda shape, **kw: BatchTopKSAE(shape, NB, top_k=20, **kw),
    "jumprelu": lambda shape, **kw: JumpSAE(shape, NB, bandwidth=0.05, **kw),
}
# (input_shape, batch shape) each encoder is built for; identity needs nb_concepts == d
SHAPES = {
    "resnet_1b": ((D, 3, 2), (2, D, 3, 2)),
    "resnet_3b": ((D, 3, 2), (2, D, 3, 2)),
    "attention_1b": ((5, D), (3, 5, D)),
    "attention_3b": ((5, D), (3, 5, D)),
}


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(1, -1).reshape(-1, D) if x.dim() == 4 else x.reshape(-1, D)


@pytest.mark.parametrize("encoder", sorted(set(ENCODERS) - {"identity"}))
@pytest.mark.parametrize("variant", CLASSES)
def test_every_class_with_every_encoder_end_to_end(variant, encoder, tmp_path):
    torch.manual_seed(0)
    input_shape, x_shape = SHAPES.get(encoder, ((5, D), (3, 5, D)))
    sae = CLASSES[variant](input_shape, encoder_module=encoder)
    x = torch.randn(x_shape)
    out = sae(x)
    n_rows = _rows(x).shape[0]
    assert out.z_pre.shape == out.z.shape == (n_rows, NB)
    # overcomplete's layout: rows beside the codes for a structure encoder, else x's shape
    assert out.x_hat.shape == ((n_rows, D) if encoder in SHAPES else x.shape)
    torch.testing.assert_close(sae.reconstruct(x), shapes.from_rows(out.x_hat, x.shape, D))
    assert sae.reconstruct(x).shape == x.shape
    loss = (_rows(out.x_hat) - _rows(x)).pow(2).sum() + sae.sparsity_loss(out)
    loss.backward()
    grads = [p.grad for p in sae.encoder.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
    assert sae.dictionary.weight.grad.abs().sum() > 0

    sae.eval()
    with torch.no_grad():
        expected = sae(x)
        sae.save(tmp_path)
        loaded = load_sae(tmp_path).eval()
        again = loaded(x)
    torch.testing.assert_close(again.x_hat, expected.x_hat)
    torch.testing.assert_close(again.z, expected.z)
    assert json.loads((tmp_path / "config.json").read_text())["encoder_module"] == encoder


def test_structure_encoders_read_the_input_in_its_own_shape():
    seen = []

    class Spy(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.lin = nn.Linear(width, NB)

        def forward(self, x):
            seen.append(tuple(x.shape))
            return self.lin(x.movedim(1, -1) if x.dim() == 4 else x)  # rows via reshape later

    SAE((5, D), NB, encoder_module=Spy(D))(torch.randn(3, 5, D))
    SAE((D, 3, 2), NB, encoder_module=Spy(D))(torch.randn(2, D, 3, 2))
    SAE(D, NB, encoder_module=Spy(D))(torch.randn(4, D))
    assert seen == [(3, 5, D), (2, D, 3, 2), (4, D)]


def test_image_codes_are_rows_in_b_h_w_order_and_reconstruct_goes_back_channels_first():
    torch.manual_seed(0)
    sae = SAE((D, 3, 2), NB, encoder_module="resnet_1b").eval()
    x = torch.randn(2, D, 3, 2)
    with torch.no_grad():
        out = sae(x)
        rows = sae.decode(out.z)  # (b, h, w) rows
        again = sae.reconstruct(x)
    torch.testing.assert_close(out.x_hat, rows)  # overcomplete's x_hat: rows, as its losses
    torch.testing.assert_close(again, rows.reshape(2, 3, 2, D).movedim(-1, 1))
    # a position's codes depend on its neighbours (3x3 convolutions): not a row encoder
    y = x.clone()
    y[:, :, 0, 0] += 1.0
    with torch.no_grad():
        changed = (sae(y).z_pre - out.z_pre).abs().sum(-1).reshape(2, 3, 2)
    assert changed[:, 1, 1].gt(0).all()


def test_structure_encoders_refuse_rows_and_wrong_shapes_clearly():
    sae = SAE((5, D), NB, encoder_module="attention_1b")
    with pytest.raises(ValueError, match=r"\(B, T, 8\)"):
        sae(torch.randn(15, D))
    with pytest.raises(ValueError, match=r"input_shape must be \(seq, d\)"):
        SAE(D, NB, encoder_module="attention_1b")
    with pytest.raises(ValueError, match=r"\(channels, height, width\)"):
        SAE((5, D), NB, encoder_module="resnet_1b")

    class Channels(nn.Module):  # codes channels-first: not one row per position
        def forward(self, x):
            return x.new_zeros(x.shape[0], NB, x.shape[2], x.shape[3])

    with pytest.raises(ValueError, match="one row of 24 codes per"):
        SAE((D, 3, 3), NB, encoder_module=Channels())(torch.randn(2, D, 3, 3))


def test_row_encoders_on_structured_shapes_keep_the_fast_path():
    torch.manual_seed(0)
    sae = SAE((5, D), NB)
    assert not sae._structured
    x = torch.randn(3, 5, D)
    torch.testing.assert_close(sae(x).z, sae(x.reshape(-1, D)).z)


def test_identity_encoder():
    sae = SAE(D, D, encoder_module="identity", dictionary_params={"use_bias": False})
    x = torch.randn(4, D)
    z_pre, z, _ = sae(x)
    torch.testing.assert_close(z_pre, x)
    torch.testing.assert_close(z, x)
    with pytest.raises(ValueError, match="nb_concepts must equal"):
        SAE(D, NB, encoder_module="identity")


def test_seed_encoder_layouts():
    one = MLPEncoder(D, NB, nb_blocks=1, norm_layer=nn.LayerNorm)
    three = MLPEncoder(D, NB, hidden_dim=16, nb_blocks=3, residual=True)
    assert len(one.mlp_blocks) == 0 and isinstance(one.final_block[1], nn.LayerNorm)
    assert len(three.mlp_blocks) == 2 and three.final_block[0].in_features == 16
    assert three(torch.randn(4, D))[0].shape == (4, NB)
    att = AttentionEncoder((5, D), NB, nb_blocks=2, attention_heads=2)
    assert att(torch.randn(3, 5, D))[1].shape == (15, NB)
    res = ResNetEncoder((D, 4, 4), NB, hidden_dim=6, nb_blocks=2)
    assert res(torch.randn(2, D, 4, 4))[1].shape == (32, NB)
    # a user-built encoder passed as encoder_module, as in overcomplete
    sae = TopKSAE((5, D), NB, top_k=3, encoder_module=att)
    assert sae(torch.randn(3, 5, D)).z.ne(0).sum(-1).le(3).all()
    assert sae_hooks.MLPEncoder is MLPEncoder and sae_hooks.ResNetEncoder is ResNetEncoder


def test_attention_stays_within_each_sequence():
    torch.manual_seed(0)
    sae = SAE((4, D), NB, encoder_module="attention_1b").eval()
    x = torch.randn(3, 4, D)
    with torch.no_grad():
        alone = sae(x[:1]).z_pre
        batched = sae(x).z_pre[:4]
    torch.testing.assert_close(alone, batched, rtol=1e-5, atol=1e-5)


def test_encoder_factory_registers_seed_style_factories():
    @EncoderFactory.register_module("test_seed_style")
    def factory(input_shape, n_components, **kwargs):
        return AttentionEncoder(input_shape, n_components, attention_heads=1, **kwargs)

    assert "test_seed_style" in EncoderFactory.list_modules()
    assert "test_seed_style" in SHAPE_FACTORIES
    sae = SAE((3, D), NB, encoder_module="test_seed_style")
    assert isinstance(sae.encoder, AttentionEncoder) and sae.encoder.attention_heads == 1
    assert sae(torch.randn(2, 3, D)).z.shape == (6, NB)
    assert isinstance(EncoderFactory.create_module("mlp_bn_3", D, NB), MLPEncoder)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoder_factory_takes_overcomplete_keywords(name):
    """overcomplete's tests call create_module(name, input_shape=..., n_components=...);
    every registered name (identity too, whose n_components is ignored) builds that way."""
    shape = {"resnet": (3, 8, 8), "attention": (10, 16)}.get(name.split("_")[0], 10)
    module = EncoderFactory.create_module(name, input_shape=shape, n_components=2)
    x = torch.randn(2, *shape) if isinstance(shape, tuple) else torch.randn(2, shape)
    _, codes = module(x)
    if name != "identity":
        assert codes.shape[-1] == 2 and (codes >= 0).all()
    ours = EncoderFactory.create_module(name, shape, nb_concepts=2)
    assert type(ours) is type(module)
    with pytest.raises(TypeError, match="given twice"):
        EncoderFactory.create_module(name, shape, 2, n_components=2)


def test_an_sae_on_the_identity_encoder_still_needs_nb_concepts_equal_to_d():
    assert SAE(D, D, encoder_module="identity").nb_concepts == D
    with pytest.raises(ValueError, match="nb_concepts must equal the input width"):
        SAE(D, NB, encoder_module="identity")


# -- tied / untied ---------------------------------------------------------------------


@pytest.mark.parametrize("variant", CLASSES)
def test_tied_and_untied(variant, tmp_path):
    torch.manual_seed(0)
    sae = CLASSES[variant](D, dictionary_params={"normalization": "identity"})
    assert sae.tied() is sae
    assert not any(n.startswith("encoder.") for n, _ in sae.named_parameters())
    x = torch.randn(5, D)
    b_dec = sae.dictionary.bias
    torch.testing.assert_close(sae.encode(x)[0], (x - b_dec) @ sae.get_dictionary().T)
    with torch.no_grad():
        sae.dictionary.weight.mul_(2.0)  # the encoder follows the dictionary
    torch.testing.assert_close(sae.encode(x)[0], (x - b_dec) @ sae.get_dictionary().T)
    sae(x).x_hat.sum().backward()
    assert sae.dictionary.weight.grad is not None

    sae.tied(bias=True).save(tmp_path / "tied")
    assert {k for k in sae.state_dict() if k.startswith("encoder.")} == {"encoder.bias"}
    loaded = load_sae(tmp_path / "tied")
    torch.testing.assert_close(loaded.encode(x)[0], sae.encode(x)[0])

    atoms = sae.get_dictionary().detach().clone()
    assert sae.untied() is sae
    torch.testing.assert_close(sae.encoder.weight, atoms)
    assert sae.encoder.bias is None
    with torch.no_grad():
        sae.dictionary.weight.mul_(3.0)  # now independent
    torch.testing.assert_close(sae.encoder.weight, atoms)
    sae.untied(bias=True, copy_from_dictionary=False)
    assert not torch.equal(sae.encoder.weight, sae.get_dictionary())
    assert sae.encoder.bias.abs().sum() == 0
    sae.untied(bias=False).save(tmp_path / "untied")
    loaded = load_sae(tmp_path / "untied")  # in eval mode, as every loaded SAE
    torch.testing.assert_close(loaded.encode(x)[1], sae.eval().encode(x)[1])


# -- DictionaryLayer -------------------------------------------------------------------


def test_dictionary_layer_takes_the_seed_positional_order_and_multiplier():
    layer = DictionaryLayer(D, NB, "identity", torch.ones(NB, D), True, "cpu")
    assert (layer.in_dimensions, layer.nb_concepts) == (D, NB)
    assert layer.get_dictionary().shape == (NB, D)
    with torch.no_grad():
        layer.multiplier.fill_(torch.log(torch.tensor(3.0)))
    torch.testing.assert_close(layer.get_dictionary(), torch.full((NB, D), 3.0))
    assert "multiplier" in dict(layer.named_parameters())
    plain = DictionaryLayer(D, NB)
    assert plain.multiplier.item() == 0.0 and "multiplier" not in plain.state_dict()
    with pytest.raises(ValueError, match=r"\(nb_concepts, in_dimensions\) = \(24, 8\)"):
        DictionaryLayer(D, NB, initializer=torch.zeros(D, NB))


def test_dictionary_params_from_overcomplete_code(tmp_path):
    sae = SAE(D, NB, dictionary_params={"normalization": "l1", "use_multiplier": True})
    assert sae.dictionary.use_multiplier
    sae.save(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["dictionary_params"]
    assert saved == {"normalization": "l1", "use_bias": True, "use_multiplier": True}
    assert load_sae(tmp_path).dictionary.use_multiplier
    assert SAE(D, NB, dictionary_params={"device": "cpu"}).dictionary.weight.device.type == "cpu"
    with pytest.raises(ValueError, match="differs from the SAE's device"):
        SAE(D, NB, dictionary_params={"device": "meta"})
    with pytest.raises(ValueError, match="accepted"):
        SAE(D, NB, dictionary_params={"normalisation": "l2"})


def test_old_config_dictionary_params_still_load(tmp_path):
    SAE(D, NB).save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["dictionary_params"] = {"normalization": "l2", "use_bias": True}  # pre-multiplier
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_sae(tmp_path).get_dictionary().shape == (NB, D)


def test_sae_saved_with_the_old_mlp_layout_still_loads(tmp_path):
    torch.manual_seed(0)
    old = SAE(D, NB, encoder_module="mlp_ln_hidden")
    old.save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["encoder_module"] = "mlp_ln_1"  # what it was called before the seed's meaning
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_sae(tmp_path)
    x = torch.randn(4, D)
    torch.testing.assert_close(loaded(x).x_hat, old(x).x_hat)


# -- BatchTopK -------------------------------------------------------------------------


def test_batchtopk_calibration_under_no_grad_sets_the_threshold_and_eval_keeps_ties():
    sae = BatchTopKSAE(4, 4, top_k=2, encoder_module=nn.Identity())
    with torch.no_grad():
        sae(torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
    torch.testing.assert_close(sae.running_threshold, torch.tensor(3.0))
    sae.eval()
    _, z = sae.encode(torch.tensor([[3.0, 2.5, 5.0, 0.0]]))
    torch.testing.assert_close(z, torch.tensor([[3.0, 0.0, 5.0, 0.0]]))  # 3 >= 3 kept


# -- jump_relu / heaviside / kernels --------------------------------------------------


def test_public_jump_relu_and_heaviside_by_hand():
    x = torch.tensor([[0.1, 0.6, 2.0], [1.4, 2.0, 3.0]], requires_grad=True)
    theta = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)
    out = jump_relu(x, theta, rectangle_kernel, 1.0)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 2.0], [1.4, 2.0, 3.0]]))
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]))
    # -(theta/eps) K(u): |u| <= 1/2 at 0.6 - 1 and 1.4 - 1
    torch.testing.assert_close(theta.grad, torch.tensor([-1.0, -1.0, 0.0]))

    x.grad = theta.grad = None
    h = heaviside(x, theta, "rectangle", torch.tensor(0.5))
    torch.testing.assert_close(h, (x > theta).float())
    h.sum().backward()
    torch.testing.assert_close(x.grad, torch.zeros_like(x))  # a tensor of zeros, not None
    # -(1/eps) K((x - theta)/eps), eps = 0.5: only 1.0 - ... none of |x - 1| <= 0.25
    torch.testing.assert_close(theta.grad, torch.zeros(3))


def test_kernel_arguments_agree_whatever_their_spelling():
    x = torch.tensor([[0.9, 1.05, 1.3]], requires_grad=True)
    grads = []
    for kernel in (
        "gaussian",
        KERNELS["gaussian"],
        lambda d, eps: KERNELS["gaussian"](d / eps) / eps,
    ):
        theta = torch.ones(3, requires_grad=True)
        jump_relu(x, theta, kernel, 0.2).sum().backward()
        grads.append(theta.grad)
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[0], grads[2])
    with pytest.raises(ValueError, match="bandwidth must be a positive"):
        heaviside(x, torch.ones(3), "gaussian", 0.0)


def test_rectangle_boundary_is_closed_like_the_seed():
    u = torch.tensor([-0.5, 0.5, 0.50001, -0.6])
    torch.testing.assert_close(KERNELS["rectangle"](u), torch.tensor([1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(
        rectangle_kernel(torch.tensor([0.25, 0.3]), 0.5), torch.tensor([2.0, 0.0])
    )


# -- overcomplete state_dicts ----------------------------------------------------------


def test_load_overcomplete_state_dict_jump_and_batchtopk():
    torch.manual_seed(0)
    w_enc, b_enc = torch.randn(NB, D), torch.randn(NB)
    atoms = torch.nn.functional.normalize(torch.randn(NB, D), dim=-1)
    log_theta = torch.full((NB,), -3.0)
    seed = {
        "encoder.final_block.0.weight": w_enc,
        "encoder.final_block.0.bias": b_enc,
        "dictionary._weights": atoms,
        "dictionary.multiplier": torch.tensor(0.0),
        "thresholds": log_theta,
    }
    sae = load_overcomplete_state_dict(JumpSAE(D, NB), seed).eval()
    x = torch.randn(5, D)
    pre = x @ w_enc.T + b_enc
    z = pre * (pre > log_theta.exp())
    out = sae(x)
    torch.testing.assert_close(out.z, z)
    torch.testing.assert_close(out.x_hat, z @ atoms)  # no decoder bias, as in overcomplete

    del seed["thresholds"]
    btk = load_overcomplete_state_dict(BatchTopKSAE(D, NB, top_k=9), seed, running_threshold=0.2)
    torch.testing.assert_close(btk.eval()(x).z, pre.relu() * (pre >= 0.2))

    seed["dictionary.multiplier"] = torch.tensor(0.5)
    with pytest.raises(ValueError, match="use_multiplier"):
        load_overcomplete_state_dict(SAE(D, NB), seed)
    mult = SAE(D, NB, dictionary_params={"use_multiplier": True})
    load_overcomplete_state_dict(mult, seed)
    torch.testing.assert_close(mult.get_dictionary(), atoms * torch.tensor(0.5).exp())
    with pytest.raises(ValueError, match="unexpected"):
        load_overcomplete_state_dict(SAE(D, NB), {**seed, "dictionary.multiplier": 0, "x": x})


def test_a_safetensors_header_starting_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    from safetensors.torch import save_file

    from sae_hooks.sae.persistence import read_safetensors

    path = tmp_path / "w.safetensors"
    for pad in range(300):  # grow the header until its length's low byte is 0x80
        save_file({"a": torch.zeros(1)}, path, {"pad": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    assert path.read_bytes()[:1] == b"\x80"
    assert torch.equal(read_safetensors(path)["a"], torch.zeros(1))


# -- overcomplete's attribute names (issue 31 item 8) ---------------------------------


def test_dictionary_layer_exposes_overcomplete_weights_and_normalization():
    layer = DictionaryLayer(8, 5, normalization="max_l2", use_multiplier=True)
    assert layer._weights is layer.weight  # overcomplete's name of the raw atoms
    with torch.no_grad():
        layer._weights.data *= 3
        layer.multiplier.fill_(0.5)
    expected = layer.weight / layer.weight.norm(dim=-1, keepdim=True).clamp_min(1)
    torch.testing.assert_close(layer.get_dictionary(), expected * math.exp(0.5))
    # overcomplete holds the function there; configs still read the name
    assert callable(layer.normalization) and layer.normalization == "max_l2"
    torch.testing.assert_close(layer.normalization(layer.weight), expected)
    assert layer.config()["normalization"] == "max_l2"
    assert type(layer.config()["normalization"]) is str
    assert not DictionaryLayer(8, 5).multiplier.requires_grad


def test_tied_and_untied_encoders_are_overcomplete_tieable_encoders():
    from sae_hooks.sae.encoder_modules import TieableEncoder

    sae = SAE(D, NB)
    assert isinstance(sae.encoder, TieableEncoder) and sae.encoder.tied_to is None
    sae.tied()
    assert isinstance(sae.encoder, TieableEncoder) and sae.encoder.tied_to is sae.dictionary
    assert "encoder.tied_to.weight" not in sae.state_dict()  # the atoms are stored once
    x = torch.randn(3, D)
    pre, _ = sae.encoder(x)
    torch.testing.assert_close(pre, x @ sae.get_dictionary().T)
    sae.untied()
    assert isinstance(sae.encoder, TieableEncoder) and sae.encoder.tied_to is None
    # built directly with overcomplete's arguments: tied means no weight of its own
    tied = TieableEncoder(D, NB, tied_to=sae.dictionary)
    assert tied.weight is None and tied.tied_to is sae.dictionary
    own = TieableEncoder(D, NB, bias=True, weight_init=torch.ones(NB, D))
    pre, codes = own(x)
    torch.testing.assert_close(pre, x.sum(-1, keepdim=True).expand(3, NB))
    assert torch.equal(codes, pre.relu())


class _DuckTieable(nn.Module):
    """overcomplete 0.3's TieableEncoder as it is written there (no sae-hooks base)."""

    def __init__(self, in_dimensions, nb_concepts, bias=False, tied_to=None, weight_init=None):
        super().__init__()
        self.tied_to = tied_to
        self.weight = None if tied_to else nn.Parameter(torch.randn(nb_concepts, in_dimensions))
        self.bias = nn.Parameter(torch.zeros(nb_concepts)) if bias else None

    def forward(self, x):
        w = self.weight if self.tied_to is None else self.tied_to.get_dictionary()
        pre = x @ w.T
        return pre, pre.relu()


def test_an_encoder_with_overcompletes_tieable_interface_is_a_tieable_encoder():
    from sae_hooks.sae.encoder_modules import TieableEncoder
    from sae_hooks.sae.encoders import LinearEncoder

    sae = SAE(D, NB)
    sae.encoder = _DuckTieable(D, NB, tied_to=sae.dictionary)  # what overcomplete's tied() does
    assert isinstance(sae.encoder, TieableEncoder) and issubclass(_DuckTieable, TieableEncoder)
    x = torch.randn(3, D)
    torch.testing.assert_close(sae.encode(x)[0], x @ sae.get_dictionary().T)
    assert not issubclass(_DuckTieable, LinearEncoder)  # only the interface, not our subclasses

    class NoForward(nn.Module):
        def __init__(self, in_dimensions, nb_concepts, bias=False, tied_to=None, weight_init=None):
            super().__init__()

    class NotTieable(_DuckTieable):
        def __init__(self, in_dimensions, nb_concepts, bias=False):
            super().__init__(in_dimensions, nb_concepts, bias)

    for other in (MLPEncoder(D, NB), nn.Linear(D, NB), NoForward(D, NB), NotTieable(D, NB)):
        assert not isinstance(other, TieableEncoder), type(other).__name__
