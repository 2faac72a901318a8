"""The `sae-hooks` command: capture, train, eval, ablate, inspect, report.

Each subcommand is one step of the pipeline and reads or writes a run directory
(cache/<run> by default): run.json (the model, tokenizer, hook points and corpus the
run was made from), store/ (activations), train/ (log, checkpoint, sae/; another
`--name` trains another SAE beside it), eval.json, ablation.json, report/. After
`capture`, the other subcommands need only --run: they read run.json. Every
subcommand takes --config run.toml with [model], [data], [capture], [train],
[eval], [ablate] tables (flags win); [train] may set any TrainConfig field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from sae_hooks.cli_bench import add_bench_synthetic

EPILOG = """examples:
  sae-hooks capture --family minilm --point resid_post.3 --run demo
  sae-hooks train --run demo --architecture batchtopk --k-per-token 32 --total-tokens 500000
  sae-hooks eval --run demo                  # the model and corpus come from cache/demo/run.json
  sae-hooks ablate --run demo --positive pos.txt --negative neg.txt
  sae-hooks inspect cache/demo
  sae-hooks report cache/demo
  sae-hooks train --config run.toml          # [model] [data] [capture] [train] [eval] [ablate]
"""
DEFAULT_NAME = "train"  # the SAE directory of a run: run_dir/<name>/ (config.json, sae/, ...)
DEFAULT_DATA = "pydoc"
DEFAULT_CONTEXT = 128


def _model_args(p: argparse.ArgumentParser) -> None:
    from sae_hooks.models import FAMILIES

    g = p.add_argument_group("model")
    g.add_argument("--family", choices=FAMILIES, help="model family [default: the run's own]")
    g.add_argument("--model-dir", help="local model directory (MiniLM: bundled by default)")
    g.add_argument("--tiny", action="store_true", help="random-init small model (no weights)")
    g.add_argument("--device", default="cpu", help="torch device for the model")
    g.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow code shipped with the model directory to run (off by default)",
    )


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        help="'pydoc' (CPython's docs), a .txt/.jsonl file, a folder of .txt files, a "
        "dataset saved with `datasets` (save_to_disk) or a .parquet/.csv file, or (ViT) a "
        "folder of images [default: the run's corpus, else pydoc]",
    )
    g.add_argument("--text-field", default="text", help="field of .jsonl/dataset rows [text]")
    g.add_argument(
        "--context-length", type=int, help=f"tokens per context [default: {DEFAULT_CONTEXT}]"
    )
    g.add_argument("--batch-size", type=int, default=32, help="contexts or images per forward")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", default="default", help="run name: cache/<run> [default: %(default)s]")
    p.add_argument("--cache", help="cache directory [default: $SAE_HOOKS_CACHE or ./cache]")
    p.add_argument("--config", help="run.toml: [model] [data] and a table per subcommand")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _command(sub, name: str, text: str, example: str) -> argparse.ArgumentParser:
    """A subcommand parser whose handler is cmd_<name>."""
    p = sub.add_parser(
        name,
        help=text,
        description=text,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(handler=globals()[f"cmd_{name}"], parser=p)
    return p


def _add_capture(sub) -> None:
    p = _command(
        sub,
        "capture",
        "Capture activations at hook points into a zarr store (resumes an interrupted one).",
        "sae-hooks capture --family gpt2 --model-dir models/gpt2 --point resid_post.6 --run gpt2",
    )
    _run_args(p)
    _model_args(p)
    _data_args(p)
    p.add_argument("--point", action="append", help="hook point, repeatable (see `inspect`)")
    p.add_argument("--store", help="store location or fsspec URL [default: cache/<run>/store]")
    p.add_argument("--max-rows", type=int, help="stop after this many rows")
    p.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16")
    p.add_argument("--vit-tokens", default="all", help="ViT: all, cls or patches")
    p.add_argument(
        "--split",
        choices=("train", "all"),
        default="train",
        help="train: hold out the last tenth of the documents for eval (as the recipes "
        "do); all: capture everything [default: %(default)s]",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")


def _add_train(sub) -> None:
    from sae_hooks.cli_args import add_train_args

    p = _command(
        sub,
        "train",
        "Train an SAE on a store; resumes from the run's checkpoint.",
        "sae-hooks train --run gpt2 --architecture jumprelu --target-l0 40 --steps 5000",
    )
    _run_args(p)
    p.add_argument("--store", help="store location [default: cache/<run>/store]")
    p.add_argument("--point", help="hook point in the store (needed if it holds several)")
    _name_arg(p, "the SAE's directory in the run: cache/<run>/<name>/")
    p.add_argument(
        "--overwrite", action="store_true", help="delete cache/<run>/<name>/ and start over"
    )
    add_train_args(p)


def _name_arg(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--name", default=DEFAULT_NAME, help=f"{text} [default: %(default)s]")


def _sae_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sae", help="SAE directory [default: cache/<run>/<name>/sae]")
    _name_arg(p, "which SAE of the run")
    p.add_argument("--point", help="hook point [default: the one the SAE was trained on]")
    p.add_argument(
        "--target-point", help="transcoders: the output point [default: the trained one]"
    )


def _add_eval(sub) -> None:
    p = _command(
        sub,
        "eval",
        "Splice the trained SAE into the model: FVU, L0, dead latents, downstream metrics.",
        "sae-hooks eval --run gpt2 --max-batches 20",
    )
    _run_args(p)
    _model_args(p)
    _data_args(p)
    _sae_args(p)
    p.add_argument("--max-batches", type=int, default=20, help="batches to evaluate")
    p.add_argument(
        "--split",
        choices=("held-out", "all"),
        default="held-out",
        help="held-out: the last tenth of the documents, never captured; all: the whole "
        "corpus [default: %(default)s]",
    )


def _add_ablate(sub) -> None:
    p = _command(
        sub,
        "ablate",
        "Ablate the latents that separate positive from negative examples, vs random ones.",
        "sae-hooks ablate --run demo --positive pos.txt --negative neg.txt",
    )
    _run_args(p)
    _model_args(p)
    p.add_argument("--context-length", type=int, help="tokens per example [default: the run's]")
    _sae_args(p)
    p.add_argument("--positive", help="examples of the concept: a .txt file, one per paragraph")
    p.add_argument("--negative", help="examples without it, same format")
    p.add_argument(
        "--target",
        default="similarity",
        help="similarity (encoders: cosine to the positives' centroid), token:WORD or "
        "token:ID (LMs: log-prob of a next token, e.g. 'token: exception'), or "
        "class:INDEX (classifiers) [default: %(default)s]",
    )
    p.add_argument("-m", type=int, default=8, help="latents to ablate [default: %(default)s]")
    p.add_argument("--n-random", type=int, default=8, help="random control draws")
    p.add_argument("--seed", type=int, default=0, help="seed of the random control")


def _add_export(sub) -> None:
    p = _command(
        sub,
        "export",
        "Write a run's SAE for other tools: SAELens, the Hugging Face layout, Neuronpedia JSON.",
        "sae-hooks export --run demo --format saelens --out exported/demo",
    )
    _run_args(p)
    _sae_args(p)
    p.add_argument(
        "--format",
        choices=("saelens", "hf", "neuronpedia"),
        default="hf",
        help="saelens: cfg.json + sae_weights.safetensors; hf: save_pretrained's layout; "
        "neuronpedia: latent activations + explanation inputs [default: %(default)s]",
    )
    p.add_argument("--out", help="output directory [default: cache/<run>/export-<format>]")
    p.add_argument("--push-to-hub", metavar="REPO", help="hf: also upload to this Hub repo")
    p.add_argument("--n-examples", type=int, default=16, help="neuronpedia: contexts per latent")


def _add_inspect(sub) -> None:
    p = _command(
        sub,
        "inspect",
        "Say what a path holds (run directory, store, SAE, training run) or list hook points.",
        "sae-hooks inspect cache/demo    |    sae-hooks inspect --family gpt2 --tiny",
    )
    p.add_argument(
        "path", nargs="?", help="a run directory, a store (path or URL) or an SAE directory"
    )
    _model_args(p)
    p.add_argument("--config", help="run.toml ([model] and [inspect] tables)")


def _add_report(sub) -> None:
    """The report subcommand, when the report package is installed."""
    try:
        from sae_hooks.report.cli import add_report_parser
    except ImportError:
        return
    report = add_report_parser(sub)
    report.add_argument("--config", help="run.toml ([report] table)")
    _name_arg(report, "which SAE of a run directory")
    report.add_argument("--quiet", action="store_true", help="no progress bars")
    report.set_defaults(handler=cmd_report, parser=report)


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
    for add in (
        _add_capture,
        _add_train,
        _add_eval,
        _add_ablate,
        _add_export,
        _add_inspect,
        _add_report,
    ):
        add(sub)
    add_bench_synthetic(sub)
    from sae_hooks.cli_sweep import add_sweep_parser  # `sweep`: a grid of SAEs (cli_sweep.py)

    add_sweep_parser(sub)
    return parser


# --------------------------------------------------------------------------- helpers


def _run_dir(args: argparse.Namespace) -> Path:
    from sae_hooks.pipeline import run_dir_for

    return run_dir_for(args.run, args.cache)


def _use_record(args: argparse.Namespace, where: Path) -> None:
    """Fill the model and corpus flags not given from the run's run.json."""
    from sae_hooks.runrecord import read_run_record

    record = read_run_record(where)
    args.record = record
    args.family_given = args.family is not None
    if record is None:
        return
    model = record.model
    if args.family is None:
        args.family = model.get("family")
        args.model_dir = args.model_dir or model.get("model_dir")
        args.tiny = args.tiny or bool(model.get("tiny"))
    elif model.get("family") and args.family != model.get("family"):
        raise ValueError(
            f"--family {args.family} differs from the run's model {model.get('family')} "
            f"({where}/run.json); drop --family to use the recorded model"
        )
    corpus = record.corpus
    for key in ("data", "context_length"):
        if getattr(args, key, None) is None and corpus.get(key) is not None:
            setattr(args, key, corpus[key])
    if hasattr(args, "text_field") and args.text_field == "text" and corpus.get("text_field"):
        args.text_field = corpus["text_field"]


