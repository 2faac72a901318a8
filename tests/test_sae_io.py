"""Saving and loading SAEs (safetensors + JSON, never pickle) and the SAELens format."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sae_hooks.interop import export_saelens, import_saelens
from sae_hooks.sae import (
    SAE,
    BatchTopKSAE,
    JumpSAE,
    TopKSAE,
    load_sae,
    register_encoder,
)

D, NB = 12, 40


def _trained(variant: str, input_shape=D, **kwargs) -> SAE:
    """An SAE with non-trivial weights, biases, thresholds and input scale."""
    torch.manual_seed(0)
    sae = {
        "relu": lambda: SAE(input_shape, NB, **kwargs),
        "topk": lambda: TopKSAE(input_shape, NB, top_k=6, **kwargs),
        "batchtopk": lambda: BatchTopKSAE(
            input_shape, NB, top_k=50, threshold_momentum=0.5, **kwargs
        ),
        "jumprelu": lambda: JumpSAE(input_shape, NB, kernel="gaussian", bandwidth=0.02, **kwargs),
    }[variant]()
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if isinstance(sae, JumpSAE):
            sae.log_threshold.copy_(torch.empty(NB).uniform_(-4, -1))
    if isinstance(sae, BatchTopKSAE):
        sae(torch.randn(32, D))
        sae(torch.randn(32, D))
    sae.input_scale.fill_(2.5)
    return sae.eval()


VARIANTS = ["relu", "topk", "batchtopk", "jumprelu"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_round_trip(variant, tmp_path):
    sae = _trained(variant)
    sae.save(tmp_path / "sae")
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    config = json.loads((tmp_path / "sae" / "config.json").read_text())
    assert config == sae.config() and config["architecture"] == variant
    loaded = load_sae(tmp_path / "sae")
    assert type(loaded) is type(sae)
    loaded.eval()
    x = torch.randn(64, D) * 3
    for a, b in zip(loaded(x), sae(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert loaded.input_scale.item() == 2.5
    if variant == "batchtopk":
        torch.testing.assert_close(loaded.running_threshold, sae.running_threshold)
        assert loaded.top_k == 50 and loaded.threshold_momentum == 0.5
    if variant == "jumprelu":
        assert loaded.kernel == "gaussian" and loaded.bandwidth == 0.02


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_keeps_shape_dtype_and_settings(variant, tmp_path):
    sae = _trained(variant, input_shape=(D, 3, 2), dictionary_params={"normalization": "max_l2"})
    sae.to(torch.float64).save(tmp_path)
    loaded = load_sae(tmp_path).eval()
    assert loaded.input_shape == (D, 3, 2)
    assert loaded.dictionary.normalization == "max_l2"
    assert loaded.dictionary.weight.dtype == torch.float64
    x = torch.randn(2, D, 3, 2, dtype=torch.float64)
    torch.testing.assert_close(loaded(x).x_hat, sae(x).x_hat, rtol=0, atol=0)


def test_registered_custom_encoder_survives_save(tmp_path):
    class Scaled(nn.Module):
        def __init__(self, d, nb, device="cpu"):
            super().__init__()
            self.linear = nn.Linear(d, nb, device=device)

        def forward(self, x):
            pre = 2 * self.linear(x)
            return pre, torch.relu(pre)

    register_encoder("test_scaled", Scaled, overwrite=True)
    sae = SAE(D, NB, encoder_module="test_scaled")
    sae.save(tmp_path)
    x = torch.randn(5, D)
    torch.testing.assert_close(load_sae(tmp_path)(x).x_hat, sae(x).x_hat)


def test_unregistered_custom_encoder_cannot_be_saved(tmp_path):
    sae = SAE(D, NB, encoder_module=nn.Linear(D, NB))
    with pytest.raises(ValueError, match="register_encoder"):
        sae.save(tmp_path)
    with pytest.raises(ValueError, match="callable dictionary normalization"):
        SAE(D, NB, dictionary_params={"normalization": lambda w: w}).save(tmp_path)


def test_load_refuses_pickles(tmp_path):
    sae = SAE(D, NB)
    sae.save(tmp_path / "sae")
    torch.save(sae.state_dict(), tmp_path / "sae" / "model.safetensors")
    with pytest.raises(ValueError, match="never unpickles"):
        load_sae(tmp_path / "sae")
    torch.save(sae, tmp_path / "sae.pt")
    with pytest.raises(ValueError, match=r"is a file.*torch\.save"):
        load_sae(tmp_path / "sae.pt")


def test_load_refuses_truncated_weights(tmp_path):
    SAE(D, NB).save(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_sae(tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(architecture="gated"), r"unknown SAE architecture 'gated'.*known: \["),
        (lambda c: c.pop("architecture"), "unknown SAE architecture None"),
        (lambda c: c.update(top_k=3), r"unknown keys \['top_k'\] in 'relu' config"),
        (lambda c: c.pop("nb_concepts"), r"lacks required keys \['nb_concepts'\]"),
        (lambda c: c.update(format_version=99), "unsupported SAE format_version 99"),
        (lambda c: c.update(nb_concepts=NB + 1), "weights do not fit"),
    ],
)
def test_load_validates_the_config(edit, message, tmp_path):
    SAE(D, NB).save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    edit(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        load_sae(tmp_path)


def test_load_refuses_mismatched_tensors(tmp_path):
    sae = SAE(D, NB)
    sae.save(tmp_path)
    save_file({"dictionary.weight": torch.zeros(NB, D)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing \['dictionary.bias'"):
        load_sae(tmp_path)


def test_load_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_sae(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_sae(tmp_path)


# -- SAELens ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_saelens_round_trip_is_exact(variant, tmp_path):
    sae = _trained(variant)
    with torch.no_grad():  # raw rows far from unit norm: export must use the atoms
        sae.dictionary.weight.mul_(torch.rand(NB, 1) * 4 + 0.1)
    export_saelens(sae, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    expected_arch = {
        "relu": "standard",
        "topk": "topk",
        "batchtopk": "jumprelu",
        "jumprelu": "jumprelu",
    }
    assert cfg["architecture"] == expected_arch[variant]
    assert (cfg["d_in"], cfg["d_sae"]) == (D, NB)
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    back = import_saelens(tmp_path)
    assert type(back) is type(sae)
    back.eval()
    x = torch.randn(64, D) * 3
    for a, b in zip(back(x), sae(x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _saelens_forward(tensors, arch, x, k=None, apply_b_dec=True, rescale=False):
    """SAELens 6 inference, written out from its source (rescale: rescale_acts_by_decoder_norm)."""
    sae_in = x - tensors["b_dec"] if apply_b_dec else x
    pre = sae_in @ tensors["W_enc"] + tensors["b_enc"]
    norm = tensors["W_dec"].norm(dim=-1) if rescale else torch.ones(())
    pre = pre * norm  # rescale_acts_by_decoder_norm
    if arch == "standard":
        acts = torch.relu(pre)
    elif arch == "topk":
        top = pre.topk(k, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    else:
        acts = torch.relu(pre) * (pre > tensors["threshold"])
    return acts, (acts / norm) @ tensors["W_dec"] + tensors["b_dec"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_exported_files_run_like_saelens(variant, tmp_path):
    sae = _trained(variant)
    export_saelens(sae, tmp_path)
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "sae_weights.safetensors")
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    x = torch.randn(64, D) * 3
    acts, x_hat = _saelens_forward(tensors, cfg["architecture"], x, k=cfg.get("k"))
    out = sae(x)
    torch.testing.assert_close(acts, out.z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_hat, out.x_hat, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
@pytest.mark.parametrize(("apply_b_dec", "rescale"), [(True, False), (False, False), (True, True)])
def test_import_foreign_saelens_files(arch, apply_b_dec, rescale, tmp_path):
    torch.manual_seed(0)
    tensors = {
        "W_enc": torch.randn(D, NB) * 0.3,
        "b_enc": torch.randn(NB) * 0.1,
        "W_dec": torch.randn(NB, D),  # rows not unit norm
        "b_dec": torch.randn(D),
    }
    if arch == "jumprelu":
        tensors["threshold"] = torch.rand(NB) * 0.5 + 0.01
    save_file(tensors, tmp_path / "sae_weights.safetensors")
    cfg = {
        "architecture": arch,
        "d_in": D,
        "d_sae": NB,
        "apply_b_dec_to_input": apply_b_dec,
        "rescale_acts_by_decoder_norm": rescale,
        "k": 5,
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = import_saelens(tmp_path).eval()
    x = torch.randn(64, D)
    acts, x_hat = _saelens_forward(tensors, arch, x, k=5, apply_b_dec=apply_b_dec, rescale=rescale)
    if rescale:  # without the fold, the codes would be off by the decoder norms
        plain, _ = _saelens_forward(tensors, arch, x, k=5, apply_b_dec=apply_b_dec)
        assert not torch.allclose(plain, acts, rtol=1e-2, atol=1e-2)
    out = sae(x)
    torch.testing.assert_close(out.z, acts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.x_hat, x_hat, rtol=1e-5, atol=1e-5)


def test_saelens_errors(tmp_path):
    with pytest.raises(ValueError, match="running threshold"):
        export_saelens(BatchTopKSAE(D, NB, top_k=5), tmp_path / "a")
    with pytest.raises(ValueError, match="linear encoder"):
        export_saelens(SAE(D, NB, encoder_module="linear_bn"), tmp_path / "b")
    export_saelens(SAE(D, NB), tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "cfg.json").read_text())
    for key, value, message in [
        ("architecture", "gated", r"unsupported SAELens architecture 'gated'"),
        ("normalize_activations", "constant_norm_rescale", "no fixed scale folded"),
        ("d_sae", NB + 1, "d_sae=41 but the weights have 40"),
    ]:
        (tmp_path / "c" / "cfg.json").write_text(json.dumps({**cfg, key: value}))
        with pytest.raises(ValueError, match=message):
            import_saelens(tmp_path / "c")


def test_saelens_refuses_what_it_cannot_represent(tmp_path):
    export_saelens(SAE(D, NB), tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    for extra, message in [
        ({"metadata": {"hook_head_index": 3}}, "hook_head_index=3"),
        ({"hook_head_index": 0}, "hook_head_index=0"),
        ({"reshape_activations": "hook_z"}, "reshape_activations='hook_z'"),
        ({"rescale_acts_by_decoder_norm": "yes"}, "rescale_acts_by_decoder_norm must be true"),
    ]:
        (tmp_path / "cfg.json").write_text(json.dumps({**cfg, **extra}))
        with pytest.raises(ValueError, match=message):
            import_saelens(tmp_path)
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "sae_weights.safetensors")
    tensors["W_dec"][3] = 0
    save_file(tensors, tmp_path / "sae_weights.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "rescale_acts_by_decoder_norm": True}))
    with pytest.raises(ValueError, match="1 W_dec rows have norm 0"):
        import_saelens(tmp_path)


def test_hook_name_and_model_name_round_trip(tmp_path):
    from sae_hooks.hooks import resolve_point
    from sae_hooks.interop import saelens_metadata
    from sae_hooks.models import tiny_model

    export_saelens(SAE(D, NB), tmp_path / "a", point="resid_post.2", model_name="gpt2")
    cfg = json.loads((tmp_path / "a" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post"
    assert cfg["metadata"]["model_name"] == "gpt2"
    assert cfg["hook_name"] == "blocks.2.hook_resid_post"  # SAELens < 6
    meta = saelens_metadata(tmp_path / "a")
    assert {k: meta[k] for k in ("model_name", "hook_name", "point")} == {
        "model_name": "gpt2",
        "hook_name": "blocks.2.hook_resid_post",
        "point": "resid_post.2",
    }
    # A file SAELens wrote (no sae_hooks key): its hook name maps to our vocabulary ...
    del cfg["sae_hooks"]
    cfg["metadata"]["hook_name"] = "blocks.1.hook_mlp_out"
    (tmp_path / "a" / "cfg.json").write_text(json.dumps(cfg))
    assert saelens_metadata(tmp_path / "a")["point"] == "mlp_out.1"
    # ... and SAELens's names resolve on Hugging Face models as well.
    model = tiny_model("gpt2")
    theirs = resolve_point(model, "blocks.1.hook_mlp_out")
    assert theirs.module is resolve_point(model, "mlp_out.1").module
