"""The CLI says what it does: points added to a run, settings changed, wrong targets."""

from __future__ import annotations

import json

import pytest

from sae_hooks.cli import main
from sae_hooks.store import open_store


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_HOOKS_CACHE", str(tmp_path))
    return tmp_path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


CAPTURE = ["capture", "--run", "t", "--max-rows", "300", "--quiet"]


def test_a_new_point_joins_the_run_from_its_record(cache, capsys):
    """No --family: the run's own model; the store gains the point on the same rows."""
    tiny = ["--family", "gpt2", "--tiny", "--context-length", "32"]
    code, _, err = run(capsys, *CAPTURE, *tiny, "--point", "resid_post.0")
    assert code == 0, err
    code, out, err = run(capsys, *CAPTURE, "--point", "resid_post.1")
    assert code == 0, err
    store = open_store(cache / "t" / "store")
    assert store.points == ["resid_post.0", "resid_post.1"] and store.n_rows == 300
    assert "300 rows of resid_post.0, resid_post.1" in out
    assert json.loads((cache / "t/run.json").read_text())["points"] == store.points


def test_inspect_names_sweeps_and_exports(cache, capsys, tmp_path):
    tiny = ["--family", "gpt2", "--tiny", "--context-length", "32", "--point", "resid_post.1"]
    assert run(capsys, *CAPTURE, "--max-rows", "1000", *tiny)[0] == 0
    train = ["--architecture", "topk", "--k-per-token", "4", "--nb-concepts", "64"]
    train += ["--batch-size", "128", "--steps", "10", "--quiet"]
    assert run(capsys, "train", "--run", "t", *train)[0] == 0
    code, out, err = run(capsys, "eval", "--run", "t", "--max-batches", "1", "--quiet")
    assert code == 0, err
    assert "TopK: the k largest codes of each row" in out and "BatchTopK" not in out
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        "[sweep]\nk_per_token = [2, 4]\n[train]\narchitecture = 'topk'\nnb_concepts = 64\n"
        "batch_size = 128\nsteps = 10\n"
    )
    code, out, err = run(capsys, "sweep", sweep, "--run", "t", "--quiet", "--eval-batches", "1")
    assert code == 0, err
    warned = [line for line in err.splitlines() if "warning:" in line]
    assert all(line.startswith("sae-hooks sweep: warning: SAE ") for line in warned), err
    assert "trainer.py" not in err and "RunWarning" not in err
    code, out, err = run(capsys, "inspect", cache / "t" / "sweep")
    assert code == 0, err
    assert out.startswith("sweep directory") and "topk-n64-k2-s0/: topk" in out
    for fmt, kind in [("saelens", "SAELens export"), ("hf", "Hugging Face layout export")]:
        assert run(capsys, "export", "--run", "t", "--format", fmt, "--out", tmp_path / fmt)[0] == 0
        code, out, err = run(capsys, "inspect", tmp_path / fmt)
        assert code == 0 and out.startswith(kind), err


def test_run_warnings_name_their_sae():
    from sae_hooks.train.diagnostics import RunWarning, warn_all

    with pytest.warns(RunWarning, match=r"^SAE sweep/k2: 20% of the latents are dead"):
        warn_all(["20% of the latents are dead"], about="sweep/k2")


TRAIN = ["--architecture", "topk", "--k-per-token", "4", "--nb-concepts", "64"]
TRAIN += ["--batch-size", "128", "--quiet"]


def test_changed_steps_say_what_differs_and_what_to_do(cache, capsys, tmp_path):
    tiny = ["--family", "gpt2", "--tiny", "--context-length", "32", "--point", "resid_post.1"]
    assert run(capsys, *CAPTURE, *tiny)[0] == 0
    assert run(capsys, "train", "--run", "t", *TRAIN, "--steps", "4")[0] == 0
    code, _, err = run(capsys, "train", "--run", "t", *TRAIN, "--steps", "2")
    assert code == 2
    assert "steps: 4 in the checkpoint, 2 now" in err and "damaged" not in err
    assert "--overwrite" in err and "--name OTHER" in err


def test_a_token_target_on_an_encoder_names_what_is_valid(cache, capsys, tmp_path):
    tiny = ["--family", "minilm", "--tiny", "--context-length", "16", "--point", "resid_post.0"]
    assert run(capsys, *CAPTURE, *tiny)[0] == 0
    assert run(capsys, "train", "--run", "t", *TRAIN, "--steps", "2")[0] == 0
    pos, neg = tmp_path / "pos.txt", tmp_path / "neg.txt"
    pos.write_text("An exception is raised.\n\nThe exception propagates up.")
    neg.write_text("The cat sat on the mat.\n\nNumbers are added.")
    argv = ["ablate", "--run", "t", "--positive", pos, "--negative", neg, "--target", "token:5"]
    code, _, err = run(capsys, *argv, "--quiet")
    assert code == 2
    assert "no language-model head" in err and "valid targets for it: similarity" in err
    assert "vocabulary has" not in err


def test_trust_remote_code_is_carried_from_the_capture(cache, capsys, tmp_path, tokenizer_dir):
    """--trust-remote-code, given at capture, is recorded; eval / export / report reuse it."""
    from test_cli_hub_models import save_tiny

    from sae_hooks.cli import build_parser
    from sae_hooks.cli.common import run_dir, use_record

    save_tiny("gpt2", tmp_path / "gpt2", tokenizer_dir)
    model = ["--model", tmp_path / "gpt2", "--context-length", "32", "--point", "resid_post.0"]
    code, _, err = run(capsys, *CAPTURE, *model, "--trust-remote-code")
    assert code == 0, err
    assert json.loads((cache / "t/run.json").read_text())["model"]["trust_remote_code"] is True
    for command in ("eval", "ablate"):
        args = build_parser().parse_args([command, "--run", "t"])
        assert args.trust_remote_code is False
        use_record(args, run_dir(args).root)
        assert args.trust_remote_code is True
    code, _, err = run(capsys, *CAPTURE, "--run", "u", *model)
    args = build_parser().parse_args(["eval", "--run", "u"])
    use_record(args, run_dir(args).root)
    assert code == 0 and args.trust_remote_code is False, err


def test_each_architecture_says_its_own_selection():
    from sae_hooks.eval import ReconstructionResult
    from sae_hooks.sae import SAE_REGISTRY

    names = {"relu": "ReLU", "topk": "TopK", "batchtopk": "BatchTopK", "jumprelu": "JumpReLU"}
    for arch, word in names.items():
        line = ReconstructionResult("resid_post.1", "lm").summary(SAE_REGISTRY[arch].selection)
        assert f"(eval mode; {word}: " in line
        assert [w for w in names.values() if f" {w}:" in line] == [word]
    assert "(eval mode)" in ReconstructionResult("resid_post.1", "lm").summary()
