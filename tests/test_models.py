"""Loading real checkpoints from a local directory: the path the recipes take with --model-dir.

The checkpoints are tiny random-init models saved with save_pretrained, so the
code path is exactly the one real GPT-2 / ViT weights go through, offline.
"""

import json
import runpy
from pathlib import Path

import pytest
import torch

from sae_hooks.models import load_model, tiny_model

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("gpt2")
    tiny_model("gpt2").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    from transformers import ViTImageProcessor

    path = tmp_path_factory.mktemp("vit")
    tiny_model("vit").save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_gpt2_from_a_directory_through_hf_and_transformer_lens(gpt2_dir):
    hf, tok = load_model("gpt2", gpt2_dir)
    tl, tl_tok = load_model("tl-gpt2", gpt2_dir)
    ids = tok(["def f(x): return x"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(tl(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)
    assert tl_tok("a b")["input_ids"] == tok("a b")["input_ids"]


def test_vit_from_a_directory(vit_dir):
    model, processor = load_model("vit", vit_dir)
    pixels = processor(images=[torch.zeros(3, 32, 32)], return_tensors="pt")["pixel_values"]
    assert model(pixel_values=pixels).logits.shape == (1, 10)


def test_remote_code_is_refused_unless_asked(gpt2_dir, tmp_path):
    """A config asking for custom code must not run it by default."""
    evil = tmp_path / "evil"
    evil.mkdir()
    for f in gpt2_dir.iterdir():
        (evil / f.name).write_bytes(f.read_bytes())
    config = json.loads((evil / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.Evil"}
    (evil / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (evil / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    load_model("gpt2", evil)  # loads the plain GPT-2 class, ignoring auto_map
    assert not marker.exists()


@pytest.mark.parametrize("flag", ["--model-dir", "--model"])
def test_gpt2_recipe_with_model_dir(gpt2_dir, tmp_path, capsys, flag):
    """The real-weights branch of the recipe end to end (not --tiny); --model (the CLI's
    loader) records the model as loaded."""
    runpy.run_path(str(RECIPES / "gpt2_small.py"), run_name="recipe")["main"](
        [
            flag,
            str(gpt2_dir),
            "--cache",
            str(tmp_path),
            "--quiet",
            "--no-report",
            "--point",
            "resid_post.1",
            "--max-rows",
            "3000",
            "--nb-concepts",
            "256",
            "--total-tokens",
            "4096",
            "--batch-size",
            "512",
            "--eval-batches",
            "1",
            "--context-length",
            "64",
        ]
    )
    run = tmp_path / "gpt2_small"
    ev = json.loads((run / "eval.json").read_text())
    assert ev["point"] == "resid_post.1" and "loss_recovered" in ev["downstream"]
    assert json.loads((run / "train" / "config.json").read_text())["nb_concepts"] == 256
    assert "ablate top 8 concept latents" in capsys.readouterr().out
    model = json.loads((run / "run.json").read_text())["model"]
    if flag == "--model":
        assert model["name_or_path"] == str(gpt2_dir.resolve()) and model["prepend_bos"]
        assert model["model_type"] == "gpt2" and model["head"] == "GPT2LMHeadModel"


def test_load_model_is_public_and_takes_a_directory(gpt2_dir, vit_dir):
    """sae_hooks.load_model: any model by hub id or directory, with its processor."""
    import sae_hooks

    model, tok = sae_hooks.load_model(gpt2_dir)
    assert type(model).__name__ == "GPT2LMHeadModel" and tok("a b")["input_ids"]
    model, processor = sae_hooks.load_model(vit_dir, dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and type(processor).__name__.startswith("ViTImage")


def test_one_record_per_family():
    from sae_hooks.models import FAMILIES, MODEL_FAMILIES, model_family

    assert FAMILIES == ("gpt2", "vit", "minilm", "tl-gpt2")
    assert {f for f in FAMILIES if model_family(f).prepend_bos} == {"gpt2", "tl-gpt2"}
    assert [f for f in FAMILIES if model_family(f).vision] == ["vit"]
    assert model_family("vit").vit_tokens == ("all", "cls", "patches")
    assert model_family("tl-gpt2").weights_family == "gpt2"
    assert "save_pretrained('models/gpt2')" in MODEL_FAMILIES["tl-gpt2"].how_to_get_weights
    with pytest.raises(ValueError, match="valid: gpt2, vit, minilm, tl-gpt2"):
        model_family("llama")


@pytest.mark.parametrize("name", ["gpt2", "vit", "minilm"])
def test_a_config_and_a_model_name_their_family(name):
    from sae_hooks.models import family_for_config, family_of_model, model_family

    model = tiny_model(name, d_model=32, n_layers=1)
    assert family_for_config(model.config) is model_family(name)
    assert family_of_model(model) is model_family(name)


def test_an_unknown_config_is_refused():
    from transformers import LlamaConfig

    from sae_hooks.models import family_for_config

    with pytest.raises(ValueError, match="no model family for model_type 'llama'"):
        family_for_config(LlamaConfig())