def _defaults(args: argparse.Namespace) -> None:
    if getattr(args, "data", None) is None and hasattr(args, "data"):
        args.data = DEFAULT_DATA
    if getattr(args, "context_length", None) is None and hasattr(args, "context_length"):
        args.context_length = DEFAULT_CONTEXT


def _load_model(args: argparse.Namespace):
    from sae_hooks.devices import available_device
    from sae_hooks.models import load_model

    if not args.family:
        hint = (
            ""
            if args.command in ("capture", "inspect")
            else (": the run has no run.json to read it from (capture it first, or pass --family)")
        )
        raise ValueError(f"--family is required (one of minilm, gpt2, vit, tl-gpt2){hint}")
    available_device(args.device)
    return load_model(
        args.family,
        args.model_dir,
        tiny=args.tiny,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
    )


def _is_gpt2(args: argparse.Namespace) -> bool:
    """GPT-2 contexts start with <|endoftext|> (as in its training); that position's
    activation (an attention sink with an outsized norm) stays out of stores and FVU."""
    return args.family in ("gpt2", "tl-gpt2")


def _inputs(args: argparse.Namespace, model, processor, part: str, max_eval: int = 0):
    """The batches of --data for one part of its split: "train", "held-out" or "all"."""
    from sae_hooks.data import image_batches, load_texts, text_batches
    from sae_hooks.data.splits import split_batches, split_texts

    if args.family == "vit":
        if args.data in (None, "pydoc"):
            raise ValueError("ViT needs --data pointing at a folder of images")
        size = model.config.image_size
        images = image_batches(args.data, image_size=size, batch_size=args.batch_size)
        if part == "all":
            return images
        kept, held = split_batches(images, max_eval or 10**9)
        return kept if part == "train" else held
    texts = load_texts(args.data, text_field=args.text_field)
    if part != "all":
        train_texts, held = split_texts(texts, f"--data {args.data}")
        texts = train_texts if part == "train" else held
    return text_batches(
        texts,
        processor,
        context_length=args.context_length,
        batch_size=args.batch_size,
        prepend_bos=_is_gpt2(args),
    )


