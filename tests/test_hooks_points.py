"""Hook-point vocabulary: resolution per architecture, sublayer identities, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sae_hooks.hooks import capture, list_hook_points, resolve_point
from sae_hooks.hooks.points import find_blocks

ALL_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in")


@pytest.fixture(scope="module")
def batch(tokenizer):
    return tokenizer(
        ["def f(x): return x", "The quick brown fox"], return_tensors="pt", padding=True
    )


@pytest.fixture(scope="module")
def tiny_neox_sequential():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        use_parallel_residual=False,
    )
    return GPTNeoXForCausalLM(cfg).eval()


@pytest.mark.parametrize(
    ("name", "blocks"),
    [
        ("tiny_gpt2", "transformer.h"),
        ("tiny_llama", "model.layers"),
        ("tiny_neox", "gpt_neox.layers"),
        ("tiny_bert", "encoder.layer"),
        ("tiny_vit", "vit.layers"),
    ],
)
def test_block_tables(name, blocks, request):
    model = request.getfixturevalue(name)
    path, found = find_blocks(model)
    assert path == blocks and len(found) == 4


def test_bare_vit_model_and_generic_fallback(tiny_vit):
    assert find_blocks(tiny_vit.vit)[0] == "layers"

    class Odd(nn.Module):  # blocks under a name no table knows
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"num_hidden_layers": 3})()
            self.stem = nn.ModuleList([nn.Linear(2, 2)])
            self.stack = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])

    odd = Odd()
    assert find_blocks(odd)[0] == "stack"
    assert resolve_point(odd, "resid_post.2").module is odd.stack[2]
    with pytest.raises(
        ValueError, match=r"'resid_mid\.0' does not exist in Odd.*no pre-MLP norm.*children"
    ):
        resolve_point(odd, "resid_mid.0")


def test_no_blocks_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot find the transformer blocks of Sequential"):
        resolve_point(nn.Sequential(nn.Linear(2, 2)), "resid_post.0")


@pytest.mark.parametrize(
    ("name", "kinds"),
    [
        ("tiny_gpt2", ALL_KINDS),
        ("tiny_llama", ALL_KINDS),
        ("tiny_bert", ALL_KINDS),
        ("tiny_vit", ALL_KINDS),
        (
            "tiny_neox",
            ("resid_pre", "resid_post", "attn_out", "mlp_out", "mlp_in"),
        ),  # parallel residual
        ("tiny_hooked_transformer", ALL_KINDS),
        ("tiny_bridge", ALL_KINDS),
    ],
)
def test_list_hook_points(name, kinds, request):
    model = request.getfixturevalue(name)
    points = list_hook_points(model)
    assert sorted(points) == sorted(f"{k}.{i}" for k in kinds for i in range(4))
    raw = list_hook_points(model, raw=True)
    assert raw[: len(points)] == points
    tl = name in ("tiny_hooked_transformer", "tiny_bridge")
    assert ("blocks.3.hook_resid_post" if tl else f"{find_blocks(model)[0]}.3") in raw
    for point in raw[len(points) :: 7]:
        assert resolve_point(model, point).point == point


def test_unknown_point_lists_valid_names(tiny_gpt2):
    with pytest.raises(ValueError) as err:
        resolve_point(tiny_gpt2, "resid_post_3")
    msg = str(err.value)
    assert "unknown hook point 'resid_post_3'" in msg
    assert "resid_pre.0..3, resid_mid.0..3, resid_post.0..3, attn_out.0..3, mlp_out.0..3" in msg
    assert "'transformer.h.0.ln_1'" in msg and "list_hook_points(model, raw=True)" in msg


@pytest.mark.parametrize("point", ["resid_post.4", "resid_pre.-1", "mlp_out.99"])
@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_hooked_transformer"])
def test_layer_out_of_range(point, name, request):
    model = request.getfixturevalue(name)
    with pytest.raises(
        ValueError,
        match=r"out of range: .* has 4 blocks \(0\.\.3\)\. Valid points: resid_pre\.0\.\.3",
    ):
        resolve_point(model, point)


def test_transformer_lens_unknown_raw_name(tiny_hooked_transformer):
    with pytest.raises(ValueError, match=r"'blocks\.0\.hook_resid_post'"):
        resolve_point(tiny_hooked_transformer, "blocks.0.hook_nothing")


def test_bad_type(tiny_gpt2):
    with pytest.raises(TypeError, match="a hook point is a str"):
        resolve_point(tiny_gpt2, 3)


def test_parallel_residual_has_no_resid_mid(tiny_neox):
    with pytest.raises(ValueError, match=r"run in parallel.*use_parallel_residual"):
        resolve_point(tiny_neox, "resid_mid.1")


def test_resolved_modules(tiny_gpt2, tiny_llama, tiny_bert, tiny_vit):
    h = tiny_gpt2.transformer.h[2]
    assert resolve_point(tiny_gpt2, "resid_pre.2").module is h
    assert resolve_point(tiny_gpt2, "resid_pre.2").site == "input"
    assert resolve_point(tiny_gpt2, "resid_mid.2").module is h.ln_2
    assert resolve_point(tiny_gpt2, "attn_out.2").module is h.attn
    assert resolve_point(tiny_gpt2, "transformer.h.2.mlp").module is h.mlp
    assert (
        resolve_point(tiny_llama, "resid_mid.0").module
        is tiny_llama.model.layers[0].post_attention_layernorm
    )
    assert resolve_point(tiny_bert, "resid_mid.1").module is tiny_bert.encoder.layer[1].attention
    assert resolve_point(tiny_vit, "resid_mid.3").module is tiny_vit.vit.layers[3].layernorm_after


def capture_all(model, inputs, layer):
    with capture(
        model, [f"{k}.{layer}" for k in ALL_KINDS if f"{k}.{layer}" in list_hook_points(model)]
    ) as a:
        model(**inputs)
    return a


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_llama", "tiny_vit", "tiny_neox_sequential"])
def test_pre_ln_sublayer_identities(name, request, batch):
    """resid_mid = resid_pre + attn_out and resid_post = resid_mid + mlp_out (eval: no dropout)."""
    model = request.getfixturevalue(name)
    inputs = {"pixel_values": torch.randn(2, 3, 32, 32)} if name == "tiny_vit" else batch
    a = capture_all(model, inputs, 1)
    torch.testing.assert_close(a["resid_mid.1"], a["resid_pre.1"] + a["attn_out.1"])
    torch.testing.assert_close(a["resid_post.1"], a["resid_mid.1"] + a["mlp_out.1"])


def test_parallel_residual_identity(tiny_neox, batch):
    a = capture_all(tiny_neox, batch, 2)
    torch.testing.assert_close(
        a["resid_post.2"], a["resid_pre.2"] + a["attn_out.2"] + a["mlp_out.2"]
    )


def test_bert_post_ln_identities(tiny_bert, batch):
    """Post-LN: resid_mid = LN1(resid_pre + attn_out), resid_post = LN2(resid_mid + mlp_out)."""
    layer = tiny_bert.encoder.layer[1]
    a = capture_all(tiny_bert, batch, 1)
    with torch.no_grad():
        mid = layer.attention.output.LayerNorm(a["resid_pre.1"] + a["attn_out.1"])
        post = layer.output.LayerNorm(a["resid_mid.1"] + a["mlp_out.1"])
    torch.testing.assert_close(a["resid_mid.1"], mid)
    torch.testing.assert_close(a["resid_post.1"], post)
