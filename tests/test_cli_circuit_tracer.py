"""`sae-hooks export --format circuit-tracer`: a run's transcoder set, one per layer,
written as `export_circuit_tracer` writes it; a set with a missing layer is refused."""

from __future__ import annotations

import json

import torch
from test_circuit_tracer_export import trained_like

from sae_hooks.cli import main
from sae_hooks.interop.circuit_tracer import circuit_tracer_tensors, find_transcoder_set
from sae_hooks.sae import Transcoder


def transcoder_run(root, layers):
    """A run directory holding one trained transcoder per layer (layer.L/sae, config.json)."""
    tcs = {}
    for layer in layers:
        home = root / f"layer.{layer}"
        tcs[layer] = trained_like(Transcoder, layer)
        tcs[layer].save(home / "sae")
        config = {"point": f"mlp_in.{layer}", "target_point": f"mlp_out.{layer}"}
        (home / "config.json").write_text(json.dumps(config))
    (root / "resid").mkdir()  # an SAE of another kind is not part of the set
    (root / "resid" / "config.json").write_text(json.dumps({"point": "resid_post.1"}))
    return tcs


def test_export_writes_the_run_transcoder_set(tmp_path, capsys):
    tcs = transcoder_run(tmp_path / "cache" / "ct", range(3))
    args = ["export", "--run", "ct", "--cache", str(tmp_path / "cache")]
    assert main([*args, "--format", "circuit-tracer"]) == 0, capsys.readouterr().err
    out = tmp_path / "cache" / "ct" / "export-circuit-tracer"
    config = (out / "config.yaml").read_text()
    assert 'model_kind: "transcoder_set"' in config
    for layer, tc in tcs.items():
        assert str((out / f"layer_{layer}.safetensors").resolve()) in config
        from safetensors.torch import load_file

        written = load_file(out / f"layer_{layer}.safetensors")
        for key, value in circuit_tracer_tensors(tc).items():
            torch.testing.assert_close(written[key], value)
    # again: the export is rebuilt and swapped in
    assert main([*args, "--format", "circuit-tracer"]) == 0


def test_a_set_with_a_missing_layer_is_one_clear_error(tmp_path, capsys):
    transcoder_run(tmp_path / "cache" / "ct", [0, 2])
    args = ["export", "--run", "ct", "--cache", str(tmp_path / "cache")]
    assert main([*args, "--format", "circuit-tracer"]) != 0
    err = capsys.readouterr().err
    assert "missing [1]" in err and "Traceback" not in err
    assert not (tmp_path / "cache" / "ct" / "export-circuit-tracer").exists()
    assert sorted(find_transcoder_set(tmp_path / "cache" / "ct")) == [0, 2]
