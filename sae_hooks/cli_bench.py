"""`sae-hooks bench-synthetic`: every SAE variant on synthetic data with a known dictionary.

Trains each registered variant at its default settings on SynthSAEBench-style
features (sae_hooks.eval.synthetic) and prints MMCS, MCC, F1, absorption, L0 and
FVU; writes bench_synthetic.json. Minutes on a CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_bench_synthetic(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `bench-synthetic` subcommand (handler and parser in its defaults)."""
    from sae_hooks.sae import SAE_REGISTRY

    p = sub.add_parser(
        "bench-synthetic",
        help="recovery of a known dictionary by every SAE variant (CPU, minutes)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    takes = sorted(a for a, cls in SAE_REGISTRY.items() if not cls.synthetic_opt_out)
    p.add_argument(
        "--architectures",
        nargs="+",
        default=takes,
        choices=takes,
        help="variants to train (default: every registered one that reconstructs its input; "
        "transcoders need paired data)",
    )
    p.add_argument("--steps", type=int, default=1000, help="training steps per variant")
    p.add_argument("--batch-size", type=int, default=512, help="rows per step")
    p.add_argument("--seed", type=int, default=0, help="data and training seed")
    p.add_argument("--out", default="bench_synthetic", help="output directory")
    p.set_defaults(handler=cmd_bench_synthetic, parser=p, config=None)
    return p


def cmd_bench_synthetic(args: argparse.Namespace) -> None:
    from sae_hooks.eval.synthetic import format_benchmark, run_benchmark

    if args.steps < 1 or args.batch_size < 1:
        raise ValueError(
            f"--steps and --batch-size must be >= 1, got {args.steps}, {args.batch_size}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_benchmark(
        list(args.architectures),
        str(out),
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    (out / "bench_synthetic.json").write_text(json.dumps(results, indent=2) + "\n")
    print(format_benchmark(results))
    print(f"written to {out / 'bench_synthetic.json'}")
