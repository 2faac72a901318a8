"""Concept examples and targets (sae_hooks.concepts) and the text cuts they are made of."""

from __future__ import annotations

import re

import pytest
import torch

from sae_hooks.concepts import (
    centroid_similarity,
    next_word_concept,
    text_examples,
    top_class_concept,
)
from sae_hooks.data.cuts import cut_at_random, cut_before_word, fits_context

UNRELATED = re.compile(r"\b(exceptions?|errors?|raise[sd]?|try|except)\b", re.IGNORECASE)


def test_cut_before_word_ends_right_before_it():
    texts = ["It raises an exception here.", "No such word.", " exception at the start", "x"]
    cut = cut_before_word(texts, " exception", lambda t: len(t) > 0)
    assert cut == ["It raises an"]
    assert cut_before_word(["an exceptional case"], " exception", bool) == []


def test_cut_at_random_is_a_prefix_cut_at_a_word():
    texts = ["alpha beta gamma delta", "one two three", "single"]
    cuts = cut_at_random(texts, bool)
    assert cuts == cut_at_random(texts, bool)  # deterministic
    assert len(cuts) == 2
    for cut, text in zip(cuts, texts, strict=False):
        assert text.startswith(cut) and text[len(cut)] == " "


def test_fits_context_leaves_room_for_bos(tokenizer):
    text = "def f(x): return x"
    n = len(tokenizer(text)["input_ids"])
    assert fits_context(tokenizer, n + 1)(text)
    assert not fits_context(tokenizer, n)(text)
    assert not fits_context(tokenizer, 100)("   ")


def test_next_word_concept_targets_the_next_word(texts):
    from sae_hooks.data import pydoc_texts
    from sae_hooks.models import pydoc_tokenizer

    tok = pydoc_tokenizer()
    concept = next_word_concept(
        "exceptions",
        " exception",
        pydoc_texts(),
        tok,
        unrelated=UNRELATED,
        context_length=128,
        n=4,
        n_random=2,
    )
    (word_id,) = tok(" exception", add_special_tokens=False)["input_ids"]
    logits = torch.zeros(1, 3, tok.vocab_size)
    logits[0, 1, word_id] = 30.0  # the last real token (position 1) predicts the word
    inputs = {"attention_mask": torch.tensor([[1, 1, 0]])}
    assert concept.target(logits, inputs).item() > -1e-6
    assert sum(b["input_ids"].shape[0] for b in concept.positive) == 4
    assert sum(b["input_ids"].shape[0] for b in concept.negative) == 4
    assert concept.name == "exceptions" and concept.n_random == 2
    assert concept.target_name == "log p(' exception') as the next token"
    assert all(b["input_ids"][0, 0] == tok.bos_token_id for b in concept.positive)


def test_text_examples_need_texts(tokenizer):
    with pytest.raises(ValueError, match="at least one positive and one negative"):
        text_examples([], tokenizer, context_length=16)
    (batch,) = text_examples(["a b c " * 40, "d"], tokenizer, context_length=16)
    assert batch["input_ids"].shape == (2, 16)  # one truncated context per text


def test_centroid_similarity_is_one_on_the_centroid(tiny_bert, tokenizer, texts):
    from sae_hooks.eval import run_model

    (batch,) = text_examples(texts[:1], tokenizer, context_length=32)
    target = centroid_similarity(tiny_bert, [batch])
    with torch.no_grad():
        hidden = run_model(tiny_bert, batch)
    torch.testing.assert_close(target(hidden, batch), torch.ones(1))
    assert target(-hidden, batch).item() == pytest.approx(-1.0, abs=1e-5)


def test_top_class_concept_targets_the_positives_top_class(tiny_vit):
    from sae_hooks.data.synthetic_images import RED, shape_batches

    pos = list(shape_batches(4, [RED], image_size=32, batch_size=4))
    concept = top_class_concept(tiny_vit, "red", pos, pos, n_random=3)
    with torch.no_grad():
        logits = tiny_vit(**pos[0]).logits
    label = int(logits.mean(0).argmax())
    torch.testing.assert_close(concept.target(logits, pos[0]), logits[:, label])
    assert concept.target_name.startswith(f"logit of class {label} ")
    assert concept.n_random == 3 and concept.name == "red"
