"""The offline default recipe end to end: tiny random-init, and the real MiniLM weights."""

import json
import runpy
from pathlib import Path

import pytest

RECIPE = Path(__file__).parents[1] / "recipes" / "minilm_pydoc.py"


@pytest.fixture(scope="module")
def recipe():
    return runpy.run_path(str(RECIPE), run_name="recipe")


def test_tiny_run_writes_every_artifact(recipe, tmp_path, capsys):
    recipe["main"](
        [
            "--tiny",
            "--cache",
            str(tmp_path),
            "--quiet",
            "--no-report",
            "--total-tokens",
            "4096",
            "--eval-batches",
            "2",
        ]
    )
    out = capsys.readouterr().out
    run = tmp_path / "minilm_pydoc_tiny"
    result = json.loads((run / "eval.json").read_text())
    assert result["kind"] == "encoder" and result["point"] == "resid_post.3"
    assert {"cosine", "cosine_zero_ablated", "cosine_recovered"} <= set(result["downstream"])
    assert 0 < result["l0"] <= 8.0 + 1e-6
    ablation = json.loads((run / "ablation.json").read_text())
    assert (run / "ablation.png").stat().st_size > 1000
    assert ablation["concept"] == "exceptions" and len(ablation["latents"]) == 8
    for label in (
        "rows captured",
        "FVU",
        "L0",
        "dead latents",
        "embedding cosine recovered",
        "ablate top 8 concept latents",
    ):
        assert label in out
    assert (run / "summary.txt").read_text().strip() in out


@pytest.mark.slow
def test_real_minilm_short_run(recipe, tmp_path, capsys):
    """The real weights: a short run must still reconstruct the embedding well."""
    recipe["main"](
        [
            "--cache",
            str(tmp_path),
            "--quiet",
            "--no-report",
            "--max-rows",
            "6000",
            "--total-tokens",
            "16384",
            "--batch-size",
            "512",
            "--nb-concepts",
            "768",
            "--eval-batches",
            "2",
            "--concept-examples",
            "8",
            "--n-random",
            "2",
        ]
    )
    result = json.loads((tmp_path / "minilm_pydoc" / "eval.json").read_text())
    assert result["fvu"] < 0.6
    # The spliced model keeps the sentence embedding far better than zeroing the layer.
    assert result["downstream"]["cosine"] > result["downstream"]["cosine_zero_ablated"] + 0.2
