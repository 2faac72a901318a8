"""Concepts for ablation: examples with and without a concept, and what removing it should move.

One target per model kind: the log-prob of the next word (language models), the
closeness of the sentence embedding to the positives' centroid (encoders), the
logit of the positives' top class (classifiers). The recipes, the CLI's `ablate`
and `run_pipeline` build their concepts here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sae_hooks.data import text_batches
from sae_hooks.data.cuts import cut_at_random, cut_before_word, fits_context
from sae_hooks.eval import class_logit, embedding_similarity, run_model, token_logprob
from sae_hooks.eval.ablation import Target
from sae_hooks.metrics import mean_pool

Examples = Sequence[Mapping[str, torch.Tensor]]


@dataclass
class Concept:
    """A concept given by examples, and what its ablation should move."""

    name: str
    positive: Examples
    negative: Examples
    target: Target
    target_name: str
    m: int = 8
    n_random: int = 8


def text_examples(
    texts: Sequence[str],
    tokenizer: Any,
    *,
    context_length: int,
    batch_size: int = 16,
    prepend_bos: bool = False,
) -> list[Mapping[str, torch.Tensor]]:
    """Concept examples: one truncated context per text, in padded batches."""
    if not texts:
        raise ValueError("a concept needs at least one positive and one negative example")
    return list(
        text_batches(
            list(texts),
            tokenizer,
            context_length=context_length,
            batch_size=batch_size,
            mode="truncate",
            prepend_bos=prepend_bos,
        )
    )


def next_word_concept(
    name: str,
    word: str,
    texts: Sequence[str],
    tokenizer: Any,
    *,
    unrelated: re.Pattern[str],
    context_length: int,
    n: int,
    n_random: int = 8,
    device: str | torch.device = "cpu",
) -> Concept:
    """Contexts whose next word is `word` vs contexts cut anywhere else (language models).

    Positives are texts cut right before `word`; negatives are texts that match no part
    of `unrelated`, cut at a random word. Every context starts with BOS, like the
    training contexts. Ablation should lower log p(`word`) (its first token).
    """
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    keep = fits_context(tokenizer, context_length)
    positives = cut_before_word(list(texts), word, keep)[:n]
    negatives = cut_at_random([t for t in texts if not unrelated.search(t)], keep)[:n]
    first = "" if len(ids) == 1 else f" (its first token of {len(ids)})"

    def examples(texts: list[str]) -> list:
        batches = text_examples(texts, tokenizer, context_length=context_length, prepend_bos=True)
        return [b.to(device) for b in batches]

    return Concept(
        name=name,
        positive=examples(positives),
        negative=examples(negatives),
        target=token_logprob(ids[0]),
        target_name=f"log p({word!r}){first} as the next token",
        n_random=n_random,
    )


def centroid_similarity(model: nn.Module, positive: Examples) -> Target:
    """Cosine of the sentence embedding to the clean positives' mean-pooled centroid (encoders)."""
    with torch.no_grad():
        pooled = [mean_pool(run_model(model, b), b.get("attention_mask")) for b in positive]
    return embedding_similarity(torch.cat(pooled).mean(0))


def top_class_concept(
    model: nn.Module, name: str, positive: Examples, negative: Examples, *, n_random: int = 8
) -> Concept:
    """The concept's target: the logit of the class the clean model gives the positives."""
    with torch.no_grad():
        logits = torch.cat([run_model(model, b) for b in positive])
    label = int(logits.float().mean(0).argmax())
    label_name = model.config.id2label.get(label, str(label))
    return Concept(
        name=name,
        positive=positive,
        negative=negative,
        target=class_logit(label),
        target_name=f"logit of class {label} ({label_name!r}), the positives' clean top class",
        n_random=n_random,
    )
