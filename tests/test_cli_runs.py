"""Runs that describe themselves (run.json), run management and the CLI's habits."""

import json
import subprocess
import sys

import pytest

from sae_hooks.cli import main

TRAIN = ["--architecture", "topk", "--k-per-token", "4", "--nb-concepts", "64"]
TRAIN += ["--batch-size", "128", "--steps", "10", "--quiet"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_HOOKS_CACHE", str(tmp_path))
    return tmp_path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def capture(capsys, name="t", *extra):
    argv = ["capture", "--family", "gpt2", "--tiny", "--point", "resid_post.1", "--run", name]
    return run(capsys, *argv, "--max-rows", "1500", "--context-length", "32", "--quiet", *extra)


@pytest.mark.slow
def test_later_commands_need_only_the_run(cache, capsys, tmp_path):
    code, _, err = capture(capsys)
    assert code == 0, err
    record = json.loads((cache / "t/run.json").read_text())
    assert record["model"] == {**record["model"], "family": "gpt2", "tiny": True}
    assert record["tokenizer"] == "pydoc-bpe" and record["points"] == ["resid_post.1"]
    assert record["corpus"]["context_length"] == 32 and record["corpus"]["prepend_bos"]
    assert record["corpus"]["part"].startswith("train")
    assert run(capsys, "train", "--run", "t", *TRAIN)[0] == 0

    # No --family / --tiny / --context-length: they come from run.json.
    code, out, err = run(capsys, "eval", "--run", "t", "--max-batches", "1", "--quiet")
    assert code == 0, err
    assert "held-out part of pydoc" in out
    assert json.loads((cache / "t/eval.json").read_text())["point"] == "resid_post.1"

    pos, neg = tmp_path / "pos.txt", tmp_path / "neg.txt"
    pos.write_text("An exception is raised.\n\nThe exception propagates up.")
    neg.write_text("The cat sat on the mat.\n\nNumbers are added.")
    argv = ["ablate", "--run", "t", "--positive", pos, "--negative", neg, "-m", "2"]
    code, out, err = run(capsys, *argv, "--n-random", "2", "--target", "token: exception")
    assert code == 0, err
    ablation = json.loads((cache / "t/ablation/pos-token-exception.json").read_text())
    assert ablation["target"] == "token: exception"
    code, _, err = run(capsys, *argv, "--n-random", "2", "--select", "attribution", "--keep-dense")
    assert code == 0, err
    ablation = json.loads((cache / "t/ablation/pos.json").read_text())  # named after pos.txt
    assert ablation["select"] == "attribution" and ablation["keep_dense"] is True
    code, _, err = run(capsys, *argv, "--target", "token:not one token at all", "--quiet")
    assert code == 2 and "tokens" in err and "token:ID" in err
    code, _, err = run(capsys, "eval", "--run", "t", "--family", "minilm", "--quiet")
    assert code == 2 and "differs from the run's model gpt2" in err

    code, _, err = run(capsys, "export", "--run", "t", "--format", "saelens")
    assert code == 0, err
    cfg = json.loads((cache / "t/export-saelens/cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert "prepend_bos" in cfg and "context_size" in cfg  # never left to SAELens's defaults
    # The run's identity, truthfully: a random-init model has no name to give.
    assert cfg["model_name"] is None and cfg["metadata"]["model_name"] is None
    assert cfg["context_size"] == 32 and cfg["prepend_bos"] is True
    argv = ["export", "--run", "t", "--format", "neuronpedia", "--n-examples", "2", "--quiet"]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    assert (cache / "t/export-neuronpedia/explanations.jsonl").read_text().count("<<") > 0

    code, out, _ = run(capsys, "inspect", cache / "t")
    assert code == 0 and out.startswith("run directory")
    assert "model: gpt2" in out and "SAE train/: TopKSAE" in out and "1,500 rows" in out

    code, out, err = run(capsys, "report", cache / "t", "--n-latents", "2", "--quiet")
    assert code == 0, err
    text = (cache / "t/report/data/tokens.js").read_text()
    tokens = json.loads(text[text.index("SAE.tokens=") + 11 :].rstrip().rstrip(";"))
    assert tokens and not any(v.startswith("#") for v in tokens.values())  # text, not #ids
    assert any(v.strip().isalpha() and len(v.strip()) >= 3 for v in tokens.values())


@pytest.mark.slow
def test_report_of_bundled_minilm_shows_text(cache, capsys):
    argv = ["capture", "--family", "minilm", "--point", "resid_post.2", "--run", "m"]
    code, _, err = run(capsys, *argv, "--max-rows", "600", "--context-length", "32", "--quiet")
    assert code == 0, err
    assert run(capsys, "train", "--run", "m", *TRAIN)[0] == 0
    code, _, err = run(capsys, "report", cache / "m", "--n-latents", "2")
    assert code == 0, err
    assert '" the"' in (cache / "m/report/data/tokens.js").read_text()


@pytest.mark.slow
def test_overwrite_names_and_refusals(cache, capsys):
    assert capture(capsys)[0] == 0
    code, _, err = capture(capsys, "t", "--dtype", "float16")
    assert code == 2 and "--overwrite" in err and "--run OTHER" in err
    code, out, err = capture(capsys, "t", "--dtype", "float16", "--overwrite")
    assert code == 0, err
    assert "--overwrite: replacing the store" in out

    assert run(capsys, "train", "--run", "t", *TRAIN)[0] == 0
    code, _, err = run(capsys, "train", "--run", "t", *TRAIN, "--nb-concepts", "32")
    assert code == 2 and "--overwrite" in err and "--name OTHER" in err
    code, out, err = run(
        capsys, "train", "--run", "t", *TRAIN, "--nb-concepts", "32", "--name", "small"
    )
    assert code == 0, err
    assert (cache / "t/small/sae").is_dir() and (cache / "t/train/sae").is_dir()
    assert json.loads((cache / "t/small/config.json").read_text())["nb_concepts"] == 32
    code, out, err = run(
        capsys, "train", "--run", "t", *TRAIN, "--nb-concepts", "32", "--overwrite"
    )
    assert code == 0 and "--overwrite: cleared" in out
    assert json.loads((cache / "t/train/config.json").read_text())["nb_concepts"] == 32
    code, out, _ = run(capsys, "inspect", cache / "t")
    assert "SAE small/" in out and "SAE train/" in out
    code, out, err = run(
        capsys, "eval", "--run", "t", "--name", "small", "--max-batches", "1", "--quiet"
    )
    assert code == 0, err
    assert (cache / "t/small/eval.json").is_file()


def test_one_toml_for_every_subcommand(cache, capsys, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        "[model]\nfamily = 'gpt2'\ntiny = true\n[data]\ncontext_length = 32\nbatch_size = 16\n"
        "[capture]\npoint = ['resid_post.0']\nmax_rows = 300\nquiet = true\n"
        "[train]\narchitecture = 'topk'\nk_per_token = 4\nnb_concepts = 64\nbatch_size = 64\n"
        "steps = 4\nquiet = true\nadam_betas = [0.9, 0.99]\n"
        "[eval]\nmax_batches = 1\nquiet = true\n[sweep]\nanything = 1\n"
    )
    code, out, err = run(capsys, "capture", "--run", "c", "--config", toml)
    assert code == 0, err
    assert "300 rows of resid_post.0" in out
    code, _, err = run(capsys, "train", "--run", "c", "--config", toml)
    assert code == 0, err
    config = json.loads((cache / "c/train/config.json").read_text())
    assert config["adam_betas"] == [0.9, 0.99] and config["steps"] == 4
    assert config["batch_size"] == 64  # [data] batch_size is the capture's, not training's
    code, _, err = run(capsys, "eval", "--run", "c", "--config", toml)
    assert code == 0, err


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[capture]\nbatch_size = '32'", "[capture] batch_size: expected int, got '32' (str)"),
        ("[capture]\npoint = 5", "[capture] point: expected str or list of str, got 5 (int)"),
        ("[train]\nstore = 5", "[train] store: expected str, got 5 (int)"),
        ("[train]\nextra = {evil = 1}", "extra: topk SAEs take no argument ['evil']"),
        ("[train]\nsteps = 1.5", "[train] steps: expected int, got 1.5 (float)"),
        ("[model]\nfamily = 'bert'", "[model] family: expected one of"),
        ("[eval]\nnope = 1", "[eval]: unknown key 'nope'"),
        ("[evil]\nx = 1", "unknown tables ['evil']"),
    ],
)
def test_toml_values_are_type_checked(cache, capsys, tmp_path, table, message):
    toml = tmp_path / "run.toml"
    toml.write_text(table + ("\narchitecture = 'topk'" if "extra" in table else "") + "\n")
    code, _, err = run(capsys, "capture", "--family", "gpt2", "--tiny", "--config", toml)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_version_and_python_dash_m(capsys):
    from sae_hooks import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"sae-hooks {__version__}"
    done = subprocess.run(
        [sys.executable, "-m", "sae_hooks", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and __version__ in done.stdout


def test_ctrl_c_and_broken_pipe_are_one_line(cache, capsys, monkeypatch):
    import sae_hooks.store as store

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "capture_to_store", interrupted)
    code, _, err = capture(capsys)
    assert code == 130
    assert err.strip() == (
        "sae-hooks capture: interrupted at 0 rows; rerun the same command to resume"
    )
    shell = f"{sys.executable} -m sae_hooks inspect --family gpt2 --tiny | head -n 1"
    done = subprocess.run(shell, shell=True, capture_output=True, text=True)
    assert done.stdout.strip() == "resid_pre.0" and "Traceback" not in done.stderr


def test_missing_tensorboard_is_named(cache, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else real(n, *a)
    )
    code, _, err = run(capsys, "train", "--run", "x", "--steps", "5", "--tensorboard")
    assert code == 2 and "pip install 'sae-hooks[tensorboard]'" in err
