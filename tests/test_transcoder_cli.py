"""A transcoder through the `sae-hooks` CLI: capture both MLP points into one store,
train with --target-point, evaluate with the MLP replaced, build the dashboard."""

import json

import pytest

from sae_hooks.cli import main


@pytest.mark.slow
def test_capture_train_eval_report_a_transcoder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAE_HOOKS_CACHE", str(tmp_path))
    common = ("--family", "gpt2", "--tiny", "--run", "tc", "--quiet")
    capture = ("capture", "--point", "mlp_in.1", "--point", "mlp_out.1", "--max-rows", "2000")
    assert main([*capture, *common]) == 0, capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "--run",
                "tc",
                "--quiet",
                "--architecture",
                "transcoder",
                "--point",
                "mlp_in.1",
                "--target-point",
                "mlp_out.1",
                "--nb-concepts",
                "128",
                "--batch-size",
                "128",
                "--steps",
                "20",
                "--log-every",
                "10",
            ]
        )
        == 0
    ), capsys.readouterr().err
    config = json.loads((tmp_path / "tc/train/config.json").read_text())
    assert (config["architecture"], config["point"], config["target_point"]) == (
        "transcoder",
        "mlp_in.1",
        "mlp_out.1",
    )

    assert main(["eval", *common, "--max-batches", "2"]) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "tc/eval.json").read_text())
    assert result["point"] == "mlp_in.1->mlp_out.1" and result["l0"] > 0
    assert {"loss_recovered", "kl_clean_spliced"} <= set(result["downstream"])

    assert main(["report", str(tmp_path / "tc"), "--n-latents", "4"]) == 0
    page = (tmp_path / "tc/report/index.html").read_text()
    assert "transcoder" in page and "mlp_in.1" in page
