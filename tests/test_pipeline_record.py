"""run.json from the API pipeline and the recipes: the CLI continues a recipe's run."""

import json
import runpy
from pathlib import Path

import pytest

from sae_hooks.cli import main
from sae_hooks.models import pydoc_tokenizer, tiny_model
from sae_hooks.runrecord import (
    PYDOC_TOKENIZER,
    RunRecord,
    find_run_dir,
    infer_model_record,
    read_run_record,
    tokenizer_record,
    write_run_record,
)

RECIPE = Path(__file__).parents[1] / "recipes" / "gpt2_small.py"


def test_inferred_record_of_tiny_and_saved_models(tmp_path):
    model, tok = tiny_model("gpt2"), pydoc_tokenizer()
    rec = infer_model_record(model, tok)
    assert rec["family"] == "gpt2" and rec["tiny"] and rec["model_dir"] is None
    assert tokenizer_record(tok) == PYDOC_TOKENIZER
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    rec = infer_model_record(saved, AutoTokenizer.from_pretrained(tmp_path / "m"))
    assert rec["model_dir"] == str((tmp_path / "m").resolve()) and not rec["tiny"]


def test_record_is_found_from_inner_directories_and_keeps_points(tmp_path):
    write_run_record(tmp_path, RunRecord(model={"family": "gpt2"}, points=["resid_post.1"]))
    write_run_record(tmp_path, RunRecord(model={"family": "gpt2"}, points=["resid_post.2"]))
    (tmp_path / "train" / "sae").mkdir(parents=True)
    assert find_run_dir(tmp_path / "train" / "sae") == tmp_path
    assert read_run_record(tmp_path / "train").points == ["resid_post.1", "resid_post.2"]
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"run\.json is not valid JSON"):
        read_run_record(tmp_path)


@pytest.mark.slow
def test_cli_continues_a_recipe_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SAE_HOOKS_CACHE", str(tmp_path))
    recipe = runpy.run_path(str(RECIPE), run_name="recipe")
    argv = ["--tiny", "--cache", str(tmp_path), "--quiet", "--no-report"]
    recipe["main"]([*argv, "--total-tokens", "2048", "--max-rows", "2048", "--eval-batches", "1"])
    record = json.loads((tmp_path / "gpt2_small_tiny" / "run.json").read_text())
    assert record["model"]["family"] == "gpt2" and record["model"]["tiny"]
    assert record["tokenizer"] == PYDOC_TOKENIZER and record["points"] == ["resid_post.2"]
    assert record["corpus"]["data"] == "pydoc" and record["corpus"]["prepend_bos"]
    capsys.readouterr()
    code = main(["eval", "--run", "gpt2_small_tiny", "--max-batches", "1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert "held-out part of pydoc" in capsys.readouterr().out
