"""`sae-hooks circuit`: the circuit of a run's SAEs at two or more points for a concept
(`sae_hooks.eval.circuit`), written to <run>/circuits/<concept>.json, which
`sae-hooks report` draws and links from the index."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from sae_hooks.cli.ablate import concept_target
from sae_hooks.cli.common import family_of, model_for_sae, run_dir, starts_with_bos, trained_config
from sae_hooks.cli.options import Option, add_command, model_options, run_options

NAME = "circuit"
TABLE = NAME
HELP = "Nodes and edges between a run's SAEs at consecutive points, for a concept."
EXAMPLE = "sae-hooks circuit --run demo --names l2,l3 --positive pos.txt --concept exceptions"


def options() -> tuple[Option, ...]:
    return (
        *run_options(),
        *model_options(),
        Option(("--context-length",), "tokens per example [default: the run's]", type=int),
        Option(("--names",), "the run's SAEs, comma-separated, in forward order of their points"),
        Option(("--saes-from",), "the folder holding --names [default: the run]"),
        Option(("--positive",), "examples of the concept: a .txt file, one per paragraph"),
        Option(("--concept",), "the circuit's name [default: %(default)s]", default="concept"),
        Option(
            ("--target",),
            "similarity, token:WORD, token:ID or class:INDEX, as for ablate [default: %(default)s]",
            default="similarity",
        ),
        Option(
            ("--node-threshold",),
            "keep latents with |attribution| >= this",
            type=float,
            default=0.01,
        ),
        Option(
            ("--edge-threshold",), "keep edges with |weight| >= this", type=float, default=0.001
        ),
        Option(("--max-nodes",), "at most this many latents per point", type=int, default=8),
        Option(("--out",), "circuit JSON [default: cache/<run>/circuits/<concept>.json]"),
    )


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return add_command(sub, NAME, HELP, options(), run, example=EXAMPLE)


def run(args: argparse.Namespace) -> None:
    from sae_hooks.concepts import text_examples
    from sae_hooks.data import load_texts
    from sae_hooks.eval import circuit
    from sae_hooks.sae import load_sae

    if not (args.names and args.positive):
        raise ValueError("--names (two or more SAEs of the run) and --positive are required")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.concept):
        raise ValueError(f"--concept {args.concept!r} names a file: letters, digits, _ . -")
    args.sae = None
    model, tokenizer = model_for_sae(args)
    if family_of(args).vision:
        raise ValueError("circuit from the CLI takes texts; for images use eval.circuit()")
    folder = Path(args.saes_from) if args.saes_from else run_dir(args).root
    saes = {}
    for name in [n for n in args.names.split(",") if n]:
        where = folder / name / "sae"
        point = trained_config(where).get("point")
        if not where.is_dir() or point is None:
            raise FileNotFoundError(f"no trained SAE with a recorded point at {where}")
        if point in saes:
            raise ValueError(f"two of --names {args.names} are at {point}: one SAE per point")
        saes[point] = load_sae(where).eval()
    ctx, bos = args.context_length, starts_with_bos(args)
    pos = text_examples(load_texts(args.positive), tokenizer, context_length=ctx, prepend_bos=bos)
    found = circuit(
        model, saes, pos, concept_target(args, model, tokenizer, pos),
        node_threshold=args.node_threshold, edge_threshold=args.edge_threshold,
        max_nodes=args.max_nodes, tokenizer=tokenizer,
    )  # fmt: skip
    found.concept, found.target = args.concept, args.target
    out = Path(args.out) if args.out else run_dir(args).root / "circuits" / f"{args.concept}.json"
    found.save(out)
    print(f"{len(found.nodes)} nodes, {len(found.edges)} edges; metric {found.metric:.4f}")
    for e in found.edges[:10]:
        print(f"  {e.source} -> {e.target}: {e.weight:+.4g}")
    print(f"written to {out}; `sae-hooks report` draws it")
