"""circuit-tracer export: the files hold circuit-tracer's names and shapes, and its
formulas on them (z = act(x W_enc^T + b_enc), y = z W_dec + b_dec + x W_skip^T,
transcribed from circuit_tracer/transcoder/single_layer_transcoder.py 0.5.0) give our
transcoders' codes and predictions on the same raw rows. bench/circuit_tracer_export.py
checks the same against circuit-tracer's own loader where it is installed."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sae_hooks.interop import export_circuit_tracer
from sae_hooks.sae import SAE_REGISTRY, SkipTranscoder, Transcoder

D, N = 16, 48


def trained_like(cls, seed: int):
    """A transcoder with non-trivial scales and biases, as training leaves them."""
    torch.manual_seed(seed)
    tc = cls(D, N)
    with torch.no_grad():
        tc.input_scale.fill_(0.37)
        tc.output_scale.fill_(2.5)
        tc.encoder.bias.normal_()
        tc.dictionary.bias.normal_()
        if hasattr(tc, "W_skip"):
            tc.W_skip.normal_(std=0.1)
    return tc.eval()


class JumpTranscoder(Transcoder):
    """A JumpReLU transcoder (codes kept above a per-latent threshold): circuit-tracer
    stores the threshold as activation_function.threshold."""

    architecture = "test_jump_transcoder"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("threshold", torch.rand(self.nb_concepts))

    def _sparsify(self, pre, codes):
        return pre * (pre > self.threshold)


# Subclassing registers the architecture; these tests use the class directly, and the
# registry of every other test must hold the library's own variants only.
SAE_REGISTRY.pop(JumpTranscoder.architecture)


def circuit_tracer_forward(state, x):
    """circuit-tracer 0.5's SingleLayerTranscoder.encode / decode on a loaded state."""
    pre = torch.nn.functional.linear(x, state["W_enc"], state["b_enc"])
    if "activation_function.threshold" in state:
        z = pre * (pre > state["activation_function.threshold"])
    else:
        z = torch.relu(pre)
    y = z @ state["W_dec"] + state["b_dec"]
    if "W_skip" in state:
        y = y + x @ state["W_skip"].T
    return z, y


@pytest.mark.parametrize("cls", [Transcoder, SkipTranscoder, JumpTranscoder])
def test_export_matches_circuit_tracer_formulas(cls, tmp_path):
    set_ = {f"mlp_out.{layer}": trained_like(cls, layer) for layer in range(3)}
    out = export_circuit_tracer(set_, tmp_path / "ct", model_name="gpt2")
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model_kind"] == "transcoder_set"
    assert (config["feature_input_hook"], config["feature_output_hook"]) == (
        "mlp.hook_in",
        "mlp.hook_out",
    )
    assert [p.rsplit("/", 1)[1] for p in config["transcoders"]] == [
        f"layer_{i}.safetensors" for i in range(3)
    ]
    x = torch.randn(20, D) * 3
    for layer, tc in enumerate(set_.values()):
        state = load_file(config["transcoders"][layer])
        assert state["W_enc"].shape == (N, D) and state["W_dec"].shape == (N, D)
        assert ("W_skip" in state) == (cls is SkipTranscoder)
        assert ("activation_function.threshold" in state) == (cls is JumpTranscoder)
        z, y = circuit_tracer_forward(state, x)
        with torch.no_grad():
            ours_z = tc.encode(x)[1]
            ours_y = tc.predict(x)
        torch.testing.assert_close(z, ours_z, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(y, ours_y, rtol=1e-5, atol=1e-5)


def test_hub_layout_lists_hf_uris(tmp_path):
    out = export_circuit_tracer(
        [trained_like(Transcoder, 0)], tmp_path / "ct", repo_id="me/tc-gpt2"
    )
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["transcoders"] == ["hf://me/tc-gpt2/layer_0.safetensors"]
    assert config["scan"] == "me/tc-gpt2"


def test_bad_sets_have_one_clear_error_each(tmp_path):
    tc = trained_like(Transcoder, 0)
    with pytest.raises(ValueError, match=r"missing \[1\]"):
        export_circuit_tracer({0: tc, 2: tc}, tmp_path / "a")
    assert not (tmp_path / "a").exists()  # nothing written for a refused set
    with pytest.raises(ValueError, match="same kind of transcoder"):
        export_circuit_tracer([tc, trained_like(SkipTranscoder, 1)], tmp_path / "b")
    with pytest.raises(ValueError, match="keyed by layer"):
        export_circuit_tracer({"blocks.0": tc}, tmp_path / "c")
    with pytest.raises(ValueError, match="d_model -> d_model"):
        export_circuit_tracer([Transcoder(D, N, output_size=D + 1)], tmp_path / "d")
    with pytest.raises(TypeError, match="transcoders"):
        export_circuit_tracer([torch.nn.Linear(D, D)], tmp_path / "e")
