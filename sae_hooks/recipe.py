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
from typing import Any

from sae_hooks.cli_args import fail
from sae_hooks.pipeline import PipelineResult, run_dir_for
from sae_hooks.runrecord import SPLIT_TRAIN


def minilm_and_pydoc(tiny: bool, model_dir: str | None = None) -> tuple[Any, Any, list[str]]:
    """(model, tokenizer, texts) of the offline default: the bundled all-MiniLM-L6-v2
    (or --model-dir) on CPython's docs; --tiny: a random-init MiniLM on 120 paragraphs."""
    from sae_hooks.data import pydoc_texts
    from sae_hooks.models import check_model_dir, minilm_dir, pydoc_tokenizer, tiny_model

    if tiny:
        return tiny_model("minilm"), pydoc_tokenizer(), pydoc_texts()[:120]
    from transformers import AutoModel, AutoTokenizer

    path = check_model_dir("minilm", model_dir or minilm_dir())
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return model, AutoTokenizer.from_pretrained(path, local_files_only=True), pydoc_texts()


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
