"""What the recipe scripts share (sae_hooks.recipe): run directory, eval batches, error exits."""

from __future__ import annotations

import argparse

import pytest

from sae_hooks.recipe import eval_batch_count, recipe_run_dir, user_errors


def args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"run_name": None, "cache": "c", "tiny": False, **kw})


def test_run_dir_is_named_after_the_recipe():
    assert str(recipe_run_dir(args(), "vit_base")) == "c/vit_base"
    assert str(recipe_run_dir(args(tiny=True), "vit_base")) == "c/vit_base_tiny"
    assert str(recipe_run_dir(args(tiny=True, run_name="mine"), "vit_base")) == "c/mine"
    with pytest.raises(ValueError, match="plain directory name"):
        recipe_run_dir(args(run_name="../up"), "vit_base")


def test_eval_batches_default_by_size():
    assert eval_batch_count(args(eval_batches=None)) == 8
    assert eval_batch_count(args(eval_batches=None, tiny=True)) == 2
    assert eval_batch_count(args(eval_batches=3, tiny=True)) == 3


def test_user_errors_exit_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_, user_errors():
        raise FileNotFoundError("no model at m/")
    assert exit_.value.code == 2 and capsys.readouterr().err == "error: no model at m/\n"
    with pytest.raises(KeyError), user_errors():  # a bug is not a user error
        raise KeyError("x")
