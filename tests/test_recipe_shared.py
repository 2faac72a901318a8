"""What the recipe scripts share (sae_hooks.recipe): run directory, eval batches, error exits."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

from sae_hooks.recipe import eval_batch_count, recipe_run_dir, run_recipe, user_errors

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


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


def test_ctrl_c_ends_a_recipe_with_one_line_that_says_it_resumes(capsys):
    def main() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_:
        run_recipe(main)
    assert exit_.value.code == 130
    err = capsys.readouterr().err
    assert err.strip() == (
        "interrupted: rerun the same command to resume (capture and training go on "
        "from their last commit and checkpoint)"
    )
    assert "Traceback" not in err
    run_recipe(lambda: None)  # a run that ends is left alone


@pytest.mark.parametrize("script", sorted(p.name for p in RECIPES.glob("*.py")))
def test_every_recipe_runs_through_run_recipe(script):
    tree = ast.parse((RECIPES / script).read_text())
    guard = tree.body[-1]
    assert isinstance(guard, ast.If) and ast.unparse(guard.test) == "__name__ == '__main__'"
    assert [ast.unparse(stmt) for stmt in guard.body] == ["run_recipe(main)"]
