#!/usr/bin/env python
"""A BatchTopK SAE on GPT-2 small (Hugging Face), trained on a text corpus.

GPT-2's weights are not bundled: save them once with save_pretrained on a
machine with internet access and pass the directory (docs/recipes/gpt2_small.md).
Captures resid_post.6 over every paragraph of the corpus but a held-out tenth,
trains a BatchTopK SAE (6,144 latents = 8 x 768, k=32 per token), splices it
back to measure next-token loss (CE clean/spliced/zero/mean, loss recovered,
KL), and ablates the latents that carry the concept "exceptions": contexts cut
right before the word " exception", where the target is log p(" exception").

  python recipes/gpt2_small.py --model gpt2                       # from the hub (cached)
  python recipes/gpt2_small.py --model-dir models/gpt2
  python recipes/gpt2_small.py --model-dir models/gpt2 --device cuda --total-tokens 20000000
  python recipes/gpt2_small.py --model-dir models/gpt2 --data my_corpus.jsonl
  python recipes/gpt2_small.py --tiny                             # random-init small model, seconds
"""

from __future__ import annotations

import argparse
import re

from sae_hooks.concepts import next_word_concept
from sae_hooks.data import load_texts, pydoc_texts, text_batches
from sae_hooks.data.splits import split_texts
from sae_hooks.pipeline import PipelineResult, run_pipeline
from sae_hooks.recipe import (
    eval_batch_count,
    print_summary,
    recipe_corpus,
    recipe_model,
    recipe_parser,
    recipe_record,
    recipe_run_dir,
    run_recipe,
    train_config,
    user_errors,
)

DEFAULTS = {
    "architecture": "batchtopk",
    "nb_concepts": 6144,
    "k_per_token": 32,
    "batch_size": 4096,
    "total_tokens": 2_000_000,
    "log_every": 25,
    "checkpoint_every": 100,
}
TINY = {**DEFAULTS, "nb_concepts": 256, "k_per_token": 8, "batch_size": 256, "total_tokens": 15_000}
POINT, TINY_POINT = "resid_post.6", "resid_post.2"  # the middle block of 12 (real) or 4 (tiny)
WORD = " exception"  # one token for GPT-2 and for the tiny pydoc BPE tokenizer
UNRELATED = re.compile(r"\b(exceptions?|errors?|raise[sd]?|try|except)\b", re.IGNORECASE)


def parse(argv: list[str] | None, doc: str = __doc__) -> argparse.Namespace:
    p = recipe_parser(doc, "a local GPT-2 directory saved with save_pretrained", DEFAULTS)
    p.add_argument("--data", default="pydoc", help="'pydoc' (default), a .txt/.jsonl file or dir")
    p.add_argument("--point", help=f"hook point (default {POINT}; {TINY_POINT} with --tiny)")
    p.add_argument("--context-length", type=int, default=128, help="tokens per context")
    return p.parse_args(argv)


def run(argv: list[str] | None, *, family: str, name: str, doc: str) -> PipelineResult:
    """The recipe for a GPT-2 loaded as `family` ("gpt2" or "tl-gpt2")."""
    args = parse(argv, doc)
    device = args.device or "cpu"
    defaults, point = (TINY, TINY_POINT) if args.tiny else (DEFAULTS, POINT)
    ctx = args.context_length
    with user_errors():  # e.g. no weights, or a context longer than the model's
        config = train_config(args, defaults)
        loaded = recipe_model(args, family)
        model, tokenizer, bos = loaded.model, loaded.processor, loaded.family.prepend_bos
        texts = load_texts(args.data)[: 200 if args.tiny else None]
        train_texts, eval_texts = split_texts(texts, f"--data {args.data}")
        # Every context starts with <|endoftext|>, as GPT-2 saw in training; its activation
        # (an attention sink with an outsized norm) is kept out of the store and the FVU.
        data = text_batches(
            train_texts,
            tokenizer,
            context_length=ctx,
            batch_size=args.capture_batch_size,
            prepend_bos=bos,
        )
        eval_data = list(
            text_batches(eval_texts, tokenizer, context_length=ctx, batch_size=16, prepend_bos=bos)
        )
    # The examples always come from pydoc_data (whatever --data is), so the concept means
    # the same for every corpus; its ablation should lower log p(" exception").
    concept = next_word_concept(
        "exceptions",
        WORD,
        pydoc_texts(),
        tokenizer,
        unrelated=UNRELATED,
        context_length=ctx,
        n=8 if args.tiny else 48,
        n_random=4 if args.tiny else 8,
        device=device,
    )
    tl = loaded.family.backend == "tl"
    corpus = recipe_corpus(args.data, context_length=ctx)
    name_of_model = loaded.identity.get("name_or_path") or ("tiny-gpt2" if args.tiny else "gpt2")
    return run_pipeline(
        model,
        args.point or point,
        data,
        [b.to(device) for b in eval_data[: eval_batch_count(args)]],
        config,
        recipe_run_dir(args, name),
        concept=concept,
        max_rows=args.max_rows,
        drop_bos=bos,
        model_name=name_of_model + (" (TransformerLens)" if tl else ""),
        source=f"{args.data} ({len(train_texts)} documents)",
        report=not args.no_report,
        tokenizer=tokenizer,
        unembed=model.W_U if tl else model.lm_head.weight,
        progress=not args.quiet,
        corpus=corpus,
        record=recipe_record(loaded, args.point or point, corpus),
    )


def main(argv: list[str] | None = None) -> None:
    print_summary(run(argv, family="gpt2", name="gpt2_small", doc=__doc__))


if __name__ == "__main__":
    run_recipe(main)
