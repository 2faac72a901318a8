"""`sae-hooks report RUN_DIR`: training curves and the HTML feature dashboard of a run.

On a run directory it finds the SAE called --name, the run's store, its ablations, its
tokenizer and its model (run.json: the unembedding, for the tokens a latent promotes and
suppresses) by itself; on a sweep directory it also draws the frontier.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from sae_hooks.cli.options import Option, add_command, model_options, name_option, quiet_option
from sae_hooks.rundir import RunDir

NAME = "report"
TABLE = NAME
HELP = "training curves and an HTML feature dashboard for a run"
DESCRIPTION = (
    "Write RUN_DIR/report/ (open index.html in a browser, no server needed): the run at a "
    "glance, an index of every latent, a page per latent, training.png."
)


def latent_ids(text: str) -> list[int]:
    """--latents 3,17,42 -> [3, 17, 42]."""
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--latents takes latent ids separated by commas, e.g. 3,17,42; got {text!r}"
        ) from err


def options() -> tuple[Option, ...]:
    return (
        Option(("run_dir",), "a run directory written by train", metavar="RUN_DIR", nargs="?"),
        Option(("--run",), "run name: cache/<run> (instead of RUN_DIR)"),
        Option(("--cache",), "with --run: cache directory [default: $SAE_HOOKS_CACHE or ./cache]"),
        Option(("--store",), "activation store (path or URL) to compute the dashboard on"),
        Option(("--point",), "hook point in the store (default: the run's own)"),
        Option(("--tokenizer",), "local tokenizer directory, to show tokens as text"),
        Option(("--out",), "output directory (default: RUN_DIR/report)"),
        Option(("--sae",), "sweep runs: the SAE whose dashboard to build (default: first)"),
        Option(("--images",), "folder of the images an image store was captured from"),
        Option(("--latents",), "extra latent ids, e.g. 3,17", type=latent_ids, default=[]),
        Option(
            ("--n-latents",),
            "examples only for the N most often firing latents (default: all latents)",
            type=int,
        ),
        Option(("--n-examples",), "top contexts per latent", type=int, default=8),
        Option(("--max-rows",), "scan only the first N rows of the store", type=int),
        Option(
            ("--ablation",),
            "an AblationResult saved with to_json() (repeatable)",
            action="append",
            default=[],
            metavar="JSON",
        ),
        *model_options(),
        Option(("--config",), "run.toml ([report] table)"),
        name_option("which SAE of a run directory"),
        quiet_option(),
    )


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return add_command(
        sub, NAME, HELP, options(), run, description=DESCRIPTION, formatter=argparse.HelpFormatter
    )


def read_ablation(path: str) -> dict:
    """One --ablation file: a JSON object (with its "file"), or an error naming the file."""
    from sae_hooks.report.summary import read_ablation_record

    try:
        data = read_ablation_record(Path(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"--ablation {path}: no such file") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"--ablation {path} is not valid JSON: {err}") from None
    if not data:
        raise ValueError(f"--ablation {path} must hold a JSON object (AblationResult.to_json())")
    return data


def _sources(args: argparse.Namespace) -> tuple[Path, str | None, list[str], str | None]:
    """(the directory to report on, store, ablation files, out): on a run directory
    holding the SAE --name, its home, the run's store, its ablation and report/."""
    run = RunDir(args.run_dir)
    home = run.sae_home(args.name)
    if not RunDir.is_sae_home(home):
        return run.root, args.store, list(args.ablation), args.out
    store = args.store
    if store is None and run.store.is_dir():
        store = str(run.store)
    ablations = list(args.ablation) or [str(p) for p in run.ablation_files(args.name)]
    return home, store, ablations, args.out or str(run.report_dir(args.name))


def unembedding(args: argparse.Namespace, record: Any) -> Any:
    """The unembedding of the run's model (run.json, or --model), for the tokens each
    latent promotes and suppresses; None for models without one (encoders, image
    models), or when the model does not load (a warning says why: the report goes on)."""
    from sae_hooks.cli.common import USER_ERRORS, load_model, use_record
    from sae_hooks.report.dashboard import model_unembedding

    if record is None and not (args.model or args.family):
        return None
    use_record(args, Path(args.run_dir))
    try:
        model, _ = load_model(args)
    except USER_ERRORS as err:
        warnings.warn(
            f"no promoted / suppressed tokens: the model did not load: {err}", stacklevel=2
        )
        return None
    return model_unembedding(model)


def run(args: argparse.Namespace) -> None:
    from sae_hooks.report.build import build_report

    if args.run_dir is None:
        if args.run is None:
            raise ValueError("give RUN_DIR or --run NAME (the run directory cache/<run>)")
        args.run_dir = str(RunDir.named(args.run, args.cache).root)
    from sae_hooks.report.frontier import is_sweep, sweep_for_report
    from sae_hooks.runrecord import load_tokenizer, read_run_record

    where, store, ablation_files, out = _sources(args)
    tokenizer: Any = args.tokenizer
    record = read_run_record(args.run_dir)
    if tokenizer is None and record is not None:
        tokenizer = load_tokenizer(record)
    ablations = [read_ablation(path) for path in ablation_files] or None
    unembed = unembedding(args, record)
    sweep = None
    if is_sweep(where):  # a train_many directory: one dashboard plus the frontier
        where, sweep, out, store = sweep_for_report(where, args.sae, out, store)
    index = build_report(
        where,
        sweep=sweep,
        store=store,
        point=args.point,
        tokenizer=tokenizer,
        unembed=unembed,
        ablations=ablations,
        images=args.images,
        out=out,
        latents=args.latents,
        n_latents=args.n_latents,
        n_examples=args.n_examples,
        max_rows=args.max_rows,
        progress=not args.quiet,
    )
    print(f"report written to {index}")
