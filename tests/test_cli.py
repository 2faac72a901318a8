"""The `sae-hooks` CLI end to end on a tiny model, its config files, and its errors."""

import json

import pytest

from sae_hooks.cli import main


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_HOOKS_CACHE", str(tmp_path))
    return tmp_path


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_capture_train_eval_ablate_inspect(cache, capsys, tmp_path):
    code, out, err = run(
        capsys,
        "capture",
        "--family",
        "gpt2",
        "--tiny",
        "--point",
        "resid_post.1",
        "--run",
        "t",
        "--max-rows",
        "3000",
        "--quiet",
    )
    assert code == 0, err
    assert "3,000 rows" in out
    toml = tmp_path / "run.toml"
    toml.write_text(
        "[train]\narchitecture = 'topk'\nk_per_token = 4\nnb_concepts = 128\n"
        "batch_size = 128\nsteps = 30\nlog_every = 10\n"
    )
    code, out, err = run(
        capsys, "train", "--run", "t", "--config", str(toml), "--steps", "20", "--quiet"
    )
    assert code == 0, err
    config = json.loads((cache / "t/train/config.json").read_text())
    assert config["architecture"] == "topk" and config["variant"]["top_k"] == 4
    assert config["steps"] == 20  # the flag beats the file
    assert config["point"] == "resid_post.1"

    code, out, err = run(
        capsys, "eval", "--family", "gpt2", "--tiny", "--run", "t", "--max-batches", "2", "--quiet"
    )
    assert code == 0, err
    result = json.loads((cache / "t/eval.json").read_text())
    assert result["point"] == "resid_post.1" and 3.9 < result["l0"] <= 4.0
    assert {"loss_recovered", "kl_clean_spliced", "ce_clean"} <= set(result["downstream"])

    pos, neg = tmp_path / "pos.txt", tmp_path / "neg.txt"
    pos.write_text("An exception is raised.\n\nThe exception propagates up.")
    neg.write_text("The cat sat on the mat.\n\nNumbers are added.")
    code, out, err = run(
        capsys,
        "ablate",
        "--family",
        "gpt2",
        "--tiny",
        "--run",
        "t",
        "--positive",
        str(pos),
        "--negative",
        str(neg),
        "--target",
        "token:5",
        "-m",
        "2",
        "--n-random",
        "2",
    )
    assert code == 0, err
    assert "ablate top 2 concept latents" in out
    ablation = json.loads((cache / "t/ablation/pos-token-5.json").read_text())  # pos.txt, token:5
    assert len(ablation["latents"]) == 2 and ablation["concept"] == "pos token:5"

    code, out, _ = run(capsys, "inspect", str(cache / "t/store"))
    assert code == 0 and "3,000 rows" in out and "resid_post.1: d_model 64" in out
    code, out, _ = run(capsys, "inspect", str(cache / "t/train/sae"))
    assert code == 0 and "TopKSAE" in out

    # `report` on the run directory finds its store and its ablation by itself.
    code, out, err = run(capsys, "report", str(cache / "t"), "--n-latents", "4")
    assert code == 0, err
    page = (cache / "t/report/index.html").read_text()
    assert "Concept ablations" in page and (cache / "t/report/training.png").is_file()


def test_inspect_lists_hook_points(capsys):
    code, out, _ = run(capsys, "inspect", "--family", "gpt2", "--tiny")
    assert code == 0 and "resid_post.3" in out.split()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--run", "nothing-here", "--steps", "5"], "no activation store"),
        (["train", "--run", "x"], "give the run length"),
        (["train", "--run", "../escape"], "plain directory name"),
        (["train", "--run", "x", "--architecture", "nope"], "architecture must be one of"),
        (["capture", "--family", "gpt2", "--tiny", "--run", "x"], "--point is required"),
        (["capture", "--tiny", "--point", "resid_post.0", "--run", "x"], "--model is required"),
        (
            ["capture", "--family", "gpt2", "--tiny", "--point", "resid_post.9", "--run", "x"],
            "resid_post.0..3",
        ),
        (
            [
                "capture",
                "--family",
                "gpt2",
                "--model-dir",
                "/nonexistent",
                "--point",
                "resid_post.0",
            ],
            "save_pretrained",
        ),
        (
            [
                "capture",
                "--family",
                "gpt2",
                "--tiny",
                "--point",
                "resid_post.0",
                "--data",
                "/no/such",
            ],
            "no text data",
        ),
        (["ablate", "--family", "gpt2", "--tiny", "--run", "x"], "--positive and --negative"),
        (["inspect"], "give a PATH"),
    ],
)
def test_bad_input_is_one_clear_line(cache, capsys, argv, message):
    code, _, err = run(capsys, *argv)
    error = err[err.index(f"sae-hooks {argv[0]}: error: ") :]  # after any progress bars
    assert code == 2
    assert message in error and "Traceback" not in error


def test_config_file_errors(cache, capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nnot_a_field = 3\n")
    code, _, err = run(capsys, "train", "--run", "x", "--config", str(bad))
    assert code == 2 and "not_a_field" in err and "valid keys" in err
    bad.write_text("[nonsense]\na = 1\n")
    code, _, err = run(capsys, "train", "--run", "x", "--config", str(bad))
    assert code == 2 and "unknown tables" in err
    bad.write_text("[train\n")
    code, _, err = run(capsys, "train", "--run", "x", "--config", str(bad))
    assert code == 2 and "not valid TOML" in err
