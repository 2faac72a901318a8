"""RunDir owns the run directory's layout: every name, SAE names, what the run owns."""

from pathlib import Path

import pytest

from sae_hooks.pipeline import run_dir_for
from sae_hooks.rundir import RunDir


def test_the_layout(tmp_path):
    run = RunDir(tmp_path)
    assert run.record == tmp_path / "run.json"
    assert run.store == tmp_path / "store"
    assert run.sweep == tmp_path / "sweep"
    assert run.summary == tmp_path / "summary.txt"
    assert run.export_dir("saelens") == tmp_path / "export-saelens"
    # the default SAE lives in train/, its outputs at the root
    assert run.sae_home() == tmp_path / "train"
    assert run.sae_dir() == tmp_path / "train" / "sae"
    assert run.train_config() == tmp_path / "train" / "config.json"
    assert run.eval_file() == tmp_path / "eval.json"
    assert run.ablation_file() == tmp_path / "ablation.json"
    assert run.ablation_plot() == tmp_path / "ablation.png"
    assert run.report_dir() == tmp_path / "report"
    # another SAE keeps everything in its own home
    assert run.sae_dir("wide") == tmp_path / "wide" / "sae"
    assert run.eval_file("wide") == tmp_path / "wide" / "eval.json"
    assert run.ablation_file("wide") == tmp_path / "wide" / "ablation.json"
    assert run.report_dir("wide") == tmp_path / "wide" / "report"


def test_a_run_by_name(tmp_path, monkeypatch):
    assert RunDir.named("demo", tmp_path).root == tmp_path / "demo"
    monkeypatch.setenv("SAE_HOOKS_CACHE", str(tmp_path / "c"))
    assert RunDir.named("demo").root == tmp_path / "c" / "demo" == run_dir_for("demo")
    for bad in ("", ".", "..", "../x", "a/b", ".hidden", "a\\b"):
        with pytest.raises(ValueError, match="plain directory name"):
            RunDir.named(bad, tmp_path)


@pytest.mark.parametrize("name", ["store", "report", "sweep", "eval.json", "run.json", "export-hf"])
def test_an_sae_may_not_take_a_reserved_name(tmp_path, name):
    with pytest.raises(ValueError, match="reserved entry"):
        RunDir(tmp_path).sae_dir(name)


@pytest.mark.parametrize("name", ["../other", "a/b", ".", ""])
def test_an_sae_name_is_a_plain_name(tmp_path, name):
    with pytest.raises(ValueError, match="plain directory name"):
        RunDir(tmp_path).sae_home(name)


def test_what_the_run_owns(tmp_path):
    run = RunDir(tmp_path / "r")
    for d in (
        run.store,
        run.sae_dir(),
        run.sae_dir("wide"),
        run.report_dir(),
        tmp_path / "r/notes",
    ):
        d.mkdir(parents=True)
    run.eval_file().write_text("{}")
    (tmp_path / "outside").mkdir()
    assert run.owns(run.store / "zarr.json")
    assert run.owns(run.sae_home("wide")) and run.owns(run.sae_dir())
    assert run.owns(run.eval_file()) and run.owns(run.report_dir() / "index.html")
    assert run.owns(run.export_dir("hf"))
    assert not run.owns(tmp_path / "r/notes")  # a folder the user put there
    assert not run.owns(tmp_path / "outside") and not run.owns(tmp_path / "r")
    assert not run.owns(tmp_path / "r" / ".." / "outside")
    assert run.sae_names() == ["train", "wide"]


def test_a_path_may_be_a_run_or_an_sae_home(tmp_path):
    run = RunDir(tmp_path)
    run.sae_dir().mkdir(parents=True)
    assert RunDir.home_of(tmp_path) == run.sae_home()
    assert RunDir.home_of(run.sae_home()) == run.sae_home()
    assert RunDir.home_of(tmp_path / "nothing") is None
    assert RunDir.outputs_of(run.sae_home()) == tmp_path  # the default SAE reports at the root
    assert RunDir.outputs_of(Path("x/wide")) == Path("x/wide")
