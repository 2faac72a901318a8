"""--overwrite removes only what the run owns (issue 30 items 2 and 3): a store it
recognises as one, a training directory no live process holds. Each test failed
before its fix (the user's folder was deleted; the live training's directory was)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import KILL_MARK, POINTS, D, make_batch, spawn

from sae_hooks.cli import main
from sae_hooks.data import text_batches
from sae_hooks.store import StoreWriter, capture_to_store, open_store
from sae_hooks.store.capture_distributed import capture_to_store_distributed
from sae_hooks.store.layout import open_group
from sae_hooks.train import runlock
from sae_hooks.train.runlock import RunLockedError


def user_folder(path):
    """A folder of the user's: `mkdir d; echo x > d/notes.txt`."""
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("x\n")
    return path


def foreign_things(tmp_path):
    """Everything at a location that an overwrite must refuse, and the file that shows
    it was left whole."""
    folder = user_folder(tmp_path / "d")
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"mine")
    group = tmp_path / "group"
    open_group(group, "w", attributes={"mine": 1})
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "zarr.json").write_text("{not json")
    store = tmp_path / "store"
    with StoreWriter(store) as w:
        w.append(make_batch(0))
    (store / "notes.txt").write_text("x\n")  # a store someone put notes in
    return {
        "folder holding notes.txt": (folder, folder / "notes.txt"),
        "is a file": (plain, plain),
        "without the attributes": (group, group / "zarr.json"),
        "not valid JSON": (garbled, garbled / "zarr.json"),
        "store that also holds notes.txt": (store, store / "notes.txt"),
    }


def snapshot(path):
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_store_writer_overwrites_only_a_store(tmp_path):
    for phrase, (where, kept) in foreign_things(tmp_path).items():
        before = snapshot(where)
        with pytest.raises(ValueError, match=f"refusing to overwrite .*{phrase}") as caught:
            StoreWriter(where, mode="overwrite", points=POINTS, d_model=D)
        assert "\n" not in str(caught.value) and kept.exists()
        assert snapshot(where) == before, phrase  # nothing touched
    assert not list(tmp_path.glob(".*.lock"))  # no lock file left behind either
    store = tmp_path / "real"
    with StoreWriter(store) as w:
        w.append(make_batch(0))
    with StoreWriter(store, mode="overwrite") as w:  # a store: replaced
        w.append(make_batch(1))
    assert open_store(store).token_ids()[0] == 1000
    (tmp_path / "empty").mkdir()  # an empty folder (or a killed creation's): taken
    StoreWriter(tmp_path / "empty", mode="overwrite").close()


def test_store_writer_overwrite_on_a_url_refuses_a_foreign_prefix():
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/h30-foreign/d/notes.txt", b"x")
    with pytest.raises(ValueError, match=r"folder holding notes\.txt"):
        StoreWriter("memory://h30-foreign/d", mode="overwrite")
    assert fs.cat("/h30-foreign/d/notes.txt") == b"x"


@pytest.fixture()
def data(texts, tokenizer):
    return text_batches(texts[:6], tokenizer, context_length=32, batch_size=3)


def test_capture_to_store_overwrites_only_a_store(tiny_gpt2, data, tmp_path):
    for phrase, (where, _) in foreign_things(tmp_path).items():
        before = snapshot(where)
        with pytest.raises(ValueError, match=f"refusing to overwrite .*{phrase}"):
            capture_to_store(tiny_gpt2, "resid_post.1", data, where, overwrite=True, progress=False)
        assert snapshot(where) == before, phrase
    folder = tmp_path / "d"
    with pytest.raises(ValueError, match=r"folder holding notes\.txt"):
        capture_to_store_distributed(
            tiny_gpt2, "resid_post.1", data, folder, rank=0, world_size=2, overwrite=True
        )
    with pytest.raises(ValueError, match="something other than a sharded"):  # hung before
        capture_to_store_distributed(tiny_gpt2, "resid_post.1", data, folder, rank=0, world_size=2)
    assert snapshot(folder) == {"notes.txt": b"x\n"}
    store = tmp_path / "s"
    capture_to_store(tiny_gpt2, "resid_post.1", data, store, progress=False, max_rows=50)
    again = capture_to_store(tiny_gpt2, "resid_post.1", data, store, overwrite=True, progress=False)
    assert again.n_rows > 50  # a store: replaced by the whole capture


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


CAPTURE = ["capture", "--family", "gpt2", "--tiny", "--point", "resid_post.1", "--quiet"]
CAPTURE += ["--max-rows", "200", "--context-length", "32"]


