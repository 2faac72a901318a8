"""Corpora beyond lists of strings: generators, dicts with a text field, datasets, files."""

import json

import pytest
import torch

from sae_hooks.data import load_texts, text_batches
from sae_hooks.data.text import as_documents

DOCS = ["the cat sat on the mat " * 6, "an exception is raised here", "short one"] * 4


def _ids(source, tokenizer, **kw):
    batches = text_batches(source, tokenizer, context_length=16, batch_size=4, **kw)
    return [b["input_ids"] for b in batches]


def test_streams_and_dicts_give_the_same_batches_as_a_list(tokenizer):
    expected = _ids(DOCS, tokenizer)
    streamed = _ids((d for d in DOCS), tokenizer)
    dicts = _ids([{"body": d} for d in DOCS], tokenizer, text_field="body")
    assert len(expected) == len(streamed) == len(dicts) > 1
    assert all(
        torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(expected, streamed, dicts)
    )


def test_huggingface_datasets_map_style_and_streaming(tokenizer):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"body": DOCS})
    expected = _ids(DOCS, tokenizer)
    for source in (ds, ds.to_iterable_dataset()):
        got = _ids(as_documents(source, "body"), tokenizer)
        assert all(torch.equal(a, b) for a, b in zip(expected, got)) and len(got) == len(expected)


def test_missing_field_and_exhausted_stream_are_named(tokenizer):
    with pytest.raises(ValueError, match="no 'text' field"):
        _ids([{"body": "x y"}], tokenizer)
    stream = (d for d in DOCS)
    batches = text_batches(stream, tokenizer, context_length=16, batch_size=4)
    list(batches)
    with pytest.raises(ValueError, match="read once"):
        list(batches)


def test_load_texts_jsonl_field_and_saved_dataset(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(DOCS)))
    assert load_texts(path, text_field="body") == DOCS
    with pytest.raises(ValueError, match="'text' field"):
        load_texts(path)
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"content": DOCS}).save_to_disk(str(tmp_path / "saved"))
    assert load_texts(tmp_path / "saved", text_field="content") == DOCS
