"""TransformerLens as a backend under both majors: TL 3's HookedTransformer and the
TransformerBridge (TL 3.9+, the only TL model in TL 4); hook names of both majors.

HookedTransformer tests skip under TL 4 (it was removed there) and run in the TL 3
environment of .ci/tl3-env; the bridge tests run under either.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import IdentitySAE

from sae_hooks.hooks import capture, list_hook_points, resolve_point, splice
from sae_hooks.hooks.points import hook_name_of_point, point_from_hook_name
from sae_hooks.hooks.transformer_lens import (
    backend_identity,
    has_hooked_transformer,
    tl_from_hf,
    tl_major,
    tl_version,
)
from sae_hooks.models import tiny_model

LAYERS = 2
needs_hooked = pytest.mark.skipif(
    not has_hooked_transformer(),
    reason=f"HookedTransformer was removed in TransformerLens 4 (installed: {tl_version()}); "
    ".ci/tl3-env runs these tests under TransformerLens 3.9",
)


@pytest.mark.parametrize(
    ("name", "point"),
    [
        ("blocks.3.hook_resid_pre", "resid_pre.3"),
        ("blocks.3.hook_in", "resid_pre.3"),
        ("blocks.3.hook_resid_mid", "resid_mid.3"),
        ("blocks.3.ln2.hook_in", "resid_mid.3"),
        ("blocks.3.hook_resid_post", "resid_post.3"),
        ("blocks.3.hook_out", "resid_post.3"),
        ("blocks.3.hook_attn_out", "attn_out.3"),
        ("blocks.3.attn.hook_out", "attn_out.3"),
        ("blocks.3.hook_mlp_out", "mlp_out.3"),
        ("blocks.3.mlp.hook_out", "mlp_out.3"),
        ("blocks.3.ln2.hook_normalized", "mlp_in.3"),
        ("blocks.3.ln2.hook_out", "mlp_in.3"),
        ("blocks.3.mlp.hook_in", "mlp_in.3"),
        ("blocks.3.hook_mlp_in", None),  # the residual before ln2, not what the MLP reads
        ("blocks.3.attn.hook_pattern", None),
    ],
)
def test_hook_names_of_both_majors(name, point):
    assert point_from_hook_name(name) == point


def test_export_names():
    assert hook_name_of_point("resid_post.6") == "blocks.6.hook_resid_post"
    assert hook_name_of_point("mlp_out.2") == "blocks.2.hook_mlp_out"
    # SAELens reads a transcoder's input at the ln2 output, never at hook_mlp_in.
    assert hook_name_of_point("mlp_in.2") == "blocks.2.ln2.hook_normalized"
    for kind in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in"):
        assert point_from_hook_name(hook_name_of_point(f"{kind}.5")) == f"{kind}.5"
    assert hook_name_of_point("blocks.1.hook_out") == "blocks.1.hook_out"
    assert hook_name_of_point("transformer.h.1") is None


def test_saelens_export_of_mlp_in_names_the_ln2_output(tmp_path):
    from sae_hooks import TopKSAE, export_saelens

    out = export_saelens(TopKSAE(32, 64, top_k=4), tmp_path / "tc", point="mlp_in.1")
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.1.ln2.hook_normalized"
    assert point_from_hook_name(cfg["metadata"]["hook_name"]) == "mlp_in.1"


def test_hf_names_resolve_on_hf_models(tiny_gpt2):
    h = tiny_gpt2.transformer.h[1]
    assert resolve_point(tiny_gpt2, "blocks.1.hook_out").module is h
    assert resolve_point(tiny_gpt2, "blocks.1.mlp.hook_out").module is h.mlp
    loc = resolve_point(tiny_gpt2, "blocks.1.ln2.hook_normalized")
    assert (loc.module, loc.site, loc.point) == (h.mlp, "input", "blocks.1.ln2.hook_normalized")
    assert backend_identity(tiny_gpt2)["backend"] == "transformers"


def _gpt2_with_ln_weights():
    """A tiny GPT-2 whose layer norms have non-trivial weights and biases, so a point
    taken before the norm's affine part cannot pass for one taken after it."""
    hf = tiny_model("gpt2", d_model=32, n_layers=LAYERS, context=32)
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for name, p in hf.named_parameters():
            if ".ln_" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return hf


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(0))


# -- HookedTransformer (TransformerLens 3) ----------------------------------------------


@pytest.fixture(scope="module")
def hooked():
    if not has_hooked_transformer():
        pytest.skip(needs_hooked.kwargs["reason"])
    return tl_from_hf(_gpt2_with_ln_weights(), None)


@needs_hooked
def test_hooked_transformer_points(hooked, ids):
    tl = hooked
    assert type(tl).__name__ == "HookedTransformer"
    ln2_out = []
    handle = tl.blocks[1].ln2.register_forward_hook(lambda m, a, out: ln2_out.append(out))
    points = ["mlp_in.1", "blocks.1.hook_out", "blocks.1.hook_resid_post", "mlp_out.1"]
    try:
        with torch.no_grad(), capture(tl, points) as acts:
            _, cache = tl.run_with_cache(ids)
    finally:
        handle.remove()
    # what the MLP reads: the ln2 output with its weights, not ln2.hook_normalized
    assert torch.equal(acts["mlp_in.1"], ln2_out[0])
    assert not torch.allclose(acts["mlp_in.1"], cache["blocks.1.ln2.hook_normalized"])
    assert torch.equal(acts["blocks.1.hook_out"], cache["blocks.1.hook_resid_post"])
    assert torch.equal(acts["blocks.1.hook_resid_post"], acts["blocks.1.hook_out"])
    with torch.no_grad():
        assert torch.equal(tl.blocks[1].mlp(acts["mlp_in.1"]), acts["mlp_out.1"])
    identity = backend_identity(tl)
    assert identity["backend"] == "transformer_lens.HookedTransformer"
    assert identity["compatibility_mode"] is None and identity["transformer_lens_version"]


