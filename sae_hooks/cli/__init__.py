"""The `sae-hooks` command: capture, train, eval, ablate, circuit, export, inspect, report,
sweep, bench-synthetic.

Each subcommand is one step of the pipeline and reads or writes a run directory
(cache/<run> by default, laid out by sae_hooks.rundir.RunDir): run.json (the model,
tokenizer, hook points and corpus the run was made from), store/ (activations),
train/ (log, checkpoint, sae/; another `--name` trains another SAE beside it),
eval.json, ablation.json, report/. After `capture`, the other subcommands need only
--run: they read run.json. Every subcommand takes --config run.toml with [model],
[data], [capture], [train], [eval], [ablate] tables (flags win); [train] may set any
TrainConfig field.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Iterator, Sequence

from sae_hooks.cli import (
    ablate,
    bench_synthetic,
    capture,
    circuit,
    eval,
    export,
    inspect,
    report,
    sweep,
    train,
)
from sae_hooks.cli.common import USER_ERRORS, Interrupted

# One module per command: NAME, TABLE (its run.toml table, or None), options(),
# register(subparsers) and run(args). The order is the order of `--help`.
COMMANDS = (capture, train, eval, ablate, circuit, export, inspect, report, sweep, bench_synthetic)

EPILOG = """examples:
  sae-hooks capture --model gpt2 --point resid_post.6 --data NAME --text-field text --run demo
  sae-hooks train --run demo --architecture batchtopk --k-per-token 32 --total-tokens 500000
  sae-hooks eval --run demo                  # the model and corpus come from cache/demo/run.json
  sae-hooks ablate --run demo --positive pos.txt --negative neg.txt
  sae-hooks inspect cache/demo
  sae-hooks report cache/demo
  sae-hooks sweep sweep.toml --run demo      # a grid of SAEs from one pass over the store
  sae-hooks train --config run.toml          # [model] [data] [capture] [train] [eval] [ablate]
"""

__all__ = ["COMMANDS", "build_parser", "main", "run_schema"]


def run_schema():
    """run.toml's tables and keys, from the registered commands' options."""
    from sae_hooks.cli.options import schema
    from sae_hooks.run_config import RunSchema

    return RunSchema({c.TABLE: schema(c.options()) for c in COMMANDS if c.TABLE})


def build_parser() -> argparse.ArgumentParser:
    from sae_hooks import __version__

    parser = argparse.ArgumentParser(
        prog="sae-hooks",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sae-hooks {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    parser.set_defaults(schema=run_schema())
    return parser


def _apply_config(args: argparse.Namespace) -> None:
    """--config run.toml: [model], [data] and the subcommand's table (flags win)."""
    from sae_hooks.run_config import apply_values, command_values

    values, train_values = command_values(args.config, args.command, args.schema)
    apply_values(args, values, args.defaults)
    args.config_train = train_values


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the library's user-facing errors become one line and exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(), _library_bars(not getattr(args, "quiet", False)):
            warnings.showwarning = _one_line_warnings(args.command)  # both restored after
            if getattr(args, "config", None):
                _apply_config(args)
            args.handler(args)
    except USER_ERRORS as e:
        if isinstance(e, BrokenPipeError):
            return _broken_pipe()
        print(f"sae-hooks {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (Interrupted, KeyboardInterrupt) as e:
        where = f" at {e}" if isinstance(e, Interrupted) else ""
        again = "resume" if args.command in ("capture", "train") else "start it again"
        print(
            f"\nsae-hooks {args.command}: interrupted{where}; rerun the same command to {again}",
            file=sys.stderr,
        )
        return 130
    return 0


@contextlib.contextmanager
def _library_bars(shown: bool) -> Iterator[None]:
    """--quiet silences transformers' and huggingface_hub's own bars too (loading
    weights, downloads), not only ours; their settings are restored after."""
    if shown:
        yield
        return
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )
    from transformers.utils import logging as hf_logging

    hub_was_off, hf_was_on = are_progress_bars_disabled(), hf_logging.is_progress_bar_enabled()
    disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not hub_was_off:
            enable_progress_bars()
        if hf_was_on:
            hf_logging.enable_progress_bar()


def _one_line_warnings(command: str):
    """Warnings as one readable line each, `sae-hooks COMMAND: warning: MESSAGE`, instead
    of Python's `file.py:LINE: Category: MESSAGE` plus a source line: the message says
    what it is about (a training run's warnings name the SAE)."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        print(f"sae-hooks {command}: warning: {text}", file=file or sys.stderr)

    return show


def _broken_pipe() -> int:
    """`sae-hooks inspect ... | head`: stop quietly when the reader goes away."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141
