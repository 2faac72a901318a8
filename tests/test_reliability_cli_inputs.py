"""Bad input at the command line (train, eval, ablate, report, inspect): exit 2, one line.

Every case runs `sae_hooks.cli.main` in-process and checks the exit code 2, one
`sae-hooks COMMAND: error: ...` line holding a phrase that names the problem, and
no traceback. The run `r` holds a small store (GPT-2 tiny's resid_post.0 width),
an SAE trained on it and its train/config.json, so eval and ablate reach their
checks without training anything.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import socket
import time
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_hooks.cli import main
from sae_hooks.sae import TopKSAE
from sae_hooks.store import StoreWriter

POINT, D = "resid_post.0", 64


def make_run(cache) -> None:
    """cache/r: a store captured (nominally) from tiny GPT-2, an SAE and its training config."""
    n = 512
    batch = SimpleNamespace(
        acts={POINT: torch.randn(n, D, generator=torch.Generator().manual_seed(0))},
        token_ids=torch.arange(n),
        doc_index=torch.zeros(n, dtype=torch.long),
        position=torch.arange(n),
    )
    with StoreWriter(
        cache / "r" / "store", points=[POINT], d_model=D, model="GPT2LMHeadModel"
    ) as w:
        w.append(batch)
    torch.manual_seed(0)
    TopKSAE(D, 128, top_k=4).save(cache / "r" / "train" / "sae")
    (cache / "r" / "train" / "config.json").write_text(json.dumps({"point": POINT}))
    (cache / "pos.txt").write_text("An exception is raised.\n\nThe exception propagates.")
    (cache / "neg.txt").write_text("The cat sat on the mat.\n\nNumbers are added.")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_HOOKS_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    make_run(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained by the CLI to the end, with a checkpoint (copied per case)."""
    cache = tmp_path_factory.mktemp("trained")
    make_run(cache)
    code = main(["train", "--run", "r", "--cache", str(cache), *TRAIN, "--quiet"])
    assert code == 0
    return cache


TRAIN = ["--architecture", "topk", "--nb-concepts", "128", "--k-per-token", "2"]
TRAIN += ["--batch-size", "32", "--steps", "4", "--log-every", "2"]


def run_cli(capsys, argv) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own refusals
        code = exit.code
    return code, capsys.readouterr().err


def assert_one_clear_line(capsys, argv, message) -> str:
    code, err = run_cli(capsys, argv)
    assert code == 2, err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"sae-hooks {argv[0]}: error: "), err
    assert message in line, line
    return line


def no_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# ------------------------------------------------------------------ train: flags and config files

TRAIN_FLAG_CASES = {
    "architecture": (["--architecture", "gated"], "architecture must be one of"),
    "steps-0": (["--steps", "0"], "steps must be an int >= 1 or None, got 0"),
    "batch-size-0": (["--steps", "2", "--batch-size", "0"], "batch_size must be an int >= 1"),
    "lr-negative": (["--steps", "2", "--lr", "-1"], "lr must be a number in (0"),
    "lr-nan": (["--steps", "2", "--lr", "nan"], "lr must be a number"),
    "device-gpu": ([*TRAIN, "--device", "gpu"], "'gpu' is not a torch device"),
    "kernel": (["--steps", "2", "--architecture", "jumprelu", "--kernel", "x"], "kernel must be"),
    "k-for-relu": (["--steps", "2", "--architecture", "relu", "--k-per-token", "4"], "apply to"),
    "target-l0-for-topk": (
        ["--steps", "2", "--architecture", "topk", "--target-l0", "5"],
        "target_l0 applies to",
    ),
    "nb-concepts-0": (["--steps", "2", "--nb-concepts", "0"], "nb_concepts must be an int >= 1"),
    "steps-and-tokens": (["--steps", "2", "--total-tokens", "100"], "disagree at batch_size"),
    "unknown-point": ([*TRAIN, "--point", "nope"], "'nope' is not in the store"),
    "checkpoint-every-negative": (["--steps", "2", "--checkpoint-every", "-1"], "checkpoint_every"),
    "no-run-length": ([], "give the run length"),
    "top-k-too-big": ([*TRAIN[:4], "--top-k", "9999", *TRAIN[6:]], "top_k=9999 must keep"),
}


@pytest.mark.parametrize("case", list(TRAIN_FLAG_CASES))
def test_train_flags(case, cache, capsys):
    flags, message = TRAIN_FLAG_CASES[case]
    assert_one_clear_line(capsys, ["train", "--run", "r", *flags, "--quiet"], message)


