"""`sae-hooks export`: a run's SAE for other tools (SAELens, the Hugging Face layout,
Neuronpedia JSON), or a run's transcoder set for circuit-tracer; the hook point and the
model come from the run."""

from __future__ import annotations

import argparse
from pathlib import Path

from sae_hooks.cli.common import run_dir, sae_and_point
from sae_hooks.cli.options import Option, add_command, run_options, sae_options

NAME = "export"
TABLE = NAME
HELP = (
    "Write a run's SAE for other tools (SAELens, the Hugging Face layout, Neuronpedia JSON) "
    "or its transcoder set for circuit-tracer."
)
EXAMPLE = "sae-hooks export --run demo --format saelens --out exported/demo"


def options() -> tuple[Option, ...]:
    return (
        *run_options(),
        *sae_options(),
        Option(
            ("--format",),
            "saelens: cfg.json + sae_weights.safetensors; hf: save_pretrained's layout; "
            "neuronpedia: latent activations + explanation inputs; circuit-tracer: the "
            "transcoder set (one mlp_in.L -> mlp_out.L transcoder per layer, 0..n-1) as "
            "config.yaml + layer_L.safetensors [default: %(default)s]",
            choices=("saelens", "hf", "neuronpedia", "circuit-tracer"),
            default="hf",
        ),
        Option(("--out",), "output directory [default: cache/<run>/export-<format>]"),
        Option(("--push-to-hub",), "hf: also upload to this Hub repo", metavar="REPO"),
        Option(("--n-examples",), "neuronpedia: contexts per latent", type=int, default=16),
        Option(
            ("--transcoders",),
            "circuit-tracer: the folder holding the set, one <name>/sae per layer (a run, "
            "or a train_many / train_transcoder_set folder) [default: the run]",
        ),
    )


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return add_command(sub, NAME, HELP, options(), run, example=EXAMPLE)


def run(args: argparse.Namespace) -> None:
    from sae_hooks.interop import identity_from_run
    from sae_hooks.runrecord import load_tokenizer, read_run_record

    if args.format == "circuit-tracer":
        export_transcoder_set(args)
        return
    sae, point = sae_and_point(args)
    run_at = run_dir(args)
    record = read_run_record(Path(args.sae) if args.sae else run_at.root)
    home = Path(args.sae).parent if args.sae else run_at.root / args.name
    identity = identity_from_run(home.parent, home.name, point=point)
    out = Path(args.out) if args.out else run_at.export_dir(args.format)
    if args.format == "saelens":
        from sae_hooks.interop import export_saelens

        export_saelens(sae, out, point=point, identity=identity)
    elif args.format == "hf":
        from sae_hooks.interop.hub import push_to_hub, save_pretrained

        save_pretrained(sae, out, point=point, identity=identity, repo_id=args.push_to_hub)
        if args.push_to_hub:
            push_to_hub(sae, args.push_to_hub, point=point, identity=identity)
            print(f"uploaded to https://huggingface.co/{args.push_to_hub}")
    else:
        from sae_hooks.interop.neuronpedia import export_neuronpedia

        if not run_at.store.is_dir():
            raise FileNotFoundError(
                f"neuronpedia export reads the run's store: none at {run_at.store}"
            )
        export_neuronpedia(
            sae,
            str(run_at.store),
            out,
            point=point,
            tokenizer=load_tokenizer(record) if record else None,
            identity=identity,
            sae_id=f"{point}-{args.name}",
            n_examples=args.n_examples,
            progress=not args.quiet,
        )
    print(f"{args.format} export written to {out}")


def export_transcoder_set(args: argparse.Namespace) -> None:
    """--format circuit-tracer: every transcoder of the run (or --transcoders), by layer."""
    from sae_hooks.interop import identity_from_run
    from sae_hooks.interop.circuit_tracer import export_circuit_tracer, find_transcoder_set
    from sae_hooks.sae import load_sae

    run_at = run_dir(args)
    folder = Path(args.transcoders) if args.transcoders else run_at.root
    found = find_transcoder_set(folder)
    first = found[min(found)].parent
    model_name = identity_from_run(first.parent, first.name).model_name
    transcoders = {layer: load_sae(where).eval() for layer, where in found.items()}
    out = Path(args.out) if args.out else run_at.export_dir(args.format)
    export_circuit_tracer(transcoders, out, model_name=model_name)
    print(f"circuit-tracer export of {len(found)} layers ({folder}) written to {out}")
