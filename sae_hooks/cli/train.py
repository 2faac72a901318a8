"""`sae-hooks train`: an SAE on the run's store; resumes from the run's checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from typing import Any

from sae_hooks.cli.common import Interrupted, run_dir
from sae_hooks.cli.options import Option, add_command, name_option, run_options
from sae_hooks.cli.train_flags import train_config, train_options

NAME = "train"
TABLE = NAME
HELP = "Train an SAE on a store; resumes from the run's checkpoint."
EXAMPLE = "sae-hooks train --run gpt2 --architecture jumprelu --target-l0 40 --steps 5000"


def options() -> tuple[Option, ...]:
    return (
        *run_options(),
        Option(("--store",), "store location [default: cache/<run>/store]"),
        Option(("--point",), "hook point in the store (needed if it holds several)"),
        name_option("the SAE's directory in the run: cache/<run>/<name>/"),
        Option(("--overwrite",), "delete cache/<run>/<name>/ and start over", action="store_true"),
        *train_options(),
    )


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return add_command(sub, NAME, HELP, options(), run, example=EXAMPLE)


def check_optional_loggers(config: Any) -> None:
    """--tensorboard / --wandb-project need their packages: one line naming the missing one."""
    import importlib.util

    if config.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ValueError(
            "--tensorboard needs the tensorboard package: pip install 'sae-hooks[tensorboard]'"
        )
    if config.wandb_project and importlib.util.find_spec("wandb") is None:
        raise ValueError("--wandb-project needs the wandb package: pip install wandb")


def run(args: argparse.Namespace) -> None:
    from sae_hooks.store import open_store
    from sae_hooks.train import runlock
    from sae_hooks.train.diagnostics import logged_warnings

    run_at = run_dir(args)
    out = run_at.sae_home(args.name)
    config = train_config(args, {"point": args.point, "progress": not args.quiet})  # fail fast
    check_optional_loggers(config)
    if args.store is None and not run_at.store.exists():
        raise FileNotFoundError(
            f"no activation store at {run_at.store}: capture one first "
            f"(sae-hooks capture --run {args.run} --model ... --point ...) or give --store PATH"
        )
    store = open_store(args.store or str(run_at.store))
    if config.point is None and len(store.points) == 1:  # record the point in the run's config
        config = dataclasses.replace(config, point=store.points[0])
    if args.overwrite and out.exists():
        runlock.clear(out)  # refused while a live process trains there, or if not a training
        print(f"--overwrite: cleared {out}")
    try:
        _train(config, store, out)
    finally:
        runlock.release(out)  # the hold clear() took, if the training never took it over
    for w in logged_warnings(out):
        print(f"warning: {w}")
    print(f"SAE saved to {run_at.sae_dir(args.name)}; log in {out / run_at.LOG}")


def _train(config: Any, store: Any, out: Any) -> None:
    """train(), its resume refusal reworded in terms of --overwrite and --name."""
    from sae_hooks.train import train
    from sae_hooks.train.diagnostics import RunWarning

    try:
        with warnings.catch_warnings():  # printed once after, without a traceback line
            warnings.simplefilter("ignore", RunWarning)
            train(config, store, out)
    except ValueError as err:
        if str(err).startswith("cannot resume"):
            raise ValueError(
                f"{err}. Rerun with --overwrite to start {out} over, or --name OTHER to "
                "train another SAE beside it"
            ) from None
        raise
    except KeyboardInterrupt:
        raise Interrupted(f"the last checkpoint in {out}") from None