def _sae_dir(args: argparse.Namespace) -> Path:
    return Path(args.sae) if args.sae else _run_dir(args) / args.name / "sae"


def _sae_and_point(args: argparse.Namespace):
    from sae_hooks.sae import load_sae

    sae_dir = _sae_dir(args)
    if not sae_dir.exists():  # a file is load_sae's to name (a pickle, say)
        raise FileNotFoundError(
            f"no SAE at {sae_dir}; train one with `sae-hooks train --run {args.run}"
            + (f" --name {args.name}`" if args.name != DEFAULT_NAME else "`")
            + " or point --sae at an SAE directory"
        )
    sae = load_sae(sae_dir, device=getattr(args, "device", "cpu")).eval()
    config = sae_dir.parent / "config.json"
    trained_on = None
    if config.is_file():
        try:
            trained_on = json.loads(config.read_text()).get("point")
        except (ValueError, AttributeError):
            raise ValueError(f"{config} is not a JSON object (a damaged training config)") from None
    point = args.point or trained_on
    if point is None:
        raise ValueError(f"--point is needed: {sae_dir} does not record its hook point")
    if trained_on is not None and point != trained_on:
        raise ValueError(
            f"--point {point} differs from {trained_on!r}, the point the SAE at {sae_dir} was "
            f"trained on ({config}); drop --point or give {trained_on}"
        )
    return sae, point


