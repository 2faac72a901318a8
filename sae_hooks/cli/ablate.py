"""`sae-hooks ablate`: ablate the latents that separate positive from negative
examples of a concept, against random latents as the control; one result file per
concept name (ablation/NAME.json), so experiments do not overwrite each other."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sae_hooks.cli.common import (
    check_model_matches_store,
    check_token_target,
    family_of,
    model_for_sae,
    output,
    sae_and_point,
    starts_with_bos,
)
from sae_hooks.cli.options import Option, add_command, model_options, run_options, sae_options
from sae_hooks.metrics import DENSE_FRACTION
from sae_hooks.rundir import RunDir

NAME = "ablate"
TABLE = NAME
HELP = "Ablate the latents that separate positive from negative examples, vs random ones."
EXAMPLE = "sae-hooks ablate --run demo --positive pos.txt --negative neg.txt"


def options() -> tuple[Option, ...]:
    return (
        *run_options(),
        *model_options(),
        Option(("--context-length",), "tokens per example [default: the run's]", type=int),
        *sae_options(),
        Option(("--positive",), "examples of the concept: a .txt file, one per paragraph"),
        Option(("--negative",), "examples without it, same format"),
        Option(
            ("--target",),
            "similarity (encoders: cosine to the positives' centroid), token:WORD or "
            "token:ID (LMs: log-prob of a next token, e.g. 'token: exception'), or "
            "class:INDEX (classifiers) [default: %(default)s]",
            default="similarity",
        ),
        Option(
            ("--concept",),
            "the concept's name; the result goes to ablation/NAME.json, one file per concept "
            "[default: the --positive file's name, plus the --target unless 'similarity']",
            metavar="NAME",
        ),
        Option(("-m",), "latents to ablate [default: %(default)s]", type=int, default=8),
        Option(("--n-random",), "random control draws", type=int, default=8),
        Option(("--seed",), "seed of the random control", type=int, default=0),
        Option(
            ("--select",),
            "how the m latents are chosen: difference (mean activation on positives minus "
            "negatives) or attribution (gradient x activation on the target) "
            "[default: %(default)s]",
            choices=("difference", "attribution"),
            default="difference",
        ),
        Option(
            ("--keep-dense",),
            "let dense latents (firing on more than --dense-above of the tokens) be chosen",
            action="store_true",
        ),
        Option(
            ("--dense-above",),
            "the firing fraction above which a latent is dense [default: %(default)s]",
            type=float,
            default=DENSE_FRACTION,
        ),
    )


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return add_command(sub, NAME, HELP, options(), run, example=EXAMPLE)


def token_id(value: str, tokenizer: Any) -> int:
    """token:ID or token:WORD -> one token id (a WORD must be exactly one token)."""
    vocab = getattr(tokenizer, "vocab_size", None)
    if value.isdigit():
        token = int(value)
    else:
        ids = tokenizer(value, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = tokenizer.convert_ids_to_tokens(ids)
            raise ValueError(
                f"--target token:{value!r} is {len(ids)} tokens {pieces}; give one token "
                "(GPT-2 words carry their leading space: 'token: exception') or token:ID"
            )
        token = ids[0]
    if vocab is not None and not 0 <= token < len(tokenizer):
        raise ValueError(f"--target token:{value}: the vocabulary has ids 0..{len(tokenizer) - 1}")
    return token


def concept_target(args: argparse.Namespace, model: Any, tokenizer: Any, positives: Any) -> Any:
    """The measured output --target names."""
    from sae_hooks.concepts import centroid_similarity
    from sae_hooks.eval import class_logit, token_logprob

    kind, _, value = args.target.partition(":")
    if kind == "similarity":
        return centroid_similarity(model, positives)
    if kind == "token" and value:
        check_token_target(model, args.target)
        return token_logprob(token_id(value, tokenizer))
    if kind == "class" and value.isdigit():
        return class_logit(int(value))
    raise ValueError(
        f"--target {args.target!r} is not valid: use similarity, token:WORD, token:ID "
        "or class:INDEX"
    )


def concept_name(args: argparse.Namespace) -> str:
    """--concept, else named after the examples (and the target, when not the default)."""
    if args.concept:
        return args.concept
    name = Path(args.positive).stem
    return name if args.target == "similarity" else f"{name} {args.target}"


def run(args: argparse.Namespace) -> None:
    from sae_hooks.concepts import text_examples
    from sae_hooks.data import load_texts
    from sae_hooks.eval import concept_ablation

    if not (args.positive and args.negative):
        raise ValueError("--positive and --negative are required: files of example texts")
    model, tokenizer = model_for_sae(args)
    if family_of(args).vision:
        raise ValueError("ablate from the CLI takes texts; for images use concept_ablation()")
    sae, point = sae_and_point(args)
    check_model_matches_store(args, model)
    ctx, bos = args.context_length, starts_with_bos(args)
    pos = text_examples(load_texts(args.positive), tokenizer, context_length=ctx, prepend_bos=bos)
    neg = text_examples(load_texts(args.negative), tokenizer, context_length=ctx, prepend_bos=bos)
    target = concept_target(args, model, tokenizer, pos)
    result = concept_ablation(
        model,
        point,
        sae,
        pos,
        neg,
        target,
        m=args.m,
        n_random=args.n_random,
        seed=args.seed,
        select=args.select,
        keep_dense=args.keep_dense,
        dense_above=args.dense_above,
        progress=not args.quiet,
    )
    concept = concept_name(args)
    out = output(args, RunDir.concept_ablation_name(concept))
    record = {"concept": concept, "target": args.target, **result.to_dict()}
    out.write_text(json.dumps(record, indent=2))
    print(result.table())
    print(f"written to {out}")
