"""Every SAE loader validates what it reads before allocating, with the same rules for
every format (issue 30 item 14, item 16's SAELens messages), and SAELens's training
checkpoints and normalisations import as SAELens runs them (issue 31 item 10)."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import sae_hooks
from sae_hooks.interop import export_saelens, import_saelens
from sae_hooks.sae import BatchTopKSAE, JumpSAE, MatryoshkaBatchTopKSAE, TopKSAE, load_sae

D, NB = 12, 32


def _foreign(path, arch="standard", extra_cfg=None, **extra_tensors):
    """A directory as SAELens writes it (no sae_hooks key), W_dec rows not unit norm."""
    torch.manual_seed(0)
    tensors = {
        "W_enc": torch.randn(D, NB) * 0.3,
        "b_enc": torch.randn(NB) * 0.1,
        "W_dec": torch.randn(NB, D),
        "b_dec": torch.randn(D),
        **extra_tensors,
    }
    if arch == "jumprelu" and "threshold" not in tensors:
        tensors["threshold"] = torch.rand(NB) * 0.5 + 0.01
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path / "sae_weights.safetensors")
    cfg = {"architecture": arch, "d_in": D, "d_sae": NB, **(extra_cfg or {})}
    (path / "cfg.json").write_text(json.dumps(cfg))
    return tensors


def _edit(path, **changes):
    cfg = json.loads((path / "cfg.json").read_text())
    cfg.update(changes)
    (path / "cfg.json").write_text(json.dumps(cfg))


def _rewrite(path, name, change):
    tensors = load_file(path / name)
    change(tensors)
    save_file(tensors, path / name)


@pytest.mark.parametrize("d_sae", [20_000_000, 10**12])
def test_a_lying_config_allocates_nothing(d_sae, tmp_path):
    _foreign(tmp_path / "f")
    _edit(tmp_path / "f", d_sae=d_sae)
    export_saelens(TopKSAE(D, NB, top_k=4).eval(), tmp_path / "o")
    cfg = json.loads((tmp_path / "o" / "cfg.json").read_text())
    cfg["sae_hooks"]["config"]["nb_concepts"] = d_sae
    import_saelens(tmp_path / "o")  # the first call pays one-off start-up costs
    (tmp_path / "o" / "cfg.json").write_text(json.dumps(cfg))
    for where, message in [
        (tmp_path / "f", f"d_sae={d_sae} but the weights have {NB}"),
        (tmp_path / "o", f"{d_sae} latents over {D} dimensions, but the weights have {NB}"),
    ]:
        start = time.perf_counter()
        with pytest.raises(ValueError, match=message):
            import_saelens(where)
        assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t["W_enc"].__setitem__((0, 0), float("nan")), "NaN or infinite values in W_enc"),
        (lambda t: t["b_dec"].__setitem__(1, float("inf")), "NaN or infinite values in b_dec"),
        (lambda t: t["threshold"].__setitem__(2, float("nan")), "values in threshold"),
        (lambda t: t["threshold"].__setitem__(2, float("inf")), "values in threshold"),
        (lambda t: t.__setitem__("W_dec", t["W_dec"].to(torch.int32)), r"W_dec \(I32\)"),
        (lambda t: t.__setitem__("b_enc", t["b_enc"] > 0), r"b_enc \(BOOL\)"),
        (lambda t: t.__setitem__("scaling_factor", torch.ones(NB)), r"does not have: \['scaling_f"),
        (lambda t: t.pop("threshold"), r"lack \['threshold'\]"),
        (lambda t: t.__setitem__("b_enc", torch.zeros(NB + 1)), "inconsistent SAELens weights"),
    ],
)
def test_weights_are_checked_like_load_sae_checks_ours(change, message, tmp_path):
    _foreign(tmp_path, "jumprelu")
    _rewrite(tmp_path, "sae_weights.safetensors", change)
    with pytest.raises(ValueError, match=message):
        import_saelens(tmp_path)


@pytest.mark.parametrize("scale", [float("nan"), 0.0, 1e308, -1.0, "2", True])
def test_input_scale_is_checked_in_every_format(scale, tmp_path):
    sae = TopKSAE(D, NB, top_k=4).eval()
    export_saelens(sae, tmp_path / "lens")
    cfg = json.loads((tmp_path / "lens" / "cfg.json").read_text())
    cfg["sae_hooks"]["input_scale"] = scale
    (tmp_path / "lens" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="input_scale"):
        import_saelens(tmp_path / "lens")
    if isinstance(scale, float) and scale != 1e308:  # ours (float32): the same rule in load_sae
        sae.save(tmp_path / "ours")
        _rewrite(tmp_path / "ours", "model.safetensors", lambda t: t["input_scale"].fill_(scale))
        with pytest.raises(ValueError, match=r"input_scale|NaN or infinite"):
            load_sae(tmp_path / "ours")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"d_sae": "32"}, r"d_sae must be a positive integer, got '32' \(a str\)"),
        ({"d_in": 12.0}, r"d_in must be a positive integer, got 12.0 \(a float\)"),
        ({"architecture": "topk", "k": True}, "k must be a positive integer, got True"),
        ({"architecture": "topk", "k": 4.9}, "k must be a positive integer, got 4.9"),
        ({"architecture": "topk", "k": NB + 1}, f"k={NB + 1} exceeds d_sae={NB}"),
        ({"architecture": "topk"}, "SAELens's default: cfg.json gives none"),
        ({"architecture": "batchtopk", "k": "4"}, "k must be a positive number, got '4'"),
        ({"normalize_activations": "layer_norm"}, "divides it by its own standard deviation"),
        ({"normalize_activations": "constant_norm_rescale"}, "no fixed scale folded"),
        ({"normalize_activations": "sometimes"}, "is not one of"),
    ],
)
def test_config_values_are_checked(changes, message, tmp_path):
    _foreign(tmp_path)
    _edit(tmp_path, **changes)
    with pytest.raises(ValueError, match=message):
        import_saelens(tmp_path)


def _saelens_jumprelu(tensors, x, threshold):
    """SAELens inference of a BatchTopK/Matryoshka checkpoint once saved for inference:
    rescale_acts_by_decoder_norm folded, topk_threshold broadcast to a JumpReLU."""
    norm = tensors["W_dec"].norm(dim=-1)
    pre = ((x - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"]) * norm
    acts = torch.relu(pre) * (pre > threshold)
    return acts, (acts / norm) @ tensors["W_dec"] + tensors["b_dec"]


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka_batchtopk"])
def test_batchtopk_training_checkpoints_import(arch, tmp_path):
    extra = {"k": 4.5, "rescale_acts_by_decoder_norm": True}
    if arch == "matryoshka_batchtopk":
        extra["matryoshka_widths"] = [4, 12]  # SAELens adds d_sae as the last width
    threshold = torch.tensor(0.3, dtype=torch.float64)  # SAELens keeps it in double
    tensors = _foreign(tmp_path, arch, extra, topk_threshold=threshold)
    sae = import_saelens(tmp_path)
    assert type(sae) is (MatryoshkaBatchTopKSAE if arch != "batchtopk" else BatchTopKSAE)
    if arch == "matryoshka_batchtopk":
        assert sae.group_sizes == [4, 8, NB - 12]
    x = torch.randn(64, D)
    acts, x_hat = _saelens_jumprelu(tensors, x, 0.3)
    out = sae(x)
    torch.testing.assert_close(out.z, acts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.x_hat, x_hat, rtol=1e-5, atol=1e-5)
    for widths, message in [
        ([4, 4], "increase strictly"),
        ([4, NB + 1], "up to d_sae"),
        (4, "list"),
    ]:
        _edit(tmp_path, matryoshka_widths=widths, architecture="matryoshka_batchtopk")
        with pytest.raises(ValueError, match=message):
            import_saelens(tmp_path)


def test_expected_average_only_in_runs_as_saelens_runs_it(tmp_path):
    tensors = _foreign(tmp_path, extra_cfg={"normalize_activations": "expected_average_only_in"})
    x = torch.randn(64, D) * 5
    with pytest.warns(UserWarning, match="no scaling factor"):
        plain = import_saelens(tmp_path)
    pre = (x - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"]
    torch.testing.assert_close(
        plain(x).x_hat, torch.relu(pre) @ tensors["W_dec"] + tensors["b_dec"]
    )
    # SAELens's training writes the factor beside a checkpoint; its ActivationScaler
    # scales inputs by it and divides outputs by it, as our input_scale does.
    (tmp_path / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 0.25}))
    scaled = import_saelens(tmp_path)
    pre = (x * 0.25 - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"]
    expected = (torch.relu(pre) @ tensors["W_dec"] + tensors["b_dec"]) / 0.25
    torch.testing.assert_close(scaled(x).x_hat, expected, rtol=1e-5, atol=1e-5)
    (tmp_path / "activation_scaler.json").write_text(json.dumps({"scaling_factor": -1}))
    with pytest.raises(ValueError, match="scaling_factor must be positive"):
        import_saelens(tmp_path)


def test_top_level_load_sae_reads_saelens_directories(tmp_path):
    torch.manual_seed(1)
    jump = JumpSAE(D, NB).eval()
    export_saelens(jump, tmp_path)
    x = torch.randn(16, D)
    torch.testing.assert_close(sae_hooks.load_sae(tmp_path)(x).x_hat, jump(x).x_hat)
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_sae(tmp_path)  # sae_hooks.sae.load_sae: our layout only


@pytest.mark.parametrize("name", ["config.json", "cfg.json"])
def test_a_deeply_nested_config_is_a_clear_error(name, tmp_path):
    TopKSAE(D, NB, top_k=4).save(tmp_path)
    export_saelens(TopKSAE(D, NB, top_k=4), tmp_path)
    (tmp_path / name).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="is not valid JSON"):
        (load_sae if name == "config.json" else import_saelens)(tmp_path)
