"""`sae-hooks bench-synthetic`: every SAE variant on synthetic data with a known dictionary.

Trains each registered variant at its default settings on SynthSAEBench-style
features (sae_hooks.eval.synthetic) and prints MMCS, MCC, F1, absorption, L0 and
FVU; writes bench_synthetic.json. Minutes on a CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sae_hooks.cli.options import Option, add_command, quiet_option

NAME = "bench-synthetic"
TABLE = None  # takes no --config
HELP = "recovery of a known dictionary by every SAE variant (CPU, minutes)"
RESULTS = "bench_synthetic.json"


def options() -> tuple[Option, ...]:
    from sae_hooks.sae import SAE_REGISTRY

    takes = tuple(sorted(a for a, cls in SAE_REGISTRY.items() if not cls.synthetic_opt_out))
    return (
        Option(
            ("--architectures",),
            "variants to train (default: every registered one that reconstructs its input; "
            "transcoders need paired data)",
            nargs="+",
            default=list(takes),
            choices=takes,
        ),
        Option(("--steps",), "training steps per variant", type=int, default=1000),
        Option(("--batch-size",), "rows per step", type=int, default=512),
        Option(("--seed",), "data and training seed", type=int, default=0),
        Option(("--out",), "output directory", default="bench_synthetic"),
        quiet_option(),
    )


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return add_command(sub, NAME, HELP, options(), run, description=__doc__)


def run(args: argparse.Namespace) -> None:
    from sae_hooks.eval.synthetic import format_benchmark

    if args.steps < 1 or args.batch_size < 1:
        raise ValueError(
            f"--steps and --batch-size must be >= 1, got {args.steps}, {args.batch_size}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = _train_each(args, out)
    (out / RESULTS).write_text(json.dumps(results, indent=2) + "\n")
    print(format_benchmark(results))
    print(f"written to {out / RESULTS}")


def _train_each(args: argparse.Namespace, out: Path) -> list[dict[str, object]]:
    """One variant at a time on the same features, with a bar naming the variant being
    trained; each trains into out/<variant>, so its warnings name it."""
    from tqdm.auto import tqdm

    from sae_hooks.eval.synthetic import benchmark_features, run_benchmark

    features = benchmark_features(seed=args.seed)
    results: list[dict[str, object]] = []
    bar = tqdm(args.architectures, unit="SAE", disable=args.quiet, desc=NAME)
    for arch in bar:
        bar.set_description(f"{NAME} {arch} ({args.steps} steps)")
        results += run_benchmark(
            [arch],
            str(out),
            steps=args.steps,
            batch_size=args.batch_size,
            seed=args.seed,
            features=features,
        )
    return results
