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
to cache/<run>/sweep/<name>/ (or --out), with sweep.json listing them. Every SAE is
then evaluated on held-out data (`evaluate_sweep`) with the run's own model (its
run.json; --model for a store made elsewhere), and `sae-hooks report` on the sweep
directory draws the frontier.
"""

from __future__ import annotations

import argparse
from collections.abc import Collection
from pathlib import Path
from typing import Any

from sae_hooks.cli.common import apply_defaults, input_batches, load_model, run_dir, use_record
from sae_hooks.cli.options import (
    Option,
    add_command,
    data_options,
    location_options,
    model_options,
    quiet_option,
)
from sae_hooks.run_config import SWEEP_TABLE, RunSchema, read_toml

NAME = "sweep"
TABLE = None  # takes no --config: its CONFIG.toml is the run.toml it reads
HELP = "Train a grid of SAEs (points x widths x k x ...) from one pass over a store."
LOCATIONS = ("store", "out")


def options() -> tuple[Option, ...]:
    return (
        Option(("sweep_config",), "a TOML file with a [sweep] table", metavar="CONFIG.toml"),
        *location_options(),
        Option(("--store",), "store location [default: [sweep] store, else cache/<run>/store]"),
        Option(("--out",), "sweep directory [default: cache/<run>/sweep]"),
        Option(("--until-step",), "stop every SAE at this step (resumable)", type=int),
        Option(("--eval-batches",), "with a model: batches to eval", type=int, default=8),
        quiet_option(),
        *model_options(),
        *data_options(),
    )


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return add_command(sub, NAME, HELP, options(), run, description=__doc__)


def read_sweep_config(
    path: str | Path, schema: RunSchema, train_flags: Collection[str] = frozenset()
) -> dict[str, Any]:
    """{"axes", "train", "store", "out"} from a TOML file with a [sweep] table."""
    from sae_hooks.train import TrainConfig

    path = Path(path)
    data = read_toml(path, schema.tables)  # a sweep file is a run.toml with [sweep]
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


def run(args: argparse.Namespace) -> None:
    from sae_hooks.cli import train
    from sae_hooks.runrecord import write_run_record
    from sae_hooks.store import open_store
    from sae_hooks.train import Sweep, TrainConfig, train_many

    train_keys = {o.dest for o in train.options()}  # a run.toml's [train] may set them too
    spec = read_sweep_config(args.sweep_config, args.schema, train_keys)
    run_at = run_dir(args)
    store_at = args.store or spec["store"] or str(run_at.store)
    out = Path(args.out or spec["out"] or run_at.sweep)
    use_record(args, run_at.root)  # the run's model and corpus, for the eval and the report
    if args.record is not None and run_at.root.resolve() not in out.resolve().parents:
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
    if (args.model or args.family) and args.until_step is None:
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
    from sae_hooks.eval import evaluate_sweep

    apply_defaults(args)
    model, processor = load_model(args)
    data = input_batches(args, model, processor, "held-out", args.eval_batches)  # never train
    results = evaluate_sweep(
        model, out, data, max_batches=args.eval_batches, progress=not args.quiet
    )
    for name, result in results.items():
        print(f"{name}: FVU {result.fvu:.4f}, L0 {result.l0:.2f}")
