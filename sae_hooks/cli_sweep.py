"""`sae-hooks sweep CONFIG.toml`: train a grid of SAEs from one pass over a store.

    [sweep]                       # axes: lists whose product is the grid
    point = ["resid_post.1", "resid_post.3"]
    nb_concepts = [768, 1536]     # or expansion_factor = [4, 8]
    k_per_token = [16, 32]        # target_l0 = [...] for jumprelu / relu
    seed = [0]
    store = "cache/demo/store"    # optional; else --store, else cache/<run>/store

    [train]                       # shared TrainConfig settings
    batch_size = 1024
    total_tokens = 2_000_000

Other tables of a run.toml ([model], [data], [capture], ...) are ignored, and so
are [train] keys that are `train` flags rather than TrainConfig fields. The SAEs go
to cache/<run>/sweep/<name>/ (or --out), with sweep.json listing them; with
--family the sweep is also evaluated (`evaluate_sweep`) and `sae-hooks report` on
the sweep directory draws the frontier.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

SWEEP_TABLE = "sweep"
LOCATIONS = ("store", "out")


def add_sweep_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `sweep` subcommand (its handler and parser are set as defaults)."""
    from sae_hooks import cli

    p = sub.add_parser(
        "sweep",
        help="Train a grid of SAEs (points x widths x k x ...) from one pass over a store.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep_config", metavar="CONFIG.toml", help="a TOML file with a [sweep] table")
    p.add_argument("--run", default="default", help="run name: cache/<run> [default: %(default)s]")
    p.add_argument("--cache", help="cache directory [default: $SAE_HOOKS_CACHE or ./cache]")
    p.add_argument(
        "--store", help="store location [default: [sweep] store, else cache/<run>/store]"
    )
    p.add_argument("--out", help="sweep directory [default: cache/<run>/sweep]")
    p.add_argument("--until-step", type=int, help="stop every SAE at this step (resumable)")
    p.add_argument("--eval-batches", type=int, default=8, help="with --family: batches to eval")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    cli._model_args(p)
    cli._data_args(p)
    p.set_defaults(handler=run_sweep, parser=p, config=None)
    return p


def read_sweep_config(path: str | Path, train_flags: set[str] = frozenset()) -> dict[str, Any]:
    """{"axes", "train", "store", "out"} from a TOML file with a [sweep] table."""
    from sae_hooks.run_config import read_toml
    from sae_hooks.train import TrainConfig

    path = Path(path)
    data = read_toml(path)  # the run.toml reader: a sweep file is a run.toml with [sweep]
    table = data.get(SWEEP_TABLE)
    if not isinstance(table, dict) or not table:
        raise ValueError(
            f"{path} has no [sweep] table: list the axes there, e.g. k_per_token = [16, 32]"
        )
    fields = set(TrainConfig.field_types())
    axes = {k: v for k, v in table.items() if k not in LOCATIONS}
    bad = sorted(k for k, v in axes.items() if not isinstance(v, list))
    if bad:
        raise ValueError(
            f"{path} [sweep]: {bad} must be lists (the values to sweep); put settings shared "
            "by every SAE in [train]"
        )
    unknown = sorted(set(axes) - fields)
    if unknown:
        raise ValueError(
            f"{path} [sweep]: unknown axes {unknown}; an axis is a TrainConfig field "
            f"(e.g. point, architecture, nb_concepts, k_per_token, target_l0, lr, seed)"
        )
    train = data.get("train", {})
    if not isinstance(train, dict):
        raise ValueError(f"{path}: [train] must be a table of key = value")
    unknown = sorted(set(train) - fields - train_flags)
    if unknown:
        raise ValueError(f"{path} [train]: unknown keys {unknown}; use TrainConfig fields")
    return {
        "axes": axes,
        "train": {k: v for k, v in train.items() if k in fields},
        "store": table.get("store"),
        "out": table.get("out"),
    }


def _train_flags() -> set[str]:
    """The `train` subcommand's flags: a run.toml's [train] table may set them too."""
    from sae_hooks.cli import build_parser

    for action in build_parser()._actions:
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict) and "train" in choices:
            return {a.dest for a in choices["train"]._actions}
    return set()


def run_sweep(args: argparse.Namespace) -> None:
    from sae_hooks.cli import _run_dir, _use_record
    from sae_hooks.runrecord import write_run_record
    from sae_hooks.store import open_store
    from sae_hooks.train import Sweep, TrainConfig, train_many

    spec = read_sweep_config(args.sweep_config, _train_flags())
    run_dir = _run_dir(args)
    store_at = args.store or spec["store"] or str(run_dir / "store")
    out = Path(args.out or spec["out"] or run_dir / "sweep")
    _use_record(args, run_dir)  # the run's model and corpus, for the eval and the report
    if args.record is not None and run_dir.resolve() not in out.resolve().parents:
        write_run_record(out, args.record)  # a sweep kept elsewhere still says what made it
    base = {"progress": not args.quiet, **spec["train"]}
    if "point" not in spec["axes"] and "point" not in base:
        points = open_store(store_at).points
        if len(points) != 1:
            raise ValueError(f"the store holds {points}: sweep over point = [...] or set one")
        base["point"] = points[0]
    sweep = Sweep(TrainConfig.from_dict(base), spec["axes"])
    names = sweep.names()
    print(f"sweep of {len(names)} SAEs into {out}: " + ", ".join(names))
    train_many(sweep, store_at, out, until_step=args.until_step)
    if args.family and args.until_step is None:
        _evaluate(args, out)
    if args.until_step is None:
        _seed_noise(sweep, out)
    print(f"SAEs in {out}/<name>/sae; metrics in {out}/sweep.json; `sae-hooks report {out}`")


# What the seed report prints of each group (all of it goes to seed_report.json).
SEED_REPORT_KEYS = ("val/fvu", "val/l0", "val/dead_fraction", "fvu", "l0", "dead_fraction")


def _seed_noise(sweep: Any, out: Path) -> None:
    """With two or more seeds on the axis: mean +- std over seeds of every metric, and
    how alike the seeds' decoders are against a random-dictionary null."""
    from sae_hooks.eval.seeds import (
        format_seed_report,
        sweep_seed_reports,
        write_sweep_seed_reports,
    )

    if len(sweep.axes.get("seed", [])) < 2:
        return
    reports = sweep_seed_reports(out, sweep.configs(), sweep.names())
    if not reports:
        return
    path = write_sweep_seed_reports(reports, out)
    for label, report in reports.items():
        keys = [k for k in report["metrics"] if k in SEED_REPORT_KEYS or k.startswith("eval/")]
        print(f"{label}: " + format_seed_report(report, keys=keys))
    print(f"seed noise of every metric in {path}")


def _evaluate(args: argparse.Namespace, out: Path) -> None:
    from sae_hooks.cli import _defaults, _inputs, _load_model
    from sae_hooks.eval import evaluate_sweep

    _defaults(args)
    model, processor = _load_model(args)
    data = _inputs(args, model, processor, "held-out", args.eval_batches)  # never train rows
    results = evaluate_sweep(
        model, out, data, max_batches=args.eval_batches, progress=not args.quiet
    )
    for name, result in results.items():
        print(f"{name}: FVU {result.fvu:.4f}, L0 {result.l0:.2f}")
