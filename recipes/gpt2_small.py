#!/usr/bin/env python
"""A BatchTopK SAE on GPT-2 small (Hugging Face), trained on a text corpus.

GPT-2's weights are not bundled: save them once with save_pretrained on a
machine with internet access and pass the directory (docs/recipes/gpt2_small.md).
Captures resid_post.6 over every paragraph of the corpus but a held-out tenth,
trains a BatchTopK SAE (6,144 latents = 8 x 768, k=32 per token), splices it
back to measure next-token loss (CE clean/spliced/zero/mean, loss recovered,
KL), and ablates the latents that carry the concept "exceptions": contexts cut
right before the word " exception", where the target is log p(" exception").

  python recipes/gpt2_small.py --model-dir models/gpt2
  python recipes/gpt2_small.py --model-dir models/gpt2 --device cuda --total-tokens 20000000
  python recipes/gpt2_small.py --model-dir models/gpt2 --data my_corpus.jsonl
  python recipes/gpt2_small.py --tiny                             # random-init small model, seconds
"""

from __future__ import annotations

import argparse
import random
import re
from collections.abc import Callable
from typing import Any

from sae_hooks.cli_args import fail, recipe_parser, train_config
from sae_hooks.data import load_texts, pydoc_texts, text_batches
from sae_hooks.eval import token_logprob
from sae_hooks.models import load_model
from sae_hooks.pipeline import Concept, PipelineResult, run_dir_for, run_pipeline, text_examples

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


def fits(tokenizer: Any, context_length: int) -> Callable[[str], bool]:
    """Whether a text has words and fits one context whole after <|endoftext|>, so its
    last token stays last."""
    room = context_length - 1
    return lambda text: bool(text.strip()) and len(tokenizer(text)["input_ids"]) <= room


def cut_before_word(texts: list[str], word: str, keep: Callable[[str], bool]) -> list[str]:
    """Each text that contains `word`, cut right before its first occurrence."""
    pattern = re.compile(re.escape(word) + r"\b")
    cut = [t[: m.start()] for t in texts if (m := pattern.search(t))]
    return [t for t in cut if keep(t)]


def cut_at_random(texts: list[str], keep: Callable[[str], bool], seed: int = 0) -> list[str]:
    """Each text cut right before a random one of its words (a deterministic choice)."""
    rng = random.Random(seed)
    out = []
    for text in texts:
        spaces = [m.start() for m in re.finditer(" ", text) if m.start() > 0]
        if spaces:
            cut = text[: rng.choice(spaces)]
            if keep(cut):
                out.append(cut)
    return out


def exceptions_concept(
    tokenizer: Any, context_length: int, *, n: int, n_random: int, device: str = "cpu"
) -> Concept:
    """Python-docs contexts whose next word is " exception" vs contexts cut anywhere else.

    The examples always come from pydoc_data (whatever --data is), so the concept
    means the same for every corpus; its ablation should lower log p(" exception").
    """
    ids = tokenizer(WORD, add_special_tokens=False)["input_ids"]
    keep = fits(tokenizer, context_length)
    texts = pydoc_texts()
    positives = cut_before_word(texts, WORD, keep)[:n]
    negatives = cut_at_random([t for t in texts if not UNRELATED.search(t)], keep)[:n]
    first = "" if len(ids) == 1 else f" (its first token of {len(ids)})"

    def examples(texts: list[str]) -> list:
        batches = text_examples(
            texts, tokenizer, context_length=context_length, prepend_bos=True
        )  # like the training contexts
        return [b.to(device) for b in batches]

    return Concept(
        name="exceptions",
        positive=examples(positives),
        negative=examples(negatives),
        target=token_logprob(ids[0]),
        target_name=f"log p({WORD!r}){first} as the next token",
        n_random=n_random,
    )


def run(argv: list[str] | None, *, family: str, name: str, doc: str) -> PipelineResult:
    """The recipe for a GPT-2 loaded as `family` ("gpt2" or "tl-gpt2")."""
    args = parse(argv, doc)
    device = args.device or "cpu"
    defaults, point = (TINY, TINY_POINT) if args.tiny else (DEFAULTS, POINT)
    try:
        config = train_config(args, defaults)
        model, tokenizer = load_model(family, args.model_dir, tiny=args.tiny, device=device)
        texts = load_texts(args.data)[: 200 if args.tiny else None]
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    if len(texts) < 10:
        fail(
            f"--data {args.data} holds {len(texts)} documents; need at least 10 (a tenth is held out)"
        )
    held_out = len(texts) // 10
    train_texts, eval_texts = texts[:-held_out], texts[-held_out:]
    ctx = args.context_length
    # Every context starts with <|endoftext|>, as GPT-2 saw in training; its activation
    # (an attention sink with an outsized norm) is kept out of the store and the FVU.
    try:
        data = text_batches(
            train_texts,
            tokenizer,
            context_length=ctx,
            batch_size=args.capture_batch_size,
            prepend_bos=True,
        )
        eval_data = list(
            text_batches(eval_texts, tokenizer, context_length=ctx, batch_size=16, prepend_bos=True)
        )
    except ValueError as e:  # e.g. a context longer than the model's
        fail(str(e))
    eval_data = [b.to(device) for b in eval_data[: args.eval_batches or (2 if args.tiny else 8)]]
    concept = exceptions_concept(
        tokenizer, ctx, n=8 if args.tiny else 48, n_random=4 if args.tiny else 8, device=device
    )

    tl = family.startswith("tl-")
    return run_pipeline(
        model,
        args.point or point,
        data,
        eval_data,
        config,
        run_dir_for(args.run_name or (f"{name}_tiny" if args.tiny else name), args.cache),
        concept=concept,
        max_rows=args.max_rows,
        drop_bos=True,
        model_name=("tiny-gpt2" if args.tiny else "gpt2") + (" (TransformerLens)" if tl else ""),
        source=f"{args.data} ({len(train_texts)} documents)",
        report=not args.no_report,
        tokenizer=tokenizer,
        unembed=model.W_U if tl else model.lm_head.weight,
        progress=not args.quiet,
    )


def main(argv: list[str] | None = None) -> None:
    result = run(argv, family="gpt2", name="gpt2_small", doc=__doc__)
    print()
    print(result.summary())


if __name__ == "__main__":
    main()
