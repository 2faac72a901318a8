"""What every recipe script shares besides its flags (sae_hooks.cli_args.recipe_parser).

A recipe picks a model, data, a hook point and a concept, then calls `run_pipeline`;
its run directory, held-out batch count, error exits and summary come from here so
the scripts stay short and behave alike.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

from sae_hooks.cli_args import fail
from sae_hooks.pipeline import PipelineResult, run_dir_for
from sae_hooks.runrecord import SPLIT_TRAIN


def recipe_run_dir(args: argparse.Namespace, name: str) -> Path:
    """cache/<--run-name>, else cache/<name> (cache/<name>_tiny with --tiny)."""
    return run_dir_for(args.run_name or (f"{name}_tiny" if args.tiny else name), args.cache)


def recipe_corpus(data: str, **more: object) -> dict[str, object]:
    """run.json's corpus entry for a recipe: its --data, split as every recipe splits it
    (sae_hooks.data.splits), plus e.g. context_length and text_field."""
    return {"data": data, "split": SPLIT_TRAIN, **more}


def eval_batch_count(args: argparse.Namespace) -> int:
    """--eval-batches, else 2 held-out batches with --tiny and 8 for a real run."""
    return args.eval_batches or (2 if args.tiny else 8)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """A missing file or a bad value exits with one `error:` line instead of a traceback."""
    try:
        yield
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))


def print_summary(result: PipelineResult) -> None:
    """The end-of-run summary every recipe prints (also in <run>/summary.txt)."""
    print()
    print(result.summary())
