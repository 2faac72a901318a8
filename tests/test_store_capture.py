"""capture_to_store end to end on a tiny GPT-2: rows, metadata, resume, max_rows."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from helpers import Interrupted

from sae_hooks.data import text_batches
from sae_hooks.store import capture_to_store, open_store

POINTS = ["resid_post.1", "resid_post.2"]


@pytest.fixture()
def data(texts, tokenizer):
    return text_batches(texts[:24], tokenizer, context_length=32, batch_size=5)


def reference(model, data):
    """Rows straight from output_hidden_states, pad dropped: what the store must hold."""
    acts, tokens, docs = {p: [] for p in POINTS}, [], []
    for batch in data:
        mask = batch["attention_mask"].bool()
        with torch.no_grad():
            hidden = model(**batch, output_hidden_states=True).hidden_states
        for p in POINTS:
            acts[p].append(hidden[int(p.split(".")[1]) + 1][mask])
        tokens.append(batch["input_ids"][mask])
        rows = torch.arange(batch.n_docs)[:, None].expand_as(mask)
        docs.append(rows[mask] + batch.doc_offset)
    return {p: torch.cat(v) for p, v in acts.items()}, torch.cat(tokens), torch.cat(docs)


def test_capture_matches_hidden_states(tiny_gpt2, data, tmp_path):
    store = capture_to_store(tiny_gpt2, POINTS, data, tmp_path / "s", progress=False, chunk_rows=64)
    acts, tokens, docs = reference(tiny_gpt2, data)
    assert store.n_rows == len(tokens) and store.points == POINTS
    assert store.committed_inputs == len(list(data))
    np.testing.assert_array_equal(store.token_ids(), tokens.numpy())
    np.testing.assert_array_equal(store.doc_index(), docs.numpy())
    for p in POINTS:
        np.testing.assert_allclose(store.read(p), acts[p].numpy(), rtol=1e-5, atol=1e-5)
        mean, _ = store.stats(p)
        torch.testing.assert_close(mean, acts[p].double().mean(0).float(), rtol=1e-4, atol=1e-5)
    assert store.model and "24 documents" in store.source


@pytest.mark.parametrize("after", [1, 3])
def test_interrupted_capture_resumes_to_the_same_store(tiny_gpt2, data, tmp_path, after):
    full = capture_to_store(
        tiny_gpt2, POINTS, data, tmp_path / "full", progress=False, chunk_rows=64
    )
    with pytest.raises(KeyboardInterrupt):
        capture_to_store(
            tiny_gpt2,
            POINTS,
            Interrupted(data, after),
            tmp_path / "r",
            progress=False,
            chunk_rows=64,
        )
    assert open_store(tmp_path / "r").committed_inputs == after
    resumed = capture_to_store(tiny_gpt2, POINTS, data, tmp_path / "r", progress=False)
    np.testing.assert_array_equal(resumed.token_ids(), full.token_ids())
    np.testing.assert_array_equal(resumed.doc_index(), full.doc_index())
    np.testing.assert_array_equal(resumed.read(POINTS[1]), full.read(POINTS[1]))
    again = capture_to_store(tiny_gpt2, POINTS, data, tmp_path / "r", progress=False)
    assert again.n_rows == full.n_rows  # a finished store gains nothing


def test_max_rows_plain_dicts_and_memory_url(tiny_gpt2, data):
    url = f"memory://sae-hooks-capture/{uuid.uuid4().hex}"
    dicts = [dict(b) for b in data]  # no doc_offset: counted from the batch sizes
    store = capture_to_store(
        tiny_gpt2, POINTS[0], dicts, url, dtype="bfloat16", max_rows=100, progress=False
    )
    assert store.n_rows == 100 and store.dtype == "bfloat16"
    _, tokens, docs = reference(tiny_gpt2, data)
    np.testing.assert_array_equal(store.token_ids(), tokens[:100].numpy())
    np.testing.assert_array_equal(store.doc_index(), docs[:100].numpy())


def test_resume_with_another_model_is_refused(tiny_gpt2, data, tmp_path):
    """Models are compared by their weights, not their names (issue 30 item 6): the same
    weights under another name resume, other weights are refused."""
    capture_to_store(tiny_gpt2, POINTS, data, tmp_path / "s", progress=False, max_rows=10)
    other = type(tiny_gpt2)(tiny_gpt2.config).eval()
    with pytest.raises(ValueError, match="model_sha256"):
        capture_to_store(other, POINTS, data, tmp_path / "s", progress=False, max_rows=20)
    renamed = capture_to_store(
        tiny_gpt2, POINTS, data, tmp_path / "s", model_name="other", progress=False, max_rows=20
    )
    assert renamed.n_rows == 20
    with pytest.raises(FileExistsError, match="mode='resume'"):
        capture_to_store(tiny_gpt2, POINTS, data, tmp_path / "s", resume=False, progress=False)
