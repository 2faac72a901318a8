"""`sae-hooks eval`: the trained SAE spliced into the model: FVU, L0, dead latents,
downstream metrics, on the held-out part of the run's corpus."""

from __future__ import annotations

import argparse

from sae_hooks.cli.common import (
    check_model_matches_store,
    input_batches,
    model_for_sae,
    output,
    resolve_part,
    sae_and_point,
    starts_with_bos,
    target_point,
)
from sae_hooks.cli.options import (
    Option,
    add_command,
    data_options,
    model_options,
    part_option,
    run_options,
    sae_options,
)
from sae_hooks.rundir import RunDir

NAME = "eval"
TABLE = NAME
HELP = "Splice the trained SAE into the model: FVU, L0, dead latents, downstream metrics."
EXAMPLE = "sae-hooks eval --run gpt2 --max-batches 20"


def options() -> tuple[Option, ...]:
    return (
        *run_options(),
        *model_options(),
        *data_options(),
        *sae_options(),
        Option(("--max-batches",), "batches to evaluate", type=int, default=20),
        part_option(
            ("held-out", "all"),
            "held-out: the last tenth of the documents, never captured; all: the whole corpus",
        ),
    )


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return add_command(sub, NAME, HELP, options(), run, example=EXAMPLE)


def run(args: argparse.Namespace) -> None:
    from sae_hooks.atomic import write_text_atomic
    from sae_hooks.eval.core import evaluate_reconstruction_and_core, write_core_eval

    resolve_part(args, "held-out")
    model, processor = model_for_sae(args)
    sae, point = sae_and_point(args)
    check_model_matches_store(args, model)
    data = input_batches(args, model, processor, args.part, args.max_batches)
    paired = getattr(sae, "paired", False)
    if paired:  # a transcoder: replace the MLP output it predicts
        from sae_hooks.eval import evaluate_transcoder

        result = evaluate_transcoder(
            model,
            point,
            target_point(args),
            sae,
            data,
            max_batches=args.max_batches,
            progress=not args.quiet,
        )
        core = None
    else:  # one pass feeds eval.json and SAEBench's core metrics, with the same rows
        result, core = evaluate_reconstruction_and_core(
            model,
            point,
            sae,
            data,
            max_batches=args.max_batches,
            drop_bos=starts_with_bos(args),
            progress=not args.quiet,
        )
    out = output(args, RunDir.EVAL)
    write_text_atomic(out, result.to_json())
    if core is not None:  # SAEBench's core metrics are defined for SAEs on one point
        write_core_eval(out.parent, core)
    print(result.summary(selection=getattr(sae, "selection", None)))
    print(f"on the {args.part} part of {args.data}; written to {out}")