TOML_CASES = {
    "store-int": ("store = 5", "store must be a str (like --store), got 5"),
    "point-int": ("point = 5", "point must be a non-empty hook-point name or None, got 5"),
    "quiet-str": ('quiet = "yes"', "quiet must be a bool"),
    "extra-evil": ("extra = {evil = 1}", "extra has ['evil'], which TopKSAE"),
    "extra-top-k": ("extra = {top_k = 3}", "extra sets ['top_k']"),
    "extra-not-table": ('extra = "x"', "extra must be a dict"),
    "compile-str": ('compile = "yes"', "compile must be a bool, got 'yes'"),
    "batch-size-str": ('batch_size = "32"', "batch_size must be an int >= 1, got '32'"),
    "nb-concepts-float": ("nb_concepts = 1e12", "nb_concepts must be an int >= 1"),
    "adam-betas-str": ('adam_betas = "x"', "adam_betas must be two floats"),
    "adam-betas-three": ("adam_betas = [0.9, 0.99, 0.5]", "adam_betas must be two floats"),
    "dtype": ('dtype = "int8"', "dtype must be one of"),
    "b-dec-init": ('b_dec_init = "median"', "b_dec_init must be one of"),
    "device-cuda": ('device = "cuda"', "'cuda' is not available"),
    "warmup-fraction": ("warmup_fraction = 2.0", "warmup_fraction must be a number in"),
    "unknown-key": ("evil = 1", "unknown keys ['evil']"),
}


@pytest.mark.parametrize("case", list(TOML_CASES))
def test_train_config_file_values(case, cache, capsys, monkeypatch):
    line, message = TOML_CASES[case]
    no_cuda(monkeypatch)
    table = {"architecture": "'topk'", "nb_concepts": "128", "k_per_token": "2"}
    table.update(batch_size="32", steps="4")
    key, value = (part.strip() for part in line.split("=", 1))
    table[key] = value  # the bad value replaces a good one, or joins them
    toml = cache / "run.toml"
    toml.write_text("[train]\n" + "".join(f"{k} = {v}\n" for k, v in table.items()))
    assert_one_clear_line(capsys, ["train", "--run", "r", "--config", str(toml)], message)


def test_train_device_cuda_without_cuda(cache, capsys, monkeypatch):
    no_cuda(monkeypatch)
    argv = ["train", "--run", "r", *TRAIN, "--device", "cuda", "--quiet"]
    assert_one_clear_line(capsys, argv, "'cuda' is not available: this torch")


def test_train_into_a_run_directory_another_process_holds(cache, capsys):
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "since": time.time()}
    (cache / "r" / "train" / ".lock").write_text(json.dumps({"writer": holder}))
    argv = ["train", "--run", "r", *TRAIN, "--quiet"]
    assert_one_clear_line(capsys, argv, f"is being written by pid {os.getppid()}")


def trained_copy(trained, cache) -> None:
    shutil.rmtree(cache / "r")
    shutil.copytree(trained / "r", cache / "r")


def damage_state(edit):
    def damage(ckpt):
        state = json.loads((ckpt / "state.json").read_text())
        edit(state)
        (ckpt / "state.json").write_text(json.dumps(state))

    return damage


