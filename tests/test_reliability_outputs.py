"""Rebuilt outputs are swapped in whole (issue 30 items 4, 5, 13): an interrupted report or
export leaves the previous one byte-identical, `--out` into a folder that is not ours is
refused with its files untouched, and the Neuronpedia peak marker survives tokens
holding `<<` or `>>`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from sae_hooks.atomic import recover
from sae_hooks.data import text_batches
from sae_hooks.eval.core import write_core_eval
from sae_hooks.interop import export_saelens
from sae_hooks.interop import neuronpedia as np_mod
from sae_hooks.interop.hub import save_pretrained
from sae_hooks.interop.neuronpedia import export_neuronpedia, split_marked
from sae_hooks.report import build_report, site
from sae_hooks.sae import TopKSAE
from sae_hooks.store import capture_to_store

DEAD_PID = 2**22 + 12345  # above the default pid_max: no live process has it


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def interrupt_after(monkeypatch, module, name: str, calls: int) -> None:
    """Make module.name raise KeyboardInterrupt on its call number `calls` + 1."""
    real, seen = getattr(module, name), []

    def fake(*args, **kw):
        seen.append(1)
        if len(seen) > calls:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(module, name, fake)


def foreign(folder: Path) -> dict[str, bytes]:
    """A user's folder holding files named like ours (issue 30 item 5)."""
    folder.mkdir(parents=True)
    (folder / "README.md").write_text("my notes\n")
    (folder / "config.json").write_text('{"mine": true}\n')
    (folder / "data" / "latents").mkdir(parents=True)
    (folder / "data" / "latents" / "0.js").write_text("keep me\n")
    return snapshot(folder)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from sae_hooks.train import TrainConfig, train

    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    cfg = TrainConfig(
        architecture="topk",
        nb_concepts=48,
        top_k=2,
        batch_size=64,
        steps=4,
        log_every=2,
        val_every=0,
        checkpoint_every=0,
        init_rows=256,
        progress=False,
    )
    train(cfg, torch.randn(1024, 16), run)
    return run


@pytest.fixture(scope="module")
def store(tiny_gpt2, tokenizer, texts, tmp_path_factory):
    batches = text_batches(texts[:20], tokenizer, context_length=32, batch_size=4)
    where = tmp_path_factory.mktemp("store") / "s"
    return capture_to_store(tiny_gpt2, "resid_post.1", batches, where, progress=False)


def test_interrupted_report_leaves_the_previous_one_whole(trained, monkeypatch):
    monkeypatch.setattr(site, "CHUNK", 8)  # 48 latents: 6 data files
    index = build_report(trained, progress=False)
    before = snapshot(index.parent)
    assert sum(k.startswith("data/latents/") for k in before) == 6
    interrupt_after(monkeypatch, site, "_latent_data", 20)  # after 2 data files
    with pytest.raises(KeyboardInterrupt):
        build_report(trained, progress=False)
    assert snapshot(index.parent) == before
    assert [p.name for p in index.parent.parent.iterdir() if p.name.startswith(".")] == []
    monkeypatch.undo()
    assert build_report(trained, progress=False) == index  # a rebuild replaces it whole


def test_interrupted_neuronpedia_export_leaves_the_previous_one_whole(
    store, tokenizer, tmp_path, monkeypatch
):
    sae = TopKSAE(store.d_model("resid_post.1"), 24, top_k=3).eval()
    monkeypatch.setattr(np_mod, "FEATURES_PER_BATCH", 4)
    kw = {"tokenizer": tokenizer, "n_examples": 2, "progress": False}
    out = export_neuronpedia(sae, store, tmp_path / "np", **kw)
    before = snapshot(out)
    batches = json.loads((out / "sae.json").read_text())["batches"]
    lines = (out / "explanations.jsonl").read_text().splitlines()
    assert len(batches) >= 3 and len(lines) == sum(
        len(json.loads((out / b).read_text())) for b in batches
    )
    from sae_hooks.report import contexts

    interrupt_after(monkeypatch, contexts, "gather_examples", 2)
    with pytest.raises(KeyboardInterrupt):
        export_neuronpedia(sae, store, out, **kw)
    assert snapshot(out) == before


@pytest.mark.parametrize("kind", ["report", "saelens", "hf", "neuronpedia"])
def test_out_into_a_foreign_folder_is_refused(kind, trained, store, tmp_path):
    target = tmp_path / "mine"
    before = foreign(target)
    sae = TopKSAE(16, 24, top_k=3)
    with pytest.raises(FileExistsError, match="choose a new path or remove it") as err:
        if kind == "report":
            build_report(trained, out=target, progress=False)
        elif kind == "saelens":
            export_saelens(sae, target)
        elif kind == "hf":
            save_pretrained(sae, target)
        else:
            export_neuronpedia(sae, store, target, progress=False)
    assert "README.md" in str(err.value) and "\n" not in str(err.value)
    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


@pytest.mark.parametrize("kind", ["saelens", "hf"])
def test_an_export_of_ours_is_replaced_and_an_empty_folder_is_used(kind, tmp_path):
    write = export_saelens if kind == "saelens" else save_pretrained
    (tmp_path / "e").mkdir()
    first = snapshot(write(TopKSAE(16, 24, top_k=3), tmp_path / "e"))
    second = snapshot(write(TopKSAE(16, 24, top_k=3), tmp_path / "e"))
    assert first.keys() == second.keys() and first != second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_a_crash_between_the_renames_is_recovered(tmp_path):
    """Old output renamed aside, new not yet in: the next build restores the old one."""
    target = tmp_path / "e"
    export_saelens(TopKSAE(16, 24, top_k=3), target)
    before = snapshot(target)
    os.replace(target, tmp_path / f".e.old-{DEAD_PID}")
    (tmp_path / f".e.partial-{DEAD_PID}").mkdir()
    recover(target)
    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_an_interrupted_eval_json_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = write_core_eval(tmp_path, {"sparsity": {"l0": 3.0}})
    before = path.read_bytes()
    real = Path.write_text

    def half(self, text, *a, **kw):
        real(self, text[: len(text) // 2], *a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", half)
    with pytest.raises(KeyboardInterrupt):
        write_core_eval(tmp_path, {"sparsity": {"l0": 4.0}})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_the_peak_marker_survives_tokens_holding_angle_brackets(store, tmp_path):
    words = ["<<", ">>", "a<<b", "x>>", "\\", "<", ">", "<<<>>>", "\\<<"]

    def decode(ids):
        return [words[int(i) % len(words)] for i in ids]

    sae = TopKSAE(store.d_model("resid_post.1"), 24, top_k=3).eval()
    out = export_neuronpedia(sae, store, tmp_path / "np", tokenizer=decode, progress=False)
    header = json.loads((out / "sae.json").read_text())
    features = {f["index"]: f for b in header["batches"] for f in json.loads((out / b).read_text())}
    checked = 0
    for line in (out / "explanations.jsonl").read_text().splitlines():
        record = json.loads(line)
        tops = [a for a in features[record["index"]]["activations"] if a["group"] == "top"]
        for example, act in zip(record["examples"], tops, strict=True):
            tokens, peak = act["tokens"], act["maxValueTokenIndex"]
            expected = ("".join(tokens[:peak]), tokens[peak], "".join(tokens[peak + 1 :]))
            assert split_marked(example["text"]) == expected
            assert example["peak"] == tokens[peak]
            checked += 1
    assert checked > 10