def _check_model_matches_store(args: argparse.Namespace, model) -> None:
    """The run's own SAE must meet the model its store was captured from (--family, --model-dir)."""
    from sae_hooks.store import open_store
    from sae_hooks.store.capture import recorded_model_name

    store_dir = _run_dir(args) / "store"
    if getattr(args, "record", None) is not None and not getattr(args, "family_given", True):
        return  # the model came from the run's own run.json
    if args.sae or not (store_dir / "zarr.json").is_file():
        return
    captured, given = open_store(str(store_dir)).model, recorded_model_name(model)
    if captured and captured != given:
        raise ValueError(
            f"--family {args.family} loads model {given!r}, but the SAE of run {args.run!r} was "
            f"trained on activations of {captured!r} ({store_dir}); give the --family and "
            "--model-dir of the capture"
        )


def _target_point(args: argparse.Namespace) -> str:
    """A transcoder's output point: --target-point, else the one its run trained on."""
    sae_dir = Path(args.sae) if args.sae else _run_dir(args) / args.name / "sae"
    config = sae_dir.parent / "config.json"
    target = getattr(args, "target_point", None)
    if target is None and config.is_file():
        target = json.loads(config.read_text()).get("target_point")
    if target is None:
        raise ValueError(f"--target-point is needed: {sae_dir} does not record its output point")
    return target


def _output(args: argparse.Namespace, filename: str) -> Path:
    """run_dir/<filename> for the default SAE, run_dir/<name>/<filename> for another."""
    if args.sae:
        out = Path(args.sae).parent / filename
    else:
        run = _run_dir(args)
        out = run / filename if args.name == DEFAULT_NAME else run / args.name / filename
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


# -------------------------------------------------------------------------- commands


def cmd_capture(args: argparse.Namespace) -> None:
    from sae_hooks.runrecord import write_run_record

    if not args.point:
        raise ValueError("--point is required (e.g. resid_post.3); `sae-hooks inspect` lists them")
    _defaults(args)
    model, processor = _load_model(args)
    run = _run_dir(args)
    store = args.store or str(run / "store")
    if args.overwrite and Path(store).exists():
        print(f"--overwrite: replacing the store at {store}")
    data = _inputs(args, model, processor, args.split)
    result = _capture_with_cli_errors(args, model, data, store)
    if args.store is None or Path(store).resolve().parent == run.resolve():
        write_run_record(run, _capture_record(args, processor, result))
    print(f"{result.n_rows:,} rows of {', '.join(result.points)} in {store}")


