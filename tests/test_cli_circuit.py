"""`sae-hooks circuit`: a run's SAEs at two points, a concept's examples, the circuit JSON
that `sae-hooks report` then draws; bad input is one line."""

from __future__ import annotations

import json

import pytest
import torch

from sae_hooks.cli import main
from sae_hooks.eval import Circuit
from sae_hooks.sae import TopKSAE


@pytest.mark.slow
def test_circuit_command_writes_the_json_the_report_draws(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAE_HOOKS_CACHE", str(tmp_path))
    common = ("--run", "c", "--quiet")
    capture = ("capture", "--family", "gpt2", "--tiny", "--point", "resid_post.1",
               "--max-rows", "600")  # fmt: skip
    assert main([*capture, *common]) == 0, capsys.readouterr().err
    run = tmp_path / "c"
    for i, point in enumerate(("resid_post.1", "resid_post.2")):
        torch.manual_seed(i)
        TopKSAE(64, 128, top_k=8).save(run / f"l{i + 1}" / "sae")
        (run / f"l{i + 1}" / "config.json").write_text(json.dumps({"point": point}))
    texts = "\n\n".join(["The exception is raised here.", "An exception and its handler."])
    (tmp_path / "pos.txt").write_text(texts)
    args = ["circuit", *common, "--names", "l1,l2", "--positive", str(tmp_path / "pos.txt"),
            "--target", "token:5", "--concept", "exceptions", "--node-threshold", "0"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    found = Circuit.load(run / "circuits" / "exceptions.json")
    assert found.points == ["resid_post.1", "resid_post.2"] and found.concept == "exceptions"
    assert len([n for n in found.nodes if n.latent is not None]) == 16  # 8 per point
    assert found.edges
    # out of forward order: one line, no traceback
    assert main([*args[:5], "l2,l1", *args[6:]]) != 0
    err = capsys.readouterr().err
    assert "forward order" in err and "Traceback" not in err