CHECKPOINT_CASES = {
    "state-garbled": (lambda c: (c / "state.json").write_text("{"), "state.json is not valid JSON"),
    "state-step-beyond": (
        damage_state(lambda s: s.update(step=99)),
        "is at step 99, outside this run's 0..4 steps",
    ),
    "sae-pickle": (
        lambda c: (c / "sae.safetensors").write_bytes(pickle.dumps(1)),
        "sae.safetensors is not a safetensors file (it looks like a pickle)",
    ),
    "optimizer-truncated": (
        lambda c: (c / "optimizer.safetensors").write_bytes(b"\x10"),
        "optimizer.safetensors is not a readable safetensors file",
    ),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_train_resume_from_a_damaged_checkpoint(case, trained, cache, capsys):
    trained_copy(trained, cache)
    damage, message = CHECKPOINT_CASES[case]
    damage(cache / "r" / "train" / "checkpoint")
    assert_one_clear_line(capsys, ["train", "--run", "r", *TRAIN, "--quiet"], message)


# ------------------------------------------------------------------ SAE files given to eval / inspect


def damage_weights(edit):
    def damage(sae_dir):
        tensors = load_file(sae_dir / "model.safetensors")
        edit(tensors)
        save_file(tensors, str(sae_dir / "model.safetensors"), {"format": "pt"})

    return damage


def nan_first(name):
    def edit(tensors):
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = math.nan

    return edit


def set_config(**values):
    def damage(sae_dir):
        config = json.loads((sae_dir / "config.json").read_text())
        config.update(values)
        (sae_dir / "config.json").write_text(json.dumps(config))

    return damage


SAE_CASES = {
    "pickle": (
        lambda s: (s / "model.safetensors").write_bytes(pickle.dumps(1)),
        "is not a safetensors file (it looks like a pickle)",
    ),
    "int32": (
        damage_weights(lambda t: t.update({"dictionary.weight": t["dictionary.weight"].int()})),
        "SAE weights must be floating point",
    ),
    "nan": (damage_weights(nan_first("encoder.weight")), "NaN or infinite values in encoder"),
    "nb-concepts-1e12": (set_config(nb_concepts=10**12), "[1000000000000, 64] by the config"),
    "config-garbled": (lambda s: (s / "config.json").write_text("{x"), "is not valid JSON"),
}


@pytest.mark.parametrize("command", ["eval", "inspect"])
@pytest.mark.parametrize("case", list(SAE_CASES))
def test_a_bad_sae_directory(case, command, cache, capsys):
    damage, message = SAE_CASES[case]
    sae_dir = cache / "r" / "train" / "sae"
    damage(sae_dir)
    argv = ["inspect", str(sae_dir)]
    if command == "eval":
        argv = ["eval", "--family", "gpt2", "--tiny", "--run", "r", "--quiet"]
    assert_one_clear_line(capsys, argv, message)


EVAL = ["--family", "gpt2", "--tiny", "--run", "r", "--quiet"]
ABLATE = [*EVAL, "--positive", "pos.txt", "--negative", "neg.txt"]

MODEL_CASES = {
    "eval-point": (["eval", *EVAL, "--point", "resid_post.1"], "differs from 'resid_post.0'"),
    "eval-family": (
        ["eval", "--family", "minilm", "--tiny", "--run", "r", "--quiet"],
        "trained on activations of 'GPT2LMHeadModel'",
    ),
    "eval-sae-missing": (["eval", *EVAL, "--sae", "/no/such"], "no SAE at /no/such"),
    "eval-sae-pickle-file": (
        ["eval", *EVAL, "--sae", "w.pt"],
        "is a file (it looks like a pickle)",
    ),
    "eval-train-config-garbled": (["eval", *EVAL], "not a JSON object"),
    "ablate-token-out-of-vocab": (
        ["ablate", *ABLATE, "--target", "token:99999"],
        "token 99999 is outside the model's vocabulary of 512 tokens (0..511)",
    ),
    "ablate-target-unknown": (["ablate", *ABLATE, "--target", "logit:3"], "is not valid"),
    "ablate-target-token-word": (["ablate", *ABLATE, "--target", "token:the"], "is not valid"),
    "ablate-point": (["ablate", *ABLATE, "--point", "resid_post.2"], "differs from"),
    "ablate-family": (
        ["ablate", *ABLATE[:1], "minilm", *ABLATE[2:]],
        "trained on activations of 'GPT2LMHeadModel'",
    ),
    "ablate-images": (["ablate", "--family", "vit", *ABLATE[2:]], "takes texts"),
    "ablate-missing-examples": (["ablate", *EVAL, "--positive", "pos.txt"], "--negative"),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_eval_and_ablate_refuse_what_the_sae_was_not_trained_on(case, cache, capsys):
    argv, message = MODEL_CASES[case]
    (cache / "w.pt").write_bytes(pickle.dumps(1))
    if case == "eval-train-config-garbled":
        (cache / "r" / "train" / "config.json").write_text("[1]")
    assert_one_clear_line(capsys, argv, message)


@pytest.mark.parametrize("command", ["eval", "ablate", "capture", "inspect"])
def test_device_cuda_without_cuda(command, cache, capsys, monkeypatch):
    no_cuda(monkeypatch)
    argv = {
        "eval": ["eval", *EVAL],
        "ablate": ["ablate", *ABLATE],
        "capture": ["capture", "--family", "gpt2", "--tiny", "--point", POINT, "--quiet"],
        "inspect": ["inspect", "--family", "gpt2", "--tiny"],
    }[command]
    assert_one_clear_line(capsys, [*argv, "--device", "cuda"], "'cuda' is not available")


# ------------------------------------------------------------------ report


REPORT_CASES = {
    "garbled": ("{not json", "is not valid JSON"),
    "not-utf8": (b"\xff\xfe", "is not valid JSON"),
    "a-list": ("[1, 2]", "must hold a JSON object"),
    "missing": (None, "no such file"),
}


@pytest.mark.parametrize("case", list(REPORT_CASES))
def test_report_ablation_file(case, cache, capsys):
    content, message = REPORT_CASES[case]
    path = cache / "ablation-in.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    argv = ["report", str(cache / "r"), "--ablation", str(path)]
    assert str(path) in assert_one_clear_line(capsys, argv, message)  # the file is named
