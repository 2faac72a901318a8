"""Lazy documents: long texts tokenised in pieces give the whole text's ids, streams
(generators, IterableDatasets) capture like lists, and nothing is read twice."""

from __future__ import annotations

import pytest
import torch

import sae_hooks.data.text as text_module
from sae_hooks.data import pydoc_texts, text_batches
from sae_hooks.data.pieces import cut_point, text_pieces
from sae_hooks.store import capture_to_store


def piecewise_ids(tokenizer, text: str, max_chars: int) -> list[int]:
    ids = []
    for piece in text_pieces(text, max_chars):
        ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
    return ids


@pytest.fixture(scope="module")
def long_doc() -> str:
    """The pydoc corpus as one paragraph: prose, code, single and double newlines."""
    return "\n".join(pydoc_texts(300))


def test_pieces_cover_the_text_and_cut_before_a_word(long_doc):
    pieces = list(text_pieces(long_doc, 500))
    assert "".join(pieces) == long_doc and len(pieces) > 20
    assert all(len(p) <= 500 for p in pieces)
    assert all(p[0] == " " and not p[1].isspace() for p in pieces[1:])  # lone spaces exist
    assert list(text_pieces("short", 500)) == ["short"]
    assert cut_point("a\n\n\nb" + "x" * 10, 0, 4) == 3  # no lone space: before the run's last
    assert cut_point("x" * 20, 0, 8) == 8  # no whitespace at all: a hard cut
    with pytest.raises(ValueError, match="max_chars must be >= 2"):
        list(text_pieces("abc", 1))


@pytest.mark.parametrize("max_chars", [97, 1000, 8192])
def test_piecewise_ids_equal_whole_document_ids(long_doc, tokenizer, minilm, max_chars):
    _, minilm_tok = minilm
    for tok in (tokenizer, minilm_tok):
        whole = tok(long_doc, add_special_tokens=False, verbose=False)["input_ids"]
        assert piecewise_ids(tok, long_doc, max_chars) == whole


def test_batches_of_long_documents_do_not_depend_on_the_piece_size(
    long_doc, tokenizer, minilm, monkeypatch
):
    _, minilm_tok = minilm
    docs = [long_doc[:20000], "a short one", long_doc[5000:31000]]
    for tok in (tokenizer, minilm_tok):
        for mode in ("chunk", "truncate"):

            def batches(docs=docs, tok=tok, mode=mode):
                data = text_batches(docs, tok, context_length=32, batch_size=16, mode=mode)
                return [b["input_ids"] for b in data]

            whole = batches()
            monkeypatch.setattr(text_module, "PIECE_CHARS", 300)
            monkeypatch.setattr(text_module, "GROUP_CHARS", 1000)
            pieced = batches()
            monkeypatch.undo()
            assert len(whole) == len(pieced) > 0
            assert all(torch.equal(a, b) for a, b in zip(whole, pieced))


def test_truncate_mode_tokenises_only_the_start_of_a_long_document(tokenizer, monkeypatch):
    seen: list[int] = []
    original = text_module.TextBatches._tokenize

    def counting(self, texts):
        seen.extend(map(len, texts))
        return original(self, texts)

    monkeypatch.setattr(text_module.TextBatches, "_tokenize", counting)
    monkeypatch.setattr(text_module, "PIECE_CHARS", 1000)
    doc = "word " * 100_000
    data = text_batches([doc], tokenizer, context_length=16, batch_size=1, mode="truncate")
    assert len(list(data)) == 1 and sum(seen) <= 1000


@pytest.mark.parametrize("kind", ["generator", "iterable_dataset"])
def test_streams_capture_like_lists(tiny_gpt2, tokenizer, tmp_path, kind):
    docs = pydoc_texts(40)
    if kind == "generator":
        stream = (d for d in docs)
    else:
        datasets = pytest.importorskip("datasets")
        stream = datasets.Dataset.from_dict({"text": docs}).to_iterable_dataset()
    opts = {"context_length": 32, "batch_size": 4}
    listed = capture_to_store(
        tiny_gpt2,
        "resid_post.0",
        text_batches(docs, tokenizer, **opts),
        tmp_path / "a",
        progress=False,
    )
    streamed = capture_to_store(
        tiny_gpt2,
        "resid_post.0",
        text_batches(stream, tokenizer, **opts),
        tmp_path / "b",
        progress=False,
    )
    assert len(listed) == len(streamed) > 100
    assert torch.equal(torch.as_tensor(listed.doc_index()), torch.as_tensor(streamed.doc_index()))
    assert torch.equal(torch.as_tensor(listed.token_ids()), torch.as_tensor(streamed.token_ids()))


def test_invalid_rows_in_a_stream_are_refused_or_skipped(tokenizer, capsys):
    rows = [{"text": t} for t in pydoc_texts(12)]
    rows[5]["text"] = None
    opts = {"context_length": 16, "batch_size": 4}
    with pytest.raises(ValueError, match="document 5 is None"):
        list(text_batches(iter(rows), tokenizer, **opts))
    kept = list(text_batches(iter(rows), tokenizer, skip_invalid=True, **opts))
    expected = list(text_batches([r["text"] for r in rows if r["text"]], tokenizer, **opts))
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(kept, expected))
    assert "skipped 1 rows whose text is not a non-empty string (rows 5)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="document 2 is 3"):
        text_batches(["a b", "c", 3], tokenizer, **opts)  # a list is checked up front
