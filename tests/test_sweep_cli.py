"""`sae-hooks sweep CONFIG.toml`, evaluate_sweep and the frontier of `sae-hooks report`."""

from __future__ import annotations

import json
import re

import pytest

from sae_hooks.cli import main
from sae_hooks.data import text_batches
from sae_hooks.store import capture_to_store

POINTS = ["resid_post.0", "resid_post.1"]

CONFIG = """
[model]
family = "gpt2"
[data]
source = "pydoc"
[capture]
point = ["resid_post.0", "resid_post.1"]

[sweep]
point = ["resid_post.0", "resid_post.1"]
nb_concepts = [64, 128]
k_per_token = [4]
seed = [0]

[train]
batch_size = 64
steps = 6
log_every = 3
val_every = 0
checkpoint_every = 0
init_rows = 128
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_gpt2, tokenizer, texts):
    path = tmp_path_factory.mktemp("sweep-cli") / "store"
    data = text_batches(texts[:24], tokenizer, context_length=32, batch_size=4)
    capture_to_store(tiny_gpt2, POINTS, data, path, progress=False)
    return path


def test_sweep_trains_the_grid_and_report_draws_the_frontier(
    store, tmp_path, tiny_gpt2, tokenizer, texts
):
    from sae_hooks.eval import evaluate_sweep
    from sae_hooks.report.frontier import sweep_rows

    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    out = tmp_path / "sweep"
    assert main(["sweep", str(config), "--store", str(store), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "sweep.json").read_text())
    names = [s["name"] for s in summary["saes"]]
    assert names == [f"{p}-batchtopk-n{n}-k4-s0" for p in POINTS for n in (64, 128)]
    assert summary["store"] == str(store.resolve())
    for s in summary["saes"]:
        assert (out / s["name"] / "sae").is_dir() and s["metrics"]["step"] == 6

    held_out = text_batches(texts[40:56], tokenizer, context_length=32, batch_size=4)
    results = evaluate_sweep(tiny_gpt2, out, held_out, progress=False)
    assert set(results) == set(names)
    rows = sweep_rows(out)
    assert all(r["measured"] == "eval" and r["kl"] is not None for r in rows)
    assert [r["fvu"] for r in rows] == [round(results[n].fvu, 5) for n in names]

    assert main(["report", str(out), "--sae", names[1], "--n-latents", "4"]) == 0
    report = out / "report"
    html = (report / "index.html").read_text()
    assert all(name in html for name in names)  # the table: one row per SAE
    assert (report / "sweep.png").stat().st_size > 0
    assert (report / "sweep.md").read_text().count("\n") == 2 + len(names)


@pytest.mark.parametrize(
    "table, message",
    [
        ("[train]\nsteps = 2\n", "has no \\[sweep\\] table"),
        ("[sweep]\nseed = 0\n", "must be lists"),
        ("[sweep]\nwidth = [1]\n", "unknown axes \\['width'\\]"),
        ("[sweep]\nseed = [0]\n[train]\nsteps = 2\nbogus = 1\n", "unknown keys \\['bogus'\\]"),
    ],
)
def test_bad_sweep_configs_are_refused(table, message, tmp_path, capsys, store):
    config = tmp_path / "bad.toml"
    config.write_text(table)
    assert main(["sweep", str(config), "--store", str(store), "--out", str(tmp_path / "o")]) == 2

    assert re.search(message, capsys.readouterr().err)


@pytest.mark.slow
def test_sweep_of_a_cli_run_evaluates_on_its_held_out_documents(tmp_path, monkeypatch, capsys):
    """A sweep over a CLI run's store takes the model from the run's run.json and evaluates
    every SAE on the held-out tenth of its corpus, with no --family."""
    monkeypatch.setenv("SAE_HOOKS_CACHE", str(tmp_path / "cache"))
    capture = ["capture", "--family", "gpt2", "--tiny", "--point", "resid_post.1", "--run", "r"]
    assert main([*capture, "--max-rows", "2000", "--quiet"]) == 0
    config = tmp_path / "sweep.toml"
    config.write_text(
        "[sweep]\nnb_concepts = [32, 64]\n[train]\nk_per_token = 4\nbatch_size = 64\n"
        "steps = 3\nval_every = 0\ncheckpoint_every = 0\ninit_rows = 128\n"
    )
    capsys.readouterr()
    assert main(["sweep", str(config), "--run", "r", "--quiet", "--eval-batches", "2"]) == 0
    printed = capsys.readouterr().out
    sweep = tmp_path / "cache" / "r" / "sweep"
    for n in (32, 64):
        name = f"resid_post.1-batchtopk-n{n}-k4-s0"
        assert re.search(rf"{re.escape(name)}: FVU \d", printed)
        assert (sweep / name / "eval.json").is_file()


def test_a_sweep_over_seeds_reports_the_seed_noise(store, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(
        CONFIG.replace(
            'point = ["resid_post.0", "resid_post.1"]\nnb', 'point = ["resid_post.1"]\nnb'
        )
        .replace("nb_concepts = [64, 128]", "nb_concepts = [64]")
        .replace("seed = [0]", "seed = [0, 1, 2]")
    )
    out = tmp_path / "sweep"
    assert main(["sweep", str(config), "--store", str(store), "--out", str(out), "--quiet"]) == 0
    reports = json.loads((out / "seed_report.json").read_text())
    assert list(reports) == ["resid_post.1-batchtopk-n64-k4"]
    report = reports["resid_post.1-batchtopk-n64-k4"]
    assert report["seeds"] == 3 and report["runs"][-1].endswith("-s2")
    fvu = report["metrics"]["val/fvu"]
    assert fvu["n"] == 3 and fvu["std"] > 0  # three different inits, three FVUs
    rep = report["decoder_reproducibility"]
    assert 0 < rep["null"]["mean"] < rep["matched_max_cosine"]["mean"] <= 1
    printed = capsys.readouterr().out
    assert "val/fvu" in printed and "random-dictionary null" in printed