@needs_hooked
def test_tiny_tl_gpt2_is_a_hooked_transformer_under_tl3():
    assert type(tiny_model("tl-gpt2", d_model=32, n_layers=2)).__name__ == "HookedTransformer"


# -- TransformerBridge --------------------------------------------------------------------


@pytest.fixture(scope="module")
def bridge_from_dir(tmp_path_factory):
    """A bridge booted the way users boot one: from a model directory (here a tiny
    random GPT-2 saved to disk; nothing is fetched)."""
    bridge_mod = pytest.importorskip("transformer_lens.model_bridge")
    path = tmp_path_factory.mktemp("tiny-gpt2")
    _gpt2_with_ln_weights().save_pretrained(path)
    return bridge_mod.TransformerBridge.boot_transformers(str(path)).eval()


def test_bridge_points_equal_hidden_states(bridge_from_dir, ids):
    bridge = bridge_from_dir
    hf = bridge.original_model  # the HF model the bridge wraps (eager attention)
    assert sorted(list_hook_points(bridge)) == sorted(
        f"{k}.{i}"
        for k in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in")
        for i in range(LAYERS)
    )
    ln2 = []
    handle = hf.transformer.h[1].ln_2.register_forward_hook(lambda m, a, out: ln2.append(out))
    try:
        with torch.no_grad():
            hidden = hf(ids, output_hidden_states=True).hidden_states
            with capture(bridge, list_hook_points(bridge)) as acts:
                bridge(ids)
    finally:
        handle.remove()
    for i in range(LAYERS):
        assert torch.equal(acts[f"resid_pre.{i}"], hidden[i])
    # hidden_states' last entry is taken after ln_f: compare the last block through it
    assert torch.equal(acts["resid_post.0"], hidden[1])
    with torch.no_grad():
        assert torch.equal(hf.transformer.ln_f(acts[f"resid_post.{LAYERS - 1}"]), hidden[-1])
    assert torch.equal(acts["mlp_in.1"], ln2[-1])
    torch.testing.assert_close(acts["resid_mid.1"], acts["resid_pre.1"] + acts["attn_out.1"])


def test_bridge_canonical_and_legacy_names_are_one_point(bridge_from_dir):
    bridge = bridge_from_dir
    pairs = [
        ("resid_pre.1", "blocks.1.hook_in", "blocks.1.hook_resid_pre"),
        ("resid_mid.1", "blocks.1.ln2.hook_in", "blocks.1.hook_resid_mid"),
        ("resid_post.1", "blocks.1.hook_out", "blocks.1.hook_resid_post"),
        ("attn_out.1", "blocks.1.attn.hook_out", "blocks.1.hook_attn_out"),
        ("mlp_out.1", "blocks.1.mlp.hook_out", "blocks.1.hook_mlp_out"),
        ("mlp_in.1", "blocks.1.mlp.hook_in"),  # ln2.hook_out: another hook, same tensor
    ]
    for names in pairs:
        locations = [resolve_point(bridge, name) for name in names]
        assert all(loc.module is locations[0].module for loc in locations), names
        assert all(loc.inplace == (names[0] == "resid_mid.1") for loc in locations), names


@pytest.mark.parametrize("point", ["resid_pre.1", "resid_mid.1", "attn_out.1", "mlp_in.1"])
def test_splice_through_the_bridge(bridge_from_dir, ids, point):
    bridge = bridge_from_dir
    with torch.no_grad():
        reference = bridge(ids)
        with splice(bridge, point, IdentitySAE(32)):
            assert torch.equal(bridge(ids), reference)
        with splice(bridge, point, _ZeroSAE(32)):
            assert not torch.allclose(bridge(ids), reference)


class _ZeroSAE(IdentitySAE):
    def decode(self, z):
        return torch.zeros_like(z)


def test_compatibility_mode_is_recorded(ids, tokenizer):
    pytest.importorskip("transformer_lens.model_bridge")
    from sae_hooks.hooks.transformer_lens import bridge_from_hf

    plain = bridge_from_hf(_gpt2_with_ln_weights(), tokenizer)
    compat = bridge_from_hf(_gpt2_with_ln_weights(), tokenizer, compatibility_mode=True)
    for bridge, mode in ((plain, False), (compat, True)):
        identity = backend_identity(bridge)
        assert identity["backend"] == "transformer_lens.TransformerBridge"
        assert identity["compatibility_mode"] is mode
        assert identity["transformer_lens_version"] == tl_version()
    with torch.no_grad(), capture(plain, "resid_post.0") as acts_plain:
        plain(ids)
    with torch.no_grad(), capture(compat, "resid_post.0") as acts_compat:
        compat(ids)
    # weight centring moves the residual stream: why the mode must be recorded
    assert not torch.allclose(acts_plain["resid_post.0"], acts_compat["resid_post.0"])


@pytest.mark.skipif(tl_major() is None or tl_major() < 4, reason="TransformerLens 4 only")
def test_tl_gpt2_is_a_bridge_under_tl4(ids):
    model = tiny_model("tl-gpt2", d_model=32, n_layers=2, context=32)
    assert backend_identity(model)["backend"] == "transformer_lens.TransformerBridge"
    with torch.no_grad(), capture(model, ["resid_post.1", "mlp_in.1"]) as acts:
        logits = model(ids)
    assert logits.shape == (2, 9, 512) and acts["mlp_in.1"].shape == (2, 9, 32)
