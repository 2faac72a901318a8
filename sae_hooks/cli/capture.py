"""`sae-hooks capture`: activations at hook points into the run's zarr store (resumable)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sae_hooks.cli.common import (
    Interrupted,
    apply_defaults,
    family_of,
    input_batches,
    load_model,
    resolve_part,
    run_dir,
    starts_with_bos,
    use_record,
)
from sae_hooks.cli.options import (
    Option,
    add_command,
    data_options,
    model_options,
    part_option,
    run_options,
)

NAME = "capture"
TABLE = NAME
HELP = "Capture activations at hook points into a zarr store (resumes an interrupted one)."
EXAMPLE = "sae-hooks capture --model gpt2 --point resid_post.6 --data NAME --run gpt2"


def options() -> tuple[Option, ...]:
    return (
        *run_options(),
        *model_options(),
        *data_options(),
        Option(("--point",), "hook point, repeatable (see `inspect`)", action="append"),
        Option(("--store",), "store location or fsspec URL [default: cache/<run>/store]"),
        Option(("--max-rows",), "stop after this many rows", type=int),
        Option(
            ("--store-dtype",),
            "dtype of the stored activations [default: the model's --dtype]",
            choices=("float32", "float16", "bfloat16"),
        ),
        Option(("--vit-tokens",), "ViT: all, cls or patches", default="all"),
        part_option(
            ("train", "all"),
            "train: hold out the last tenth of the documents for eval (as the recipes "
            "do); all: capture everything",
        ),
        Option(("--overwrite",), "replace an existing store", action="store_true"),
    )


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return add_command(sub, NAME, HELP, options(), run, example=EXAMPLE)


def run(args: argparse.Namespace) -> None:
    from sae_hooks.runrecord import write_run_record
    from sae_hooks.store.overwrite import check_replaceable

    if not args.point:
        raise ValueError("--point is required (e.g. resid_post.3); `sae-hooks inspect` lists them")
    resolve_part(args, "train")
    run_at = run_dir(args)
    if not args.overwrite:  # a point added to a run: its model and corpus by default
        use_record(args, run_at.root)
    apply_defaults(args)
    model, processor = load_model(args)
    store = args.store or str(run_at.store)
    if args.overwrite and Path(store).exists():
        check_replaceable(store)  # a folder that is not a store: one line, nothing deleted
        print(f"--overwrite: replacing the store at {store}")
    data = input_batches(args, model, processor, args.part)
    result = _capture(args, model, data, store)
    if args.store is None or Path(store).resolve().parent == run_at.root.resolve():
        write_run_record(run_at.root, capture_record(args, processor, result))
    print(f"{result.n_rows:,} rows of {', '.join(result.points)} in {store}")


def _capture(args: argparse.Namespace, model: Any, data: Any, store: str) -> Any:
    """Run the capture, rewording the library's resume/overwrite errors in terms of CLI
    flags and turning Ctrl-C into an :class:`Interrupted` that says how far it got."""
    from sae_hooks.store import capture_to_store

    try:
        return capture_to_store(
            model,
            args.point,
            data,
            store,
            dtype=args.store_dtype or args.dtype or "float32",
            max_rows=args.max_rows,
            vit_tokens=args.vit_tokens,
            source=f"{args.data} ({args.part})",
            drop_bos=starts_with_bos(args),
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except ValueError as err:
        text = str(err).replace(" (CLI: --overwrite)", "")
        if "cannot resume" in text or "overwrite=True" in text:
            text = text.replace("pass overwrite=True", "rerun with --overwrite")
            if "--overwrite" not in text:
                text += "; rerun with --overwrite to replace it"
            raise ValueError(f"{text}; --run OTHER or --store PATH keeps it") from None  # once
        raise
    except KeyboardInterrupt:
        raise Interrupted(_rows_in(store)) from None


def _rows_in(store: str) -> str:
    from sae_hooks.store import open_store

    try:
        return f"{open_store(store).n_rows:,} rows"
    except Exception:  # nothing committed yet, or not readable
        return "0 rows"


def capture_record(args: argparse.Namespace, processor: Any, result: Any) -> Any:
    """The run record of a capture: which model, tokenizer, points and corpus made the
    store, so later steps (train, eval, export) reopen the same model and data from
    --run alone and say truthfully what they came from."""
    from sae_hooks.runrecord import SPLIT_ALL, SPLIT_TRAIN, RunRecord, tokenizer_record

    mrec = dict(args.loaded.identity)
    part = SPLIT_TRAIN if args.part == "train" else SPLIT_ALL
    if family_of(args).vision:
        corpus: dict[str, Any] = {"data": str(Path(args.data).resolve()), "part": part}
    else:
        corpus = {
            "data": data_spec(args.data),
            "split": args.split,
            "text_field": args.text_field,
            "streaming": bool(args.streaming),
            "skip_invalid": bool(args.skip_invalid_rows),
            "context_length": args.context_length,
            "part": part,
            "prepend_bos": starts_with_bos(args),
        }
    return RunRecord(
        model=mrec,
        tokenizer=tokenizer_record(processor, mrec.get("model_dir")),
        points=list(result.points),
        corpus=corpus,
        created_by="sae-hooks capture",
    )


def data_spec(data: str) -> str:
    """--data as run.json records it: a local path resolved; "pydoc" and hub ids as given."""
    path = Path(data).expanduser()
    return str(path.resolve()) if data != "pydoc" and path.exists() else data
