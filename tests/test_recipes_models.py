"""The GPT-2 (Hugging Face and TransformerLens) and ViT recipes, end to end on tiny models."""

from __future__ import annotations

import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
FAST = ["--tiny", "--quiet", "--no-report", "--max-rows", "2000", "--total-tokens", "2560"]
FAST += ["--eval-batches", "2"]
LM_KEYS = {
    "ce_clean",
    "ce_spliced",
    "ce_zero_ablated",
    "ce_mean_ablated",
    "loss_recovered",
    "kl_clean_spliced",
}
CLASSIFIER_KEYS = {"top1_agreement", "top1_agreement_zero_ablated", "kl_clean_spliced"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread, and do not stall when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def recipe(name: str) -> dict:
    """A recipe script's globals, loaded the way tests can (its __main__ block not run)."""
    return runpy.run_path(str(RECIPES / f"{name}.py"), run_name="recipe")


@pytest.mark.parametrize(
    ("name", "kind", "keys", "architecture"),
    [
        ("gpt2_small", "lm", LM_KEYS, "batchtopk"),
        ("gpt2_small_tl", "lm", LM_KEYS, "batchtopk"),
        ("vit_base", "classifier", CLASSIFIER_KEYS, "jumprelu"),
    ],
)
def test_recipe_runs_end_to_end(tmp_path, capsys, name, kind, keys, architecture):
    recipe(name)["main"]([*FAST, "--cache", str(tmp_path)])
    run = tmp_path / f"{name}_tiny"

    ev = json.loads((run / "eval.json").read_text())
    assert ev["kind"] == kind and ev["point"] == "resid_post.2"
    assert keys <= ev["downstream"].keys()
    assert all(math.isfinite(ev["downstream"][k]) for k in keys)
    assert ev["n_rows"] > 0 and 0 <= ev["fvu"] < 1

    ab = json.loads((run / "ablation.json").read_text())
    assert ab["concept"] == ("red" if kind == "classifier" else "exceptions")
    assert len(ab["latents"]) == ab["m"] == 8
    assert len(ab["random_positive"]) == len(ab["random_negative"]) == 4
    assert ab["effect"] == pytest.approx(ab["concept_positive"] - ab["clean_positive"])

    config = json.loads((run / "train" / "config.json").read_text())
    assert config["architecture"] == architecture and config["nb_concepts"] == 256

    summary = (run / "summary.txt").read_text()
    assert "2,000 at resid_post.2" in summary
    assert "| condition | target on positives | target on negatives |" in summary
    assert summary.strip() in capsys.readouterr().out


def test_vit_recipe_reads_image_folders(tmp_path):
    from PIL import Image

    from sae_hooks.data.synthetic_images import BLUE, RED, palette, shapes

    folders = {}
    for name, colors in (("train", palette(6)), ("red", [RED]), ("blue", [BLUE])):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        for i, image in enumerate(shapes(24 if name == "train" else 6, 40, colors)):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folders[name] / f"{i:02}.png")
    args = ["--images", folders["train"], "--capture-batch-size", 4, "--concept-name", "red"]
    args += ["--concept-positive", folders["red"], "--concept-negative", folders["blue"]]
    recipe("vit_base")["main"]([*FAST, "--cache", str(tmp_path), *map(str, args)])
    ev = json.loads((tmp_path / "vit_base_tiny" / "eval.json").read_text())
    assert ev["n_rows"] == 4 * 17  # 6 batches: the last is held out; 16 patches + CLS per image
    ab = json.loads((tmp_path / "vit_base_tiny" / "ablation.json").read_text())
    assert ab["concept"] == "red" and len(ab["latents"]) == 8


@pytest.mark.parametrize("how", ["no model dir", "empty model dir"])
def test_gpt2_without_weights_says_how_to_get_them(tmp_path, capsys, how):
    argv = ["--cache", str(tmp_path)] + (["--model-dir", str(tmp_path)] if "empty" in how else [])
    with pytest.raises(SystemExit) as exit_:
        recipe("gpt2_small")["main"](argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no model") and "save_pretrained" in err
    assert not list(tmp_path.glob("gpt2_small*"))  # failed before creating a run directory


@pytest.mark.slow
def test_missing_weights_exit_cleanly_from_the_command_line(tmp_path):
    env = {**os.environ, "SAE_HOOKS_CACHE": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, str(RECIPES / "gpt2_small.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2
    assert "save_pretrained" in out.stderr and "Traceback" not in out.stderr


def test_vit_needs_images_and_weights(tmp_path, capsys):
    vit = recipe("vit_base")
    with pytest.raises(SystemExit) as exit_:
        vit["main"](["--model-dir", str(tmp_path)])
    assert exit_.value.code == 2 and "--images DIR is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        vit["main"](["--images", str(tmp_path), "--cache", str(tmp_path)])
    assert exit_.value.code == 2 and "save_pretrained" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        vit["main"](["--tiny", "--concept-positive", str(tmp_path)])
    assert "--concept-negative" in capsys.readouterr().err
