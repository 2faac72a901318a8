"""The `sae-hooks` command: capture, train, eval, ablate, inspect, report.

Each subcommand is one step of the pipeline and reads or writes a run directory
(cache/<run> by default): store/ (activations), train/ (log, checkpoint, sae/),
eval.json, ablation.json, report/. Every subcommand takes --config FILE.toml
whose table named after the subcommand sets the same options as the flags
(flags win); the [train] table may set any TrainConfig field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

EPILOG = """examples:
  sae-hooks capture --family minilm --point resid_post.3 --run demo
  sae-hooks train --run demo --architecture batchtopk --k-per-token 32 --total-tokens 500000
  sae-hooks eval --family minilm --run demo
  sae-hooks ablate --family minilm --run demo --positive pos.txt --negative neg.txt
  sae-hooks inspect cache/demo/store
  sae-hooks report cache/demo
  sae-hooks train --config run.toml          # [train] table: any TrainConfig field
"""


def _model_args(p: argparse.ArgumentParser) -> None:
    from sae_hooks.models import FAMILIES

    g = p.add_argument_group("model")
    g.add_argument("--family", choices=FAMILIES, help="model family (required)")
    g.add_argument("--model-dir", help="local model directory (MiniLM: bundled by default)")
    g.add_argument("--tiny", action="store_true", help="random-init small model (no weights)")
    g.add_argument("--device", default="cpu", help="torch device for the model")
    g.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow code shipped with the model directory to run (off by default)",
    )


def _data_args(p: argparse.ArgumentParser, data_default: str | None = "pydoc") -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default=data_default,
        help="'pydoc' (CPython's docs), a .txt/.jsonl file, a folder of .txt files, "
        "or (ViT) a folder of images [default: %(default)s]",
    )
    g.add_argument("--context-length", type=int, default=128, help="tokens per context")
    g.add_argument("--batch-size", type=int, default=32, help="contexts or images per forward")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", default="default", help="run name: cache/<run> [default: %(default)s]")
    p.add_argument("--cache", help="cache directory [default: $SAE_HOOKS_CACHE or ./cache]")
    p.add_argument("--config", help="a TOML file with a table named after this subcommand")
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
    add_train_args(p)


def _sae_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sae", help="SAE directory [default: cache/<run>/train/sae]")
    p.add_argument("--point", help="hook point [default: the one the SAE was trained on]")


def _add_eval(sub) -> None:
    p = _command(
        sub,
        "eval",
        "Splice the trained SAE into the model: FVU, L0, dead latents, downstream metrics.",
        "sae-hooks eval --family gpt2 --model-dir models/gpt2 --run gpt2 --max-batches 20",
    )
    _run_args(p)
    _model_args(p)
    _data_args(p)
    _sae_args(p)
    p.add_argument("--max-batches", type=int, default=20, help="batches to evaluate")


def _add_ablate(sub) -> None:
    p = _command(
        sub,
        "ablate",
        "Ablate the latents that separate positive from negative examples, vs random ones.",
        "sae-hooks ablate --family minilm --run demo --positive pos.txt --negative neg.txt",
    )
    _run_args(p)
    _model_args(p)
    p.add_argument("--context-length", type=int, default=128, help="tokens per example")
    _sae_args(p)
    p.add_argument("--positive", help="examples of the concept: a .txt file, one per paragraph")
    p.add_argument("--negative", help="examples without it, same format")
    p.add_argument(
        "--target",
        default="similarity",
        help="similarity (encoders: cosine to the positives' centroid), token:ID (LMs: "
        "log-prob of a next token) or class:INDEX (classifiers) [default: %(default)s]",
    )
    p.add_argument("-m", type=int, default=8, help="latents to ablate [default: %(default)s]")
    p.add_argument("--n-random", type=int, default=8, help="random control draws")
    p.add_argument("--seed", type=int, default=0, help="seed of the random control")


def _add_inspect(sub) -> None:
    p = _command(
        sub,
        "inspect",
        "Summarise a store, an SAE directory or a run directory; or list a model's hook points.",
        "sae-hooks inspect cache/demo/store    |    sae-hooks inspect --family gpt2 --tiny",
    )
    p.add_argument(
        "path", nargs="?", help="a store (path or URL), an SAE directory or a run directory"
    )
    _model_args(p)
    p.set_defaults(config=None)


def _add_report(sub) -> None:
    """The report subcommand, when the report package is installed."""
    try:
        from sae_hooks.report.cli import add_report_parser
    except ImportError:
        return
    report = add_report_parser(sub)
    report.set_defaults(handler=cmd_report, parser=report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-hooks",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_capture, _add_train, _add_eval, _add_ablate, _add_inspect, _add_report):
        add(sub)
    return parser


# --------------------------------------------------------------------------- helpers


def _run_dir(args: argparse.Namespace) -> Path:
    from sae_hooks.pipeline import run_dir_for

    return run_dir_for(args.run, args.cache)


def _load_model(args: argparse.Namespace):
    from sae_hooks.devices import available_device
    from sae_hooks.models import load_model

    if not args.family:
        raise ValueError("--family is required: one of minilm, gpt2, vit, tl-gpt2")
    available_device(args.device)
    return load_model(
        args.family,
        args.model_dir,
        tiny=args.tiny,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
    )


def _inputs(args: argparse.Namespace, model, processor):
    """Batches of model inputs for the --data given."""
    from sae_hooks.data import image_batches, load_texts, text_batches

    if args.family == "vit":
        if args.data in (None, "pydoc"):
            raise ValueError("ViT needs --data pointing at a folder of images")
        size = model.config.image_size
        return image_batches(args.data, image_size=size, batch_size=args.batch_size)
    texts = load_texts(args.data)
    return text_batches(
        texts, processor, context_length=args.context_length, batch_size=args.batch_size
    )


def _sae_and_point(args: argparse.Namespace):
    from sae_hooks.sae import load_sae

    sae_dir = Path(args.sae) if args.sae else _run_dir(args) / "train" / "sae"
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
    from sae_hooks.store.capture import _model_name

    store_dir = _run_dir(args) / "store"
    if args.sae or not (store_dir / "zarr.json").is_file():
        return
    captured, given = open_store(str(store_dir)).model, _model_name(model)
    if captured and captured != given:
        raise ValueError(
            f"--family {args.family} loads model {given!r}, but the SAE of run {args.run!r} was "
            f"trained on activations of {captured!r} ({store_dir}); give the --family and "
            "--model-dir of the capture"
        )


def _vocab_size(model) -> int | None:
    config = getattr(model, "config", None) or getattr(model, "cfg", None)
    size = getattr(config, "vocab_size", None) or getattr(config, "d_vocab", None)
    return size if isinstance(size, int) else None


# -------------------------------------------------------------------------- commands


def cmd_capture(args: argparse.Namespace) -> None:
    from sae_hooks.store import capture_to_store

    if not args.point:
        raise ValueError("--point is required (e.g. resid_post.3); `sae-hooks inspect` lists them")
    model, processor = _load_model(args)
    store = args.store or str(_run_dir(args) / "store")
    result = capture_to_store(
        model,
        args.point,
        _inputs(args, model, processor),
        store,
        dtype=args.dtype,
        max_rows=args.max_rows,
        vit_tokens=args.vit_tokens,
        source=str(args.data),
        progress=not args.quiet,
    )
    print(f"{result.n_rows:,} rows of {', '.join(result.points)} in {store}")


def cmd_train(args: argparse.Namespace) -> None:
    from sae_hooks.cli_args import train_config
    from sae_hooks.store import open_store
    from sae_hooks.train import train

    run_dir = _run_dir(args)
    config = train_config(args, {"point": args.point, "progress": not args.quiet})  # fail fast
    store = open_store(args.store or str(run_dir / "store"))
    if config.point is None and len(store.points) == 1:  # record the point in the run's config
        config = dataclasses.replace(config, point=store.points[0])
    train(config, store, run_dir / "train")
    print(f"SAE saved to {run_dir / 'train' / 'sae'}; log in {run_dir / 'train' / 'log.jsonl'}")


def cmd_eval(args: argparse.Namespace) -> None:
    from sae_hooks.eval import evaluate_reconstruction

    model, processor = _load_model(args)
    sae, point = _sae_and_point(args)
    _check_model_matches_store(args, model)
    data = _inputs(args, model, processor)
    result = evaluate_reconstruction(
        model, point, sae, data, max_batches=args.max_batches, progress=not args.quiet
    )
    out = _run_dir(args) / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(result.to_json())
    print(result.summary())
    print(f"written to {out}")


def cmd_ablate(args: argparse.Namespace) -> None:
    from sae_hooks.concepts import centroid_similarity, text_examples
    from sae_hooks.data import load_texts
    from sae_hooks.eval import class_logit, concept_ablation, token_logprob

    if not (args.positive and args.negative):
        raise ValueError("--positive and --negative are required: files of example texts")
    if args.family == "vit":
        raise ValueError("ablate from the CLI takes texts; for images use concept_ablation()")
    model, tokenizer = _load_model(args)
    sae, point = _sae_and_point(args)
    _check_model_matches_store(args, model)
    pos = text_examples(load_texts(args.positive), tokenizer, context_length=args.context_length)
    neg = text_examples(load_texts(args.negative), tokenizer, context_length=args.context_length)
    kind, _, value = args.target.partition(":")
    if kind == "similarity":
        target = centroid_similarity(model, pos)
    elif kind == "token" and value.isdigit():
        vocab = _vocab_size(model)
        if vocab is not None and int(value) >= vocab:
            raise ValueError(
                f"--target {args.target}: token {value} is outside the model's vocabulary "
                f"of {vocab} tokens (0..{vocab - 1})"
            )
        target = token_logprob(int(value))
    elif kind == "class" and value.isdigit():
        target = class_logit(int(value))
    else:
        raise ValueError(
            f"--target {args.target!r} is not valid: use similarity, token:ID or class:INDEX"
        )
    result = concept_ablation(
        model, point, sae, pos, neg, target, m=args.m, n_random=args.n_random, seed=args.seed
    )
    out = _run_dir(args) / "ablation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"target": args.target, **result.to_dict()}, indent=2))
    print(result.table())
    print(f"written to {out}")


def cmd_report(args: argparse.Namespace) -> None:
    """`report` on a pipeline run directory (cache/<run>) finds its store and ablation."""
    from sae_hooks.report.cli import run_report

    run = Path(args.run_dir)
    if (run / "train" / "sae").is_dir():
        if args.store is None and (run / "store").is_dir():
            args.store = str(run / "store")
        if not args.ablation and (run / "ablation.json").is_file():
            args.ablation = [str(run / "ablation.json")]
        args.out = args.out or str(run / "report")
        args.run_dir = str(run / "train")
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
    """A short human summary of whatever lives at `path`."""
    p = Path(path)
    if (p / "config.json").is_file() and (p / "model.safetensors").is_file():
        from sae_hooks.sae import load_sae

        sae = load_sae(p)
        n = sum(t.numel() for t in sae.state_dict().values())
        config = json.dumps(sae.config(), indent=2)
        return f"SAE at {p}: {type(sae).__name__}, {n:,} numbers\n{config}"
    if (p / "summary.txt").is_file():
        return (p / "summary.txt").read_text()
    from sae_hooks.store import open_store

    store = open_store(path)
    lines = [
        f"store at {path}: {store.n_rows:,} rows, dtype {store.dtype}",
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


def main(argv: Sequence[str] | None = None) -> int:
    from sae_hooks.cli_args import apply_file_section, load_config_file
    from sae_hooks.store import StoreLockedError
    from sae_hooks.train import TrainConfig

    parser = build_parser()
    args = parser.parse_args(argv)
    sub = args.parser
    try:
        if getattr(args, "config", None) and args.command != "report":
            table = load_config_file(args.config, (args.command,)).get(args.command, {})
            if args.command == "train":
                fields = set(TrainConfig.__dataclass_fields__)
                args._file_train = {k: v for k, v in table.items() if k in fields}
                table = {k: v for k, v in table.items() if k not in fields}
            apply_file_section(sub, args, table, f"{args.config} [{args.command}]")
        args.handler(args)
    except (ValueError, TypeError, OSError, StoreLockedError, RuntimeError) as e:
        print(f"sae-hooks {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