def test_capture_cli_overwrite_refuses_a_folder_that_is_not_a_store(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SAE_HOOKS_CACHE", str(tmp_path / "cache"))
    folder = user_folder(tmp_path / "d")
    code, out, err = cli(capsys, *CAPTURE, "--run", "r", "--store", folder, "--overwrite")
    assert code == 2 and err.count("\n") == 1, err
    assert "refusing to overwrite" in err and "notes.txt" in err and "replacing" not in out
    assert snapshot(folder) == {"notes.txt": b"x\n"}
    # The run's own store folder, made by hand, is refused the same way.
    user_folder(tmp_path / "cache" / "r2" / "store")
    code, _, err = cli(capsys, *CAPTURE, "--run", "r2", "--overwrite")
    assert code == 2 and "notes.txt" in err
    assert (tmp_path / "cache/r2/store/notes.txt").read_text() == "x\n"
    # A real store given by --store is replaced.
    code, _, err = cli(capsys, *CAPTURE, "--run", "r3", "--store", tmp_path / "s")
    assert code == 0, err
    code, out, err = cli(capsys, *CAPTURE, "--run", "r3", "--store", tmp_path / "s", "--overwrite")
    assert code == 0 and "replacing the store" in out, err
    assert json.loads((tmp_path / "s/zarr.json").read_text())["attributes"]["committed_rows"] == 200
    assert os.listdir(tmp_path / "d") == ["notes.txt"]


# ------------------------------------------------------------------ 3: a live training


HOLDER = """
from pathlib import Path
from sae_hooks.train import runlock
runlock.acquire(Path({path!r}))
announce_and_wait("holding")
"""


def hold_in_another_process(path):
    """A second, real process that holds the training lock of `path` until killed."""
    child = spawn(HOLDER.format(path=str(path)))
    for line in child.stdout:
        if line.startswith(KILL_MARK):
            return child
    child.wait()
    raise AssertionError(f"the holder ended (exit {child.returncode}) without holding the lock")


def small_store(path):
    g = torch.Generator().manual_seed(0)
    with StoreWriter(path) as w:
        for i in range(4):
            w.append(
                SimpleNamespace(
                    acts={"resid_post.1": torch.randn(500, 16, generator=g)},
                    token_ids=torch.arange(500) + 500 * i,
                    doc_index=torch.full((500,), i),
                    position=torch.arange(500),
                )
            )


TRAIN = ["train", "--run", "r", "--architecture", "topk", "--k-per-token", "4"]
TRAIN += ["--nb-concepts", "32", "--batch-size", "64", "--steps", "4", "--quiet"]


def test_train_overwrite_refuses_a_directory_a_live_process_trains_in(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("SAE_HOOKS_CACHE", str(tmp_path))
    small_store(tmp_path / "r" / "store")
    home = tmp_path / "r" / "train"
    home.mkdir()
    (home / "config.json").write_text("{}")  # a training's files, as it writes them
    (home / "log.jsonl").write_text('{"step": 1}\n')
    child = hold_in_another_process(home)
    try:
        before = snapshot(home)
        with pytest.raises(RunLockedError, match=f"pid {child.pid}"):
            runlock.clear(home)
        code, out, err = cli(capsys, *TRAIN, "--overwrite")
        assert code == 2 and f"pid {child.pid}" in err and err.count("\n") == 1, err
        assert "cleared" not in out and snapshot(home) == before  # nothing deleted
    finally:
        child.kill()
        child.wait()
    code, out, err = cli(capsys, *TRAIN, "--overwrite")  # its holder is gone
    assert "warning:" in err and "no longer running" in err, err  # the CLI's one-line form
    assert code == 0 and "--overwrite: cleared" in out, err
    assert (home / "sae").is_dir() and not (home / ".lock").exists()
    assert json.loads((home / "config.json").read_text())["nb_concepts"] == 32


def test_train_overwrite_refuses_a_folder_that_holds_no_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SAE_HOOKS_CACHE", str(tmp_path))
    small_store(tmp_path / "r" / "store")
    notes = user_folder(tmp_path / "r" / "notes")
    code, _, err = cli(capsys, *TRAIN, "--name", "notes", "--overwrite")
    assert code == 2 and "notes.txt" in err and "no training" in err, err
    assert snapshot(notes) == {"notes.txt": b"x\n"}
    with pytest.raises(ValueError, match="it is a file"):
        runlock.clear(notes / "notes.txt")


def a_training(home):
    home.mkdir(parents=True)
    (home / "config.json").write_text("{}")
    (home / "log.jsonl").write_text('{"step": 1}\n')
    (home / "sae").mkdir()
    (home / "sae" / "cfg.json").write_text("{}")
    return snapshot(home)


def test_an_overwrite_interrupted_while_moving_puts_everything_back(tmp_path, monkeypatch):
    home = tmp_path / "train"
    before = a_training(home)
    rename, calls = Path.rename, []

    def interrupted(self, target):
        calls.append(self.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runlock.clear(home)
    monkeypatch.undo()
    assert snapshot(home) == before and not (home / runlock.TRASH).exists()


def test_an_overwrite_interrupted_while_deleting_leaves_no_half_training(tmp_path, monkeypatch):
    home = tmp_path / "train"
    a_training(home)
    monkeypatch.setattr(
        runlock.shutil, "rmtree", lambda p: (_ for _ in ()).throw(KeyboardInterrupt)
    )
    with pytest.raises(KeyboardInterrupt):
        runlock.clear(home)
    monkeypatch.undo()
    left = {p.name for p in home.iterdir()} - {runlock.LOCK_FILE}
    assert left == {runlock.TRASH}  # no config.json beside a missing sae/, or the reverse
    runlock.clear(home)  # the next overwrite finishes the job
    runlock.release(home)
    assert {p.name for p in home.iterdir()} - {runlock.LOCK_FILE} == set()