def _capture_with_cli_errors(args: argparse.Namespace, model, data, store: str):
    """Run the capture, rewording the library's resume/overwrite errors in terms of CLI
    flags and turning Ctrl-C into an :class:`Interrupted` that says how far it got."""
    from sae_hooks.store import capture_to_store

    try:
        return capture_to_store(
            model,
            args.point,
            data,
            store,
            dtype=args.dtype,
            max_rows=args.max_rows,
            vit_tokens=args.vit_tokens,
            source=f"{args.data} ({args.split})",
            drop_bos=_is_gpt2(args),
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except ValueError as err:
        if "cannot resume" in str(err) or "overwrite=True" in str(err):
            raise ValueError(
                f"{str(err).replace('pass overwrite=True', 'rerun with --overwrite')}; "
                "--overwrite replaces it, --run OTHER or --store PATH keeps it"
            ) from None
        raise
    except KeyboardInterrupt:
        raise Interrupted(_rows_in(store)) from None


def _capture_record(args: argparse.Namespace, processor, result):
    """The run record of a capture: which model, tokenizer, points and corpus made the
    store, so later steps (train, eval) can check they read the same thing."""
    from sae_hooks.runrecord import (
        SPLIT_ALL,
        SPLIT_TRAIN,
        RunRecord,
        model_record,
        tokenizer_record,
    )

    mrec = model_record(args.family, args.model_dir, tiny=args.tiny)
    corpus = {
        "data": args.data if args.data == "pydoc" else str(Path(args.data).resolve()),
        "text_field": args.text_field,
        "context_length": args.context_length,
        "split": SPLIT_TRAIN if args.split == "train" else SPLIT_ALL,
        "prepend_bos": _is_gpt2(args),
    }
    if args.family == "vit":
        corpus = {"data": str(Path(args.data).resolve()), "split": corpus["split"]}
    return RunRecord(
        model=mrec,
        tokenizer=tokenizer_record(processor, mrec["model_dir"]),
        points=list(result.points),
        corpus=corpus,
        created_by="sae-hooks capture",
    )


class Interrupted(Exception):
    """Ctrl-C during a step that resumes: say where it stopped."""


def _rows_in(store: str) -> str:
    from sae_hooks.store import open_store

    try:
        return f"{open_store(store).n_rows:,} rows"
    except Exception:  # nothing committed yet, or not readable
        return "0 rows"


def _check_optional_loggers(config) -> None:
    """--tensorboard / --wandb-project need their packages: one line naming the missing one."""
    import importlib.util

    if config.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ValueError(
            "--tensorboard needs the tensorboard package: pip install 'sae-hooks[tensorboard]'"
        )
    if config.wandb_project and importlib.util.find_spec("wandb") is None:
        raise ValueError("--wandb-project needs the wandb package: pip install wandb")


def cmd_train(args: argparse.Namespace) -> None:
    from sae_hooks.cli_args import train_config
    from sae_hooks.store import open_store
    from sae_hooks.train import train
    from sae_hooks.train.diagnostics import RunWarning, logged_warnings

    run_dir = _run_dir(args)
    out = run_dir / args.name
    config = train_config(args, {"point": args.point, "progress": not args.quiet})  # fail fast
    _check_optional_loggers(config)
    if args.store is None and not (run_dir / "store").exists():
        raise FileNotFoundError(
            f"no activation store at {run_dir / 'store'}: capture one first "
            f"(sae-hooks capture --run {args.run} --family ... --point ...) or give --store PATH"
        )
    store = open_store(args.store or str(run_dir / "store"))
    if config.point is None and len(store.points) == 1:  # record the point in the run's config
        config = dataclasses.replace(config, point=store.points[0])
    if args.overwrite and out.exists():
        shutil.rmtree(out)
        print(f"--overwrite: cleared {out}")
    try:
        with warnings.catch_warnings():  # printed once below, without a traceback line
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
    for w in logged_warnings(out):
        print(f"warning: {w}")
    print(f"SAE saved to {out / 'sae'}; log in {out / 'log.jsonl'}")


def _model_for_sae(args: argparse.Namespace):
    """The run's model (flags, else run.json) and its tokenizer or image processor."""
    _use_record(args, Path(args.sae) if args.sae else _run_dir(args))
    _defaults(args)
    return _load_model(args)


def cmd_eval(args: argparse.Namespace) -> None:
    from sae_hooks.eval import evaluate_reconstruction
    from sae_hooks.eval.core import evaluate_core, write_core_eval

    model, processor = _model_for_sae(args)
    sae, point = _sae_and_point(args)
    _check_model_matches_store(args, model)
    data = _inputs(args, model, processor, args.split, args.max_batches)
    paired = getattr(sae, "paired", False)
    if paired:  # a transcoder: replace the MLP output it predicts
        from sae_hooks.eval import evaluate_transcoder

        result = evaluate_transcoder(
            model,
            point,
            _target_point(args),
            sae,
            data,
            max_batches=args.max_batches,
            progress=not args.quiet,
        )
    else:
        result = evaluate_reconstruction(
            model,
            point,
            sae,
            data,
            max_batches=args.max_batches,
            drop_bos=_is_gpt2(args),
            progress=not args.quiet,
        )
    out = _output(args, "eval.json")
    out.write_text(result.to_json())
    if not paired:  # SAEBench's core metrics are defined for SAEs on one point
        write_core_eval(
            out.parent, evaluate_core(model, point, sae, data, max_batches=args.max_batches)
        )
    print(result.summary())
    print(f"on the {args.split} part of {args.data}; written to {out}")


def _token_id(value: str, tokenizer) -> int:
    """token:ID or token:WORD -> one token id (a WORD must be exactly one token)."""
    vocab = getattr(tokenizer, "vocab_size", None)
    if value.isdigit():
        token = int(value)
    else:
        ids = tokenizer(value, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = tokenizer.convert_ids_to_tokens(ids)
            raise ValueError(
                f"--target token:{value!r} is {len(ids)} tokens {pieces}; give one token "
                "(GPT-2 words carry their leading space: 'token: exception') or token:ID"
            )
        token = ids[0]
    if vocab is not None and not 0 <= token < len(tokenizer):
        raise ValueError(f"--target token:{value}: the vocabulary has ids 0..{len(tokenizer) - 1}")
    return token


def cmd_ablate(args: argparse.Namespace) -> None:
    from sae_hooks.concepts import centroid_similarity, text_examples
    from sae_hooks.data import load_texts
    from sae_hooks.eval import class_logit, concept_ablation, token_logprob

    if not (args.positive and args.negative):
        raise ValueError("--positive and --negative are required: files of example texts")
    model, tokenizer = _model_for_sae(args)
    if args.family == "vit":
        raise ValueError("ablate from the CLI takes texts; for images use concept_ablation()")
    sae, point = _sae_and_point(args)
    _check_model_matches_store(args, model)
    ctx, bos = args.context_length, _is_gpt2(args)
    pos = text_examples(load_texts(args.positive), tokenizer, context_length=ctx, prepend_bos=bos)
    neg = text_examples(load_texts(args.negative), tokenizer, context_length=ctx, prepend_bos=bos)
    kind, _, value = args.target.partition(":")
    if kind == "similarity":
        target = centroid_similarity(model, pos)
    elif kind == "token" and value:
        target = token_logprob(_token_id(value, tokenizer))
    elif kind == "class" and value.isdigit():
        target = class_logit(int(value))
    else:
        raise ValueError(
            f"--target {args.target!r} is not valid: use similarity, token:WORD, token:ID "
            "or class:INDEX"
        )
    result = concept_ablation(
        model,
        point,
        sae,
        pos,
        neg,
        target,
        m=args.m,
        n_random=args.n_random,
        seed=args.seed,
        progress=not args.quiet,
    )
    out = _output(args, "ablation.json")
    out.write_text(json.dumps({"target": args.target, **result.to_dict()}, indent=2))
    print(result.table())
    print(f"written to {out}")


def cmd_export(args: argparse.Namespace) -> None:
    """The SAE of a run in another tool's format; the hook point and model from the run."""
    from sae_hooks.runrecord import load_tokenizer, read_run_record

    sae, point = _sae_and_point(args)
    run = _run_dir(args)
    record = read_run_record(Path(args.sae) if args.sae else run)
    model_name = record.model.get("hub_id") or record.model.get("name") if record else None
    out = Path(args.out) if args.out else run / f"export-{args.format}"
    if args.format == "saelens":
        from sae_hooks.interop import export_saelens

        export_saelens(sae, out, point=point, model_name=model_name)
    elif args.format == "hf":
        from sae_hooks.interop.hub import push_to_hub, save_pretrained

        save_pretrained(sae, out, point=point, model_name=model_name, repo_id=args.push_to_hub)
        if args.push_to_hub:
            push_to_hub(sae, args.push_to_hub, point=point, model_name=model_name)
            print(f"uploaded to https://huggingface.co/{args.push_to_hub}")
    else:
        from sae_hooks.interop.neuronpedia import export_neuronpedia

        if not (run / "store").is_dir():
            raise FileNotFoundError(
                f"neuronpedia export reads the run's store: none at {run}/store"
            )
        export_neuronpedia(
            sae,
            str(run / "store"),
            out,
            point=point,
            tokenizer=load_tokenizer(record) if record else None,
            model_id=model_name or "",
            sae_id=f"{point}-{args.name}",
            n_examples=args.n_examples,
            progress=not args.quiet,
        )
    print(f"{args.format} export written to {out}")


def cmd_report(args: argparse.Namespace) -> None:
    """`report` on a run directory finds its store, ablation and tokenizer (run.json)."""
    from sae_hooks.report.cli import run_report
    from sae_hooks.runrecord import load_tokenizer, read_run_record

    run = Path(args.run_dir)
    sae_home = run / args.name
    if (sae_home / "sae").is_dir():
        if args.store is None and (run / "store").is_dir():
            args.store = str(run / "store")
        named = args.name != DEFAULT_NAME
        ablation = (sae_home if named else run) / "ablation.json"
        if not args.ablation and ablation.is_file():
            args.ablation = [str(ablation)]
        args.out = args.out or str(run / "report" if not named else sae_home / "report")
        args.run_dir = str(sae_home)
    record = read_run_record(run)
    if args.tokenizer is None and record is not None:
        args.tokenizer = load_tokenizer(record)
    run_report(args)


def cmd_inspect(args: argparse.Namespace) -> None:
    if args.family:
        from sae_hooks.hooks import list_hook_points

        model, _ = _load_model(args)
        print("\n".join(list_hook_points(model)))
    elif args.path:
        print(describe(args.path))
    else:
        raise ValueError("give a PATH to summarise, or --family (with --tiny or --model-dir)")


def describe(path: str) -> str:
    """What lives at `path` (run directory, training run, SAE directory or store), in words."""
    from sae_hooks.runrecord import RUN_RECORD, read_run_record

    p = Path(path)
    if (p / "config.json").is_file() and (p / "model.safetensors").is_file():
        return "SAE directory " + _describe_sae(p)
    if (p / "sae").is_dir() and (p / "config.json").is_file():
        return f"training run at {p}\n  SAE " + _describe_sae(p / "sae")
    if (p / RUN_RECORD).is_file() or (p / "store").is_dir() or (p / DEFAULT_NAME).is_dir():
        return _describe_run(p, read_run_record(p))
    if (p / "summary.txt").is_file():
        return (p / "summary.txt").read_text()
    if p.exists() and not (p / "zarr.json").is_file() and "://" not in path:
        raise ValueError(
            f"{p} is not a run directory (run.json, store/, train/), a store (zarr.json) "
            "or an SAE directory (config.json + model.safetensors)"
        )
    return "store " + _describe_store(path)


def _describe_sae(p: Path) -> str:
    from sae_hooks.sae import load_sae

    sae = load_sae(p)
    n = sum(t.numel() for t in sae.state_dict().values())
    config = json.dumps(sae.config(), indent=2)
    return f"at {p}: {type(sae).__name__}, {n:,} numbers\n{config}"


def _describe_store(path: str) -> str:
    from sae_hooks.store import open_store

    store = open_store(path)
    lines = [
        f"at {path}: {store.n_rows:,} rows, dtype {store.dtype}",
        f"model: {store.model}",
        f"source: {store.source}",
    ]
    for point in store.points:
        stats = store.stats(point)
        lines.append(
            f"  {point}: d_model {store.d_model(point)}, mean squared norm "
            f"{float(stats.mean_sq_norm):.4g}"
        )
    return "\n".join(lines)


def _describe_run(p: Path, record) -> str:
    """A run directory: its record, its store and each SAE trained on it."""
    from sae_hooks.sae import load_sae

    lines = [f"run directory at {p}"]
    if record is not None:
        lines += ["  " + line for line in record.summary().splitlines()]
    else:
        lines.append("  (no run.json: made before runs recorded their model; pass --family)")
    if (p / "store").is_dir():
        lines.append("  store: " + _describe_store(str(p / "store")).replace("\n", "\n    "))
    for sae_dir in sorted(p.glob("*/sae")):
        sae = load_sae(sae_dir)
        lines.append(
            f"  SAE {sae_dir.parent.name}/: {type(sae).__name__}, {sae.nb_concepts:,} latents"
        )
    for name in ("eval.json", "ablation.json", "summary.txt", "report/index.html"):
        if (p / name).exists():
            lines.append(f"  {name}")
    return "\n".join(lines)


def _apply_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """--config run.toml: [model], [data] and the subcommand's table (flags win)."""
    from sae_hooks.run_config import apply_values, command_values

    top = build_parser()
    parsers = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction)).choices
    values, train_values = command_values(args.config, args.command, dict(parsers))
    apply_values(parser, args, values)
    args._file_train = train_values


def main(argv: Sequence[str] | None = None) -> int:
    from sae_hooks.store import StoreLockedError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "config", None):
            _apply_config(args, args.parser)
        args.handler(args)
    except (ValueError, TypeError, OSError, StoreLockedError, RuntimeError, ImportError) as e:
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


def _broken_pipe() -> int:
    """`sae-hooks inspect ... | head`: stop quietly when the reader goes away."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


if __name__ == "__main__":
    sys.exit(main())
