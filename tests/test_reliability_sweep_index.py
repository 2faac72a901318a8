"""sweep.json is an index that merges (issue 30 item 11): a second sweep into the same
directory, after the first or at the same time, or one that drops an axis value, never
takes a trained SAE out of what `report` and `evaluate_sweep` read. Each test failed
before its fix (the last sweep's file replaced the others')."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from helpers import REPO, TESTS

from sae_hooks.report.frontier import sweep_rows
from sae_hooks.store import StoreWriter
from sae_hooks.train import Sweep, TrainConfig, read_sweep, train_many
from sae_hooks.train.many import SWEEP_FILE, update_sweep_index

D = 16
BASE = TrainConfig(
    point="p", architecture="topk", batch_size=64, steps=3, log_every=1, val_every=0,
    val_batches=1, checkpoint_every=0, init_rows=128, progress=False,
)  # fmt: skip


def write_store(path):
    g = torch.Generator().manual_seed(0)
    with StoreWriter(path, points=["p"], d_model=D, chunk_rows=128) as w:
        for i in range(3):
            w.append(
                SimpleNamespace(
                    acts={"p": torch.randn(400, D, generator=g)},
                    token_ids=torch.arange(400) + 400 * i,
                    doc_index=torch.full((400,), i),
                    position=torch.arange(400),
                )
            )
    return str(path)


def names_in(sweep_dir):
    return sorted(e["name"] for e in read_sweep(sweep_dir))


def test_later_sweeps_into_the_same_directory_keep_every_trained_sae(tmp_path):
    store, out = write_store(tmp_path / "store"), tmp_path / "sweep"
    first = Sweep(BASE, {"nb_concepts": [32], "k_per_token": [2, 4]})
    train_many(first, store, out)
    trained = names_in(out)
    assert len(trained) == 2
    train_many(Sweep(BASE, {"nb_concepts": [32], "k_per_token": [2]}), store, out)  # k=4 dropped
    assert names_in(out) == trained
    other = Sweep(BASE, {"nb_concepts": [64], "k_per_token": [2]})  # another sweep, same dir
    train_many(other, store, out)
    assert names_in(out) == sorted([*trained, *other.names()])
    rows = sweep_rows(out)  # what `report` draws: every SAE, each with its metrics
    assert sorted(r["name"] for r in rows) == names_in(out)
    assert all(r["fvu"] is not None and r["step"] == 3 for r in rows)
    index = json.loads((out / SWEEP_FILE).read_text())
    assert all(e["store"] == str((tmp_path / "store").resolve()) for e in index["saes"])


def test_an_entry_whose_directory_is_gone_leaves_and_a_damaged_index_is_refused(tmp_path):
    out = tmp_path / "sweep"
    for name in ("a", "b"):
        (out / name).mkdir(parents=True)
    update_sweep_index(out, [{"name": "a"}, {"name": "b"}], None)
    (out / "b").rmdir()  # removed by hand: nothing of it left to read
    update_sweep_index(out, [{"name": "a", "step": 3}], None)
    assert read_sweep(out) == [{"name": "a", "step": 3}]
    (out / SWEEP_FILE).write_text('{"saes": [{"nom": 1}]')
    with pytest.raises(ValueError, match=r"is damaged .*SAEs' directories are intact"):
        update_sweep_index(out, [{"name": "a"}], None)
    assert (out / SWEEP_FILE).read_text() == '{"saes": [{"nom": 1}]'  # not overwritten
    with pytest.raises(ValueError, match="is damaged"):
        train_many([BASE], torch.randn(256, D), out)


HAMMER = """
import sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from sae_hooks.train.many import update_sweep_index
out, who = Path({out!r}), sys.argv[1]
(out / f".ready-{{who}}").touch()
while len(list(out.glob(".ready-*"))) < {procs}:  # released together, once all are here
    time.sleep(0.001)
for i in range({n}):
    name = f"{{who}}-{{i}}"
    (out / name).mkdir(exist_ok=True)
    update_sweep_index(out, [{{"name": name, "step": i}}], None)
"""


def test_simultaneous_index_updates_lose_nothing(tmp_path):
    """4 processes released at one instant, 25 updates each: all 100 SAEs indexed."""
    out, n, procs = tmp_path / "sweep", 25, 4
    out.mkdir()
    script = HAMMER.format(repo=str(REPO), out=str(out), n=n, procs=procs)
    running = [
        subprocess.Popen([sys.executable, "-c", script, f"w{k}"], stderr=subprocess.PIPE)
        for k in range(procs)
    ]
    for p in running:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    assert names_in(out) == sorted(f"w{k}-{i}" for k in range(procs) for i in range(n))


TWO_SWEEPS = """
import sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
import test_reliability_sweep_index as t
from sae_hooks.train import Sweep, train_many
width = int(sys.argv[1])
train_many(Sweep(t.BASE, {{"nb_concepts": [width], "k_per_token": [2, 4]}}), {store!r}, {out!r})
"""


def test_two_sweeps_at_once_into_one_directory_index_both(tmp_path):
    store, out = write_store(tmp_path / "store"), tmp_path / "sweep"
    script = TWO_SWEEPS.format(repo=str(REPO), tests=str(TESTS), store=store, out=str(out))
    procs = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), w], stderr=subprocess.PIPE)
        for w in ("32", "48")
    ]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read().decode()
    names = names_in(out)
    assert len(names) == 4 and {n.split("-")[2] for n in names} == {"n32", "n48"}
    assert all((out / n / "sae").is_dir() for n in names)
    assert all(e.get("metrics", {}).get("step") == 3 for e in read_sweep(out))


def test_report_reads_the_store_each_sae_was_trained_on(tmp_path):
    """Two sweeps merged into one directory may have read two stores: the report of an
    SAE uses the store its own entry records, not the latest sweep's."""
    from sae_hooks.report.frontier import sweep_for_report

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    index = {
        "store": "/stores/second",
        "saes": [
            {"name": "a", "step": 3, "config": {}, "store": "/stores/first"},
            {"name": "b", "step": 3, "config": {}, "store": "/stores/second"},
        ],
    }
    (tmp_path / "sweep.json").write_text(json.dumps(index))
    assert sweep_for_report(tmp_path, "a", None, None)[3] == "/stores/first"
    assert sweep_for_report(tmp_path, "b", None, None)[3] == "/stores/second"
    assert sweep_for_report(tmp_path, "a", None, "/given")[3] == "/given"
