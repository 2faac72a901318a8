"""What every recipe script shares: its flags, run directory, held-out batch count,
error exits and summary.

A recipe picks a model, data, a hook point and a concept, then calls `run_pipeline`;
the rest comes from here so the scripts stay short and behave alike. The training
flags are the `sae-hooks train` ones (sae_hooks.cli.train_flags).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sae_hooks.auto_models import LoadedModel
from sae_hooks.cli.train_flags import add_train_args, train_config
from sae_hooks.pipeline import PipelineResult, run_dir_for
from sae_hooks.runrecord import SPLIT_TRAIN, RunRecord, tokenizer_record

__all__ = [
    "eval_batch_count",
    "fail",
    "minilm_and_pydoc",
    "print_summary",
    "recipe_corpus",
    "recipe_model",
    "recipe_parser",
    "recipe_record",
    "recipe_run_dir",
    "run_recipe",
    "train_config",
    "user_errors",
]


def recipe_parser(
    doc: str, model_dir_help: str, defaults: dict[str, Any]
) -> argparse.ArgumentParser:
    """The flags every recipe shares; a recipe adds its own (point, data, concept)."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="a Hugging Face hub id or local model directory, any architecture (downloaded "
        "into the HF cache on first use; read from it after and with HF_HUB_OFFLINE=1)",
    )
    p.add_argument("--revision", help="hub branch, tag or commit of --model")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="--model's dtype")
    p.add_argument(
        "--trust-remote-code", action="store_true", help="let --model's own code run (off)"
    )
    p.add_argument("--model-dir", help=model_dir_help)
    p.add_argument("--tiny", action="store_true", help="random-init small model, for tests")
    p.add_argument("--capture-batch-size", type=int, default=32, help="inputs per forward")
    p.add_argument("--max-rows", type=int, help="stop capturing after this many rows")
    p.add_argument("--eval-batches", type=int, help="held-out batches to evaluate [8]")
    p.add_argument("--run-name", help="run directory name under the cache (default: recipe name)")
    p.add_argument("--cache", help="cache directory (default $SAE_HOOKS_CACHE or ./cache)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML dashboard")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_train_args(p, defaults)
    return p


def fail(message: str) -> None:
    """Exit with a one-line error instead of a traceback for user mistakes."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def recipe_model(args: argparse.Namespace, family: str) -> LoadedModel:
    """The recipe's model: --model (a hub id or directory, any architecture, loaded as the
    CLI loads it) when given, else the family's --model-dir or --tiny model, offline. The
    identity is empty for the latter (run_pipeline infers the record as before)."""
    from sae_hooks.auto_models import load_any
    from sae_hooks.models import load_model, model_family

    device = getattr(args, "device", None) or "cpu"
    record = model_family(family)
    if getattr(args, "model", None):
        return load_any(
            args.model,
            revision=args.revision,
            dtype=args.dtype,
            device=device,
            trust_remote_code=args.trust_remote_code,
            backend="transformer-lens" if record.backend == "tl" else "hf",
        )
    model, processor = load_model(family, args.model_dir, tiny=args.tiny, device=device)
    return LoadedModel(model, processor, record)


def recipe_record(loaded: LoadedModel, point: str, corpus: dict[str, Any]) -> RunRecord | None:
    """run.json of a recipe run on --model: the model's identity as loaded (None otherwise)."""
    if not loaded.identity:
        return None
    return RunRecord(
        model=dict(loaded.identity),
        tokenizer=tokenizer_record(loaded.processor, loaded.identity.get("model_dir")),
        points=[point],
        corpus={**corpus, "prepend_bos": loaded.family.prepend_bos},
        created_by="sae_hooks.recipe",
    )


def minilm_and_pydoc(
    tiny: bool, model_dir: str | None = None, model: str | None = None
) -> tuple[Any, Any, list[str]]:
    """(model, tokenizer, texts) of the offline default: the bundled all-MiniLM-L6-v2
    (or --model-dir, or --model: a hub id or directory) on CPython's docs; --tiny: a
    random-init MiniLM on 120 paragraphs."""
    from sae_hooks.data import pydoc_texts
    from sae_hooks.models import check_model_dir, minilm_dir, pydoc_tokenizer, tiny_model

    if model:
        from sae_hooks.auto_models import load_model

        return (*load_model(model), pydoc_texts())
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
    return {"data": data, "part": SPLIT_TRAIN, **more}


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


def run_recipe(main: Callable[[], object]) -> None:
    """A recipe's entry point: Ctrl-C ends it with one line that says how to go on (the
    same command resumes capture and training from their last commit and checkpoint),
    not a traceback through whatever kernel it stopped in; exit status 130, as a shell's."""
    try:
        main()
    except KeyboardInterrupt:
        print(
            "\ninterrupted: rerun the same command to resume (capture and training go on "
            "from their last commit and checkpoint)",
            file=sys.stderr,
        )
        raise SystemExit(130) from None


def print_summary(result: PipelineResult) -> None:
    """The end-of-run summary every recipe prints (also in <run>/summary.txt)."""
    print()
    print(result.summary())
