"""Dashboards of real runs: a recipe's ViT pages show images, a CLI-built GPT-2 report shows
the tokens each latent promotes, every ablated concept is listed by name (issue 34)."""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path

import pytest
import torch

from sae_hooks.cli import main

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SMALL = ["--tiny", "--quiet", "--max-rows", "2000", "--total-tokens", "2560", "--eval-batches", "2"]


def latent_data(report: Path) -> dict[str, dict]:
    """Every latent's data from the built site's data/latents/*.js."""
    out = {}
    for path in sorted((report / "data" / "latents").glob("*.js")):
        out |= json.loads(path.read_text().split(",", 1)[1].rstrip().rstrip(";")[:-1])
    return out


@pytest.mark.slow
def test_vit_recipe_dashboard_draws_patches_over_images(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runpy.run_path(str(RECIPES / "vit_base.py"), run_name="recipe")["main"](
            [*SMALL, "--cache", str(tmp_path)]
        )
    finally:
        torch.set_num_threads(threads)
    report = tmp_path / "vit_base_tiny" / "report"
    shown = {ex["img"] for data in latent_data(report).values() for ex in data.get("ex", [])}
    assert len(shown) >= 12  # thumbnails under the patch grids, not patches on grey
    assert all((report / img).stat().st_size > 0 for img in shown)
    assert all(re.fullmatch(r"thumbs/\d+\.png", img) for img in shown)


def cli(capsys, *argv) -> None:
    """One `sae-hooks` command that must succeed."""
    code = main([str(a) for a in argv])
    assert code == 0, capsys.readouterr().err


@pytest.mark.slow
def test_cli_report_of_gpt2_shows_promoted_tokens_and_every_concept(capsys, tmp_path, monkeypatch):
    cache = tmp_path
    monkeypatch.setenv("SAE_HOOKS_CACHE", str(cache))
    cli(capsys, "capture", "--family", "gpt2", "--tiny", "--point", "resid_post.1", "--run", "t",
        "--max-rows", "1500", "--context-length", "32", "--quiet")  # fmt: skip
    cli(capsys, "train", "--run", "t", "--architecture", "topk", "--k-per-token", "4",
        "--nb-concepts", "64", "--batch-size", "128", "--steps", "10", "--quiet")  # fmt: skip
    pos, neg = tmp_path / "exceptions.txt", tmp_path / "neg.txt"
    pos.write_text("An exception is raised.\n\nThe exception propagates up.")
    neg.write_text("The cat sat on the mat.\n\nNumbers are added.")
    ablate = ["ablate", "--run", "t", "--positive", pos, "--negative", neg, "-m", "2"]
    cli(capsys, *ablate, "--n-random", "2", "--quiet")  # named after its examples
    cli(capsys, *ablate, "--n-random", "2", "--concept", "errors", "--quiet")
    old = json.loads((cache / "t" / "ablation" / "errors.json").read_text())
    (cache / "t" / "ablation.json").write_text(json.dumps({**old, "concept": None}))
    assert sorted(p.name for p in (cache / "t" / "ablation").iterdir()) == [
        "errors.json",
        "exceptions.json",
    ]

    cli(capsys, "report", cache / "t", "--n-latents", "8", "--quiet")
    report = cache / "t" / "report"
    data = latent_data(report)
    with_tokens = [d for d in data.values() if "up" in d]
    assert len(with_tokens) >= 8  # the run's GPT-2 unembedding (run.json), for the latents shown
    assert all(len(d["up"]) == len(d["down"]) == 8 for d in with_tokens)
    tokens = json.loads(
        (report / "data" / "tokens.js").read_text().split("SAE.tokens=", 1)[1].rstrip()[:-1]
    )
    assert str(with_tokens[0]["up"][0][0]) in tokens  # shown as text, not as an id
    index = (report / "index.html").read_text()
    listed = re.findall(r"concept <b>([^<]*)</b>", index)
    assert listed == ["similarity", "errors", "exceptions"]  # the old file: by its target
    assert "unnamed" not in index and "unnamed" not in (report / "ablation.html").read_text()


def test_a_model_that_does_not_load_costs_only_the_promoted_tokens(tmp_path):
    """The report goes on without the unembedding, warning why in one warning (which the
    CLI prints as `sae-hooks report: warning: ...`), not a bare print."""
    import argparse

    from sae_hooks.cli.report import unembedding

    args = argparse.Namespace(
        model=str(tmp_path / "no-such-model"), family=None, run_dir=str(tmp_path),
        revision=None, dtype=None, device="cpu", trust_remote_code=False, backend=None,
    )  # fmt: skip
    with pytest.warns(UserWarning, match="no promoted / suppressed tokens: the model did not"):
        assert unembedding(args, None) is None
