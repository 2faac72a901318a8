#!/usr/bin/env python
"""A sweep on the offline default: 2 layers x 2 widths x 2 k of BatchTopK SAEs on MiniLM.

Captures resid_post.1 and resid_post.3 of all-MiniLM-L6-v2 over CPython's docs
(every paragraph but a held-out tenth) into ONE store, trains the 8 SAEs together
with `train_many` (each batch read once per layer for the 4 SAEs of that layer),
evaluates all 8 spliced into the model on the same held-out batches
(`evaluate_sweep`: one clean forward per batch), and draws the L0 / fidelity
frontier. No network: the weights and the text ship with the installed packages.

  python recipes/minilm_sweep.py             # the full run, ~10 minutes on 2 CPU cores
  python recipes/minilm_sweep.py --tiny      # random-init small model, seconds

Writes cache/minilm_sweep/: store/, sweep/<name>/ (one SAE each: config.json,
log.jsonl, checkpoint/, sae/, eval.json), sweep/sweep.json, frontier.png, sweep.md
(the table) and, unless --no-report, report/ (the dashboard of the first SAE with
the frontier and the table).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sae_hooks.data import text_batches
from sae_hooks.data.splits import split_texts
from sae_hooks.models import offline
from sae_hooks.recipe import minilm_and_pydoc, run_recipe

POINTS = ["resid_post.1", "resid_post.3"]
FULL = {"widths": [1536, 3072], "k": [16, 32], "batch_size": 1024, "total_tokens": 400_000}
TINY = {"widths": [64, 128], "k": [4, 8], "batch_size": 128, "total_tokens": 2_560}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tiny", action="store_true", help="random-init small model, for tests")
    p.add_argument("--model-dir", help="a local MiniLM directory (default: the bundled weights)")
    p.add_argument("--cache", help="cache directory (default $SAE_HOOKS_CACHE or ./cache)")
    p.add_argument("--run-name", help="run directory name under the cache")
    p.add_argument("--total-tokens", type=int, help="training rows per SAE")
    p.add_argument("--max-rows", type=int, help="stop capturing after this many rows")
    p.add_argument("--eval-batches", type=int, help="held-out batches to evaluate [8; --tiny 2]")
    p.add_argument("--context-length", type=int, help="tokens per context [128; --tiny 32]")
    p.add_argument("--no-report", action="store_true", help="skip the HTML dashboard")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    from sae_hooks.eval import evaluate_sweep
    from sae_hooks.report.frontier import plot_frontier, sweep_rows, sweep_table
    from sae_hooks.rundir import RunDir
    from sae_hooks.store import capture_to_store
    from sae_hooks.train import Sweep, TrainConfig, train_many

    args = parse(argv)
    offline()
    sizes = TINY if args.tiny else FULL
    model, tokenizer, texts = minilm_and_pydoc(args.tiny, args.model_dir)
    run = RunDir.named(
        args.run_name or ("minilm_sweep_tiny" if args.tiny else "minilm_sweep"), args.cache
    )
    train_texts, eval_texts = split_texts(texts)
    ctx, progress = args.context_length or (32 if args.tiny else 128), not args.quiet
    data = text_batches(train_texts, tokenizer, context_length=ctx, batch_size=32)
    store = capture_to_store(
        model, POINTS, data, run.store, max_rows=args.max_rows, progress=progress
    )

    base = TrainConfig(
        architecture="batchtopk",
        batch_size=sizes["batch_size"],
        total_tokens=args.total_tokens or sizes["total_tokens"],
        log_every=25,
        checkpoint_every=100,
        progress=progress,
    )
    sweep = Sweep(
        base, {"point": POINTS, "nb_concepts": sizes["widths"], "k_per_token": sizes["k"]}
    )
    train_many(sweep, run.store, run.sweep)

    per_batch = 4 if args.tiny else 16
    eval_data = list(text_batches(eval_texts, tokenizer, context_length=ctx, batch_size=per_batch))
    n_eval = args.eval_batches or (2 if args.tiny else 8)
    evaluate_sweep(model, run.sweep, eval_data[:n_eval], progress=progress)
    rows = sweep_rows(run.sweep)
    plot_frontier(rows, run.frontier)
    table = sweep_table(rows)
    run.sweep_table.write_text(table)
    if not args.no_report:
        from sae_hooks.report import build_report

        build_report(
            run.sweep / rows[0]["name"],
            store=store,
            sweep=rows,
            tokenizer=tokenizer,
            out=run.report_dir(),
            progress=progress,
        )
    print(f"{store.n_rows:,} rows of {', '.join(POINTS)}; {len(rows)} SAEs in {run.sweep}")
    print(table)
    print(f"frontier: {run.frontier}")
    return run.root


if __name__ == "__main__":
    run_recipe(main)
