"""Concept ablation on the main job (recipes/minilm_pydoc.py's "exceptions" concept):
the top m latents chosen by activation difference vs by attribution vs m random firing
latents, with and without the dense latents. Reads a finished run; writes nothing.

    .venv/bin/python bench/concept_selection.py [--run cache/minilm_pydoc] [--m 8]

The concept is built exactly as the recipe builds it (48 positives mentioning
"exceptions", 48 negatives mentioning no exception / error / raise / try / except,
target: cosine of the sentence embedding to the clean positives' centroid).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from sae_hooks.concepts import centroid_similarity, text_examples
from sae_hooks.data import pydoc_texts
from sae_hooks.eval import concept_ablation
from sae_hooks.models import offline
from sae_hooks.recipe import minilm_and_pydoc
from sae_hooks.sae import load_sae

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
from minilm_pydoc import CONCEPT, UNRELATED  # noqa: E402  (the recipe's own concept)

SETTINGS = [
    ("difference", True),  # the selection before issue 33
    ("difference", False),
    ("attribution", True),
    ("attribution", False),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "cache" / "minilm_pydoc")
    parser.add_argument("--m", type=int, default=8)
    parser.add_argument("--n-random", type=int, default=8)
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument(
        "--only", choices=[f"{s}-{'kept' if k else 'excluded'}" for s, k in SETTINGS],
        action="append", help="run only these settings (repeatable; default: all four)",
    )  # fmt: skip
    args = parser.parse_args()
    offline()
    torch.manual_seed(0)
    model, tokenizer, _ = minilm_and_pydoc(False, None)
    sae = load_sae(args.run / "train" / "sae")
    positives = [t for t in pydoc_texts() if CONCEPT.search(t)][: args.examples]
    negatives = [t for t in pydoc_texts() if not UNRELATED.search(t)][: args.examples]
    pos = text_examples(positives, tokenizer, context_length=128)
    neg = text_examples(negatives, tokenizer, context_length=128)
    target = centroid_similarity(model, pos)
    print(f"run {args.run}, point resid_post.3, m={args.m}, {args.n_random} random draws")
    print("| select | dense | effect on positives | on negatives | random (mean ± sd) "
          "| latents (density) | dense in raw top m |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for select, keep in SETTINGS:
        if args.only and f"{select}-{'kept' if keep else 'excluded'}" not in args.only:
            continue
        res = concept_ablation(
            model, "resid_post.3", sae, pos, neg, target, m=args.m,
            n_random=args.n_random, select=select, keep_dense=keep,
        )  # fmt: skip
        mean, std = res.random_effect
        neg_effect = res.concept_negative - res.clean_negative
        chosen = ", ".join(f"{i} ({d:.0%})" for i, d in zip(res.latents, res.density))
        print(
            f"| {select} | {'kept' if keep else 'excluded'} | {res.effect:+.4f} | "
            f"{neg_effect:+.4f} | {mean:+.4f} ± {std:.4f} | {chosen} | {res.dense} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
