"""open_documents: every --data source (files, folders, saved datasets, hub ids read
offline from a local cache), with errors that name what is wrong and what is valid."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from hub_cache import save_to_hub_cache

from sae_hooks.data import load_texts, open_documents, text_batches
from sae_hooks.data.splits import split_documents

datasets = pytest.importorskip("datasets")

DOCS = [f"document number {i} says hello to the reader" for i in range(30)]


def texts(docs) -> list[str]:
    return [t for _, t in docs.texts()]


def test_local_files_and_folders(tmp_path):
    ds = datasets.Dataset.from_dict({"body": DOCS, "n": list(range(30))})
    ds.to_parquet(tmp_path / "c.parquet")
    ds.to_csv(tmp_path / "c.csv", index=False)
    ds.to_json(tmp_path / "c.json")  # JSON lines, read by datasets' json builder
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"body": d}) for d in DOCS))
    for name in ("c.parquet", "c.csv", "c.json", "c.jsonl"):
        docs = open_documents(tmp_path / name, text_field="body")
        assert texts(docs) == DOCS and len(docs) == 30, name
        assert docs.source == str((tmp_path / name).resolve())
    streamed = open_documents(tmp_path / "c.parquet", text_field="body", streaming=True)
    assert not streamed.sized and texts(streamed) == DOCS
    (tmp_path / "t").mkdir()
    for i, d in enumerate(DOCS[:3]):
        (tmp_path / "t" / f"{i}.txt").write_text(d)
    assert texts(open_documents(tmp_path / "t")) == DOCS[:3]
    (tmp_path / "p.txt").write_text("\n\n".join(DOCS[:4]) + "\n\n\n\n")
    assert texts(open_documents(tmp_path / "p.txt")) == DOCS[:4]
    assert load_texts("pydoc")[:2] == texts(open_documents("pydoc"))[:2]


def test_saved_dataset_and_dataset_dict_splits(tmp_path):
    whole = datasets.Dataset.from_dict({"text": DOCS})
    whole.save_to_disk(str(tmp_path / "one"))
    assert texts(open_documents(tmp_path / "one")) == DOCS
    dd = datasets.DatasetDict({"validation": whole.select(range(5)), "test": whole.select([7])})
    dd.save_to_disk(str(tmp_path / "dict"))
    assert texts(open_documents(tmp_path / "dict", split="test")) == [DOCS[7]]
    with pytest.raises(ValueError, match=r"several splits \(validation, test\).*--split"):
        open_documents(tmp_path / "dict")
    with pytest.raises(ValueError, match=r"no split 'train'; its splits: validation, test"):
        open_documents(tmp_path / "dict", split="train")
    datasets.DatasetDict({"train": whole}).save_to_disk(str(tmp_path / "train"))
    assert len(open_documents(tmp_path / "train")) == 30  # "train" (or the only split)
    with pytest.raises(ValueError, match="has no splits"):
        open_documents(tmp_path / "one", split="train")


def test_clear_errors(tmp_path):
    ds = datasets.Dataset.from_dict({"body": DOCS, "label": [0] * 30})
    ds.save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match=r"no 'text' field \(columns: body, label\).*--text-field"):
        open_documents(tmp_path / "saved")
    ds.select([]).save_to_disk(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="is empty: it has no rows"):
        open_documents(tmp_path / "empty", text_field="body")
    with pytest.raises(FileNotFoundError, match=r"no text data at .*missing\.txt"):
        open_documents(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match=r"hub dataset id.*HF_HUB_OFFLINE"):
        open_documents("no-org/no-such-corpus")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match=r"holds no \.txt files"):
        open_documents(tmp_path / "empty_dir")


def test_rows_that_are_not_strings_are_refused_or_skipped_with_their_row(tmp_path, capsys):
    rows = [d if i % 3 else None for i, d in enumerate(DOCS)]  # rows 0, 3, ... are None
    datasets.Dataset.from_dict({"text": rows}).save_to_disk(str(tmp_path / "nones"))
    with pytest.raises(ValueError, match=r"document 0 of .*nones is None.*--skip-invalid-rows"):
        load_texts(tmp_path / "nones")
    docs = open_documents(tmp_path / "nones", skip_invalid=True)
    got = list(docs.texts())
    assert [r for r, _ in got] == [i for i in range(30) if i % 3]  # original row numbers
    assert "skipped 10 rows whose text is not a non-empty string (rows 0, 3, 6" in (
        capsys.readouterr().err
    )
    (tmp_path / "n.jsonl").write_text('{"text": "a b"}\n{"text": null}\n')
    with pytest.raises(ValueError, match=r"n.jsonl:2: 'text' must be a string, got NoneType"):
        open_documents(tmp_path / "n.jsonl")
    assert texts(open_documents(tmp_path / "n.jsonl", skip_invalid=True)) == ["a b"]


def test_held_out_part_counts_source_rows(tmp_path):
    rows = [d if i % 3 else None for i, d in enumerate(DOCS)]
    datasets.Dataset.from_dict({"text": rows}).save_to_disk(str(tmp_path / "nones"))
    docs = open_documents(tmp_path / "nones", skip_invalid=True)
    train, held = split_documents(docs, "train"), split_documents(docs, "held-out")
    assert [r for r, _ in held.texts()] == [28, 29]  # rows 27-29, row 27 is None
    assert max(r for r, _ in train.texts()) == 26
    stream = open_documents(tmp_path / "nones", skip_invalid=True, streaming=False)
    stream = stream.with_options(rows=iter(datasets.load_from_disk(str(tmp_path / "nones"))))
    assert [r for r, _ in split_documents(stream, "held-out").texts()] == [19, 29]


def _tiny_hub_corpus(tmp_path):
    repo = tmp_path / "repo" / "data"
    repo.mkdir(parents=True)
    ds = datasets.Dataset.from_dict({"text": DOCS})
    ds.select(range(20)).to_parquet(repo / "train-00000-of-00001.parquet")
    ds.select(range(20, 30)).to_parquet(repo / "test-00000-of-00001.parquet")
    home = tmp_path / "hf"
    save_to_hub_cache(repo.parent, "tiny-org/tiny-corpus", home / "hub", "dataset")
    return home


def test_hub_dataset_id_offline_from_the_cache(tmp_path, monkeypatch, tokenizer):
    home = _tiny_hub_corpus(tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    docs = open_documents("tiny-org/tiny-corpus")
    assert texts(docs) == DOCS[:20] and docs.source == "tiny-org/tiny-corpus"
    assert texts(open_documents("tiny-org/tiny-corpus", split="test")) == DOCS[20:]
    streamed = open_documents("tiny-org/tiny-corpus", split="test", streaming=True)
    assert not streamed.sized and texts(streamed) == DOCS[20:]
    with pytest.raises(ValueError, match="no split 'dev'; its splits: train, test"):
        open_documents("tiny-org/tiny-corpus", split="dev")
    a = [b["input_ids"] for b in text_batches(streamed, tokenizer, context_length=8, batch_size=4)]
    b = [b["input_ids"] for b in text_batches(DOCS[20:], tokenizer, context_length=8, batch_size=4)]
    assert len(a) == len(b) > 1 and all(torch.equal(x, y) for x, y in zip(a, b))


def test_hub_cache_reads_in_a_fresh_offline_process(tmp_path, tokenizer_dir, tiny_gpt2):
    """The environment a user sets (HF_HOME, HF_HUB_OFFLINE=1) is all it takes; the same
    helper puts a model repo (config and tokenizer) where transformers finds it."""
    home = _tiny_hub_corpus(tmp_path)
    shutil.copytree(tokenizer_dir, tmp_path / "model")
    tiny_gpt2.config.save_pretrained(tmp_path / "model")
    save_to_hub_cache(tmp_path / "model", "tiny-org/tiny-model", home / "hub", "model")
    code = (
        "from sae_hooks.data import open_documents\n"
        "from transformers import AutoTokenizer\n"
        "docs = open_documents('tiny-org/tiny-corpus', split='test')\n"
        "tok = AutoTokenizer.from_pretrained('tiny-org/tiny-model')\n"
        "print(len(docs), tok.vocab_size)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["10", "512"]


def test_the_cli_refuses_rows_that_are_not_strings_and_empty_datasets(tmp_path, capsys):
    from sae_hooks.cli import main

    rows = [d if i % 3 else None for i, d in enumerate(DOCS)]
    datasets.Dataset.from_dict({"text": rows}).save_to_disk(str(tmp_path / "nones"))
    datasets.Dataset.from_dict({"text": DOCS}).select([]).save_to_disk(str(tmp_path / "empty"))
    base = ["capture", "--family", "gpt2", "--tiny", "--point", "resid_post.0"]
    base += ["--cache", str(tmp_path / "cache"), "--quiet", "--data"]
    for data, message in [("nones", "document 0 of"), ("empty", "is empty: it has no rows")]:
        code = main([*base, str(tmp_path / data)])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err
