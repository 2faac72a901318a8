"""A store is one capture, identified by content (issue 30 items 6, 7, 8): a resume is
checked against the exact model weights, tokenizer definition and input batches, never
against paths, and a reader stops when the store it reads is replaced. Each test here
failed before its fix."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import POINTS, D, make_batch

from sae_hooks.data import text_batches
from sae_hooks.models import load_model
from sae_hooks.store import (
    ActivationLoader,
    StoreChangedError,
    StoreMismatchError,
    StoreWriter,
    capture_to_store,
    open_store,
)
from sae_hooks.store.layout import SHARDED_ATTR, open_group, rank_location

POINT = "resid_post.1"


def capture(model, data, path, **kw):
    return capture_to_store(model, POINT, data, path, progress=False, chunk_rows=32, **kw)


def same_rows(a, b) -> None:
    np.testing.assert_array_equal(a.token_ids(), b.token_ids())
    np.testing.assert_array_equal(a.doc_index(), b.doc_index())
    np.testing.assert_array_equal(a.read(POINT), b.read(POINT))


def batches(texts, tokenizer, **kw):
    return text_batches(texts, tokenizer, context_length=32, batch_size=5, **kw)


# ------------------------------------------------------------------ 6: paths are not identity


def test_a_tiny_capture_resumes_and_reruns(texts, tmp_path):
    """A second --tiny run rebuilds its model and tokenizer: same content, same rows."""
    model, tok = load_model("gpt2", tiny=True)
    whole = capture(model, batches(texts[:24], tok), tmp_path / "whole")
    capture(model, batches(texts[:24], tok), tmp_path / "s", max_rows=60)
    model2, tok2 = load_model("gpt2", tiny=True)  # as a second `sae-hooks capture --tiny`
    assert tok2 is not tok and tok2.name_or_path == tok.name_or_path  # one folder per content
    same_rows(capture(model2, batches(texts[:24], tok2), tmp_path / "s"), whole)
    same_rows(capture(model2, batches(texts[:24], tok2), tmp_path / "s"), whole)  # a rerun


def test_a_model_directory_copied_elsewhere_resumes(tiny_gpt2, tokenizer, texts, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tiny_gpt2.save_pretrained(tmp_path / "a")
    tokenizer.save_pretrained(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")

    def load(where):
        path = tmp_path / where
        return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(
            path
        )

    (ma, ta), (mb, tb) = load("a"), load("b")
    whole = capture(ma, batches(texts[:24], ta), tmp_path / "whole")
    capture(ma, batches(texts[:24], ta), tmp_path / "s", max_rows=60)
    resumed = capture(mb, batches(texts[:24], tb), tmp_path / "s")
    same_rows(resumed, whole)
    assert resumed.attrs["fingerprint"]["tokenizer"] == str(tmp_path / "a")  # recorded


# ------------------------------------------------------------------ 8: exact fingerprints


def test_a_model_edited_in_any_tensor_is_refused(tiny_gpt2, tokenizer, texts, tmp_path):
    import copy

    data = batches(texts[:24], tokenizer)
    capture(tiny_gpt2, data, tmp_path / "s", max_rows=60)
    edited = copy.deepcopy(tiny_gpt2)
    with torch.no_grad():  # the sampled hash read tensors 0, n/3, 2n/3 and n-1 only
        list(edited.parameters())[1][5, 3] += 1e-3
    with pytest.raises(StoreMismatchError, match="model_sha256: stored") as caught:
        capture(edited, data, tmp_path / "s")
    assert "model_sha256" in caught.value.fields
    assert open_store(tmp_path / "s").n_rows == 60


def test_documents_edited_before_the_committed_point_are_refused(tiny_gpt2, tokenizer, tmp_path):
    """The sampled hash read every other of 2,100 documents: an odd one went unseen."""
    docs = [f"document {i} holds a few words about item {i}" for i in range(2100)]
    capture(tiny_gpt2, batches(docs, tokenizer), tmp_path / "s", max_rows=300)
    committed = int(open_store(tmp_path / "s").doc_index().max())
    assert committed >= 7  # past the first batch, whose hash was compared before
    edited = list(docs)
    edited[7] = "document 7 was edited after the capture began"
    with pytest.raises(StoreMismatchError, match="input batches were not these") as caught:
        capture(tiny_gpt2, batches(edited, tokenizer), tmp_path / "s")
    assert list(caught.value.fields) == ["inputs_hash"]
    # an edit past the committed point is no mix: the resume reads the corpus as it is now
    later = list(docs)
    later[2000] = "document 2000 was edited before anything read it"
    resumed = capture(tiny_gpt2, batches(later, tokenizer), tmp_path / "s", max_rows=600)
    fresh = capture(tiny_gpt2, batches(later, tokenizer), tmp_path / "fresh", max_rows=600)
    same_rows(resumed, fresh)


def test_a_tokenizer_with_another_normaliser_is_refused(tiny_gpt2, tokenizer, tmp_path):
    import copy

    from tokenizers import normalizers

    docs = [f"plain lowercase text number {i}" for i in range(20)] + ["Now Some CAPITALS"] * 20
    capture(tiny_gpt2, batches(docs, tokenizer), tmp_path / "s", max_rows=40)
    lower = copy.deepcopy(tokenizer)
    lower.backend_tokenizer.normalizer = normalizers.Lowercase()  # same vocabulary
    assert lower.get_vocab() == tokenizer.get_vocab()
    with pytest.raises(StoreMismatchError, match="tokenizer_sha256: stored"):
        capture(tiny_gpt2, batches(docs, lower), tmp_path / "s")


def test_a_store_with_the_old_sampled_fingerprint_reads_but_does_not_resume(
    tiny_gpt2, tokenizer, texts, tmp_path
):
    data = batches(texts[:24], tokenizer)
    capture(tiny_gpt2, data, tmp_path / "s", max_rows=60)
    meta = tmp_path / "s" / "zarr.json"
    doc = json.loads(meta.read_text())
    old = {k: v for k, v in doc["attributes"]["fingerprint"].items() if k != "fingerprint_version"}
    doc["attributes"]["fingerprint"] = {**old, "model_weights": "0123456789abcdef"}
    del doc["attributes"]["generation"], doc["attributes"]["inputs_hash"]
    meta.write_text(json.dumps(doc))
    store = open_store(tmp_path / "s")
    assert store.n_rows == 60 and len(list(ActivationLoader(store, POINT, 8))) == 7
    with pytest.raises(StoreMismatchError, match=r"predates exact fingerprints.*overwrite=True"):
        capture(tiny_gpt2, data, tmp_path / "s")
    assert capture(tiny_gpt2, data, tmp_path / "s", overwrite=True).n_rows > 60


# ------------------------------------------------------------------ 7: a store replaced


def write(path, seed, dtype, mode="create", rows=20):
    with StoreWriter(path, mode=mode, points=POINTS, d_model=D, dtype=dtype, chunk_rows=16) as w:
        for i in range(rows):
            w.append(make_batch(seed + i))


def sharded(path, seed, dtype, mode="create"):
    open_group(path, "w", attributes={SHARDED_ATTR: {"version": 1, "world_size": 2}})
    for rank in range(2):
        write(rank_location(path, rank), seed + 100 * rank, dtype, mode)


@pytest.mark.parametrize("layout", ["bfloat16", "float32", "sharded-bfloat16"])
def test_a_store_replaced_while_a_loader_reads_it_stops_the_loader(tmp_path, layout):
    """bfloat16 stores are compressed (read chunk by chunk), float32 ones memory-mapped."""
    path = tmp_path / "s"
    dtype = layout.removeprefix("sharded-")
    make = sharded if layout.startswith("sharded") else write
    make(path, 0, dtype)
    loader = ActivationLoader(path, POINTS[0], 8, buffer_chunks=1, prefetch=1, val_fraction=0)
    assert len(loader) > 20
    batches = iter(loader)
    next(batches)
    make(path, 1000, dtype, mode="overwrite")  # `capture --overwrite` while training reads
    with pytest.raises(StoreChangedError, match=rf"store {path}.* changed while it was being"):
        for _ in batches:
            pass
    ActivationLoader(path, POINTS[0], 8).state_dict()  # the new store opens as usual


def test_a_store_growing_under_a_loader_is_not_a_change(tmp_path):
    path = tmp_path / "s"
    w = StoreWriter(path, points=POINTS, d_model=D, dtype="bfloat16", chunk_rows=16)
    for i in range(20):
        w.append(make_batch(i))
    w.flush()
    loader = ActivationLoader(path, POINTS[0], 8, buffer_chunks=1, prefetch=1, val_fraction=0)
    batches = iter(loader)
    next(batches)
    for i in range(20, 30):  # a capture still committing rows: the loader's rows stand
        w.append(make_batch(i))
    w.close()
    assert sum(1 for _ in batches) == len(loader) - 1
