"""Sweep wall time: N SAEs trained together (train_many) vs N separate train() runs.

Two sources, one command each:

  .venv/bin/python bench/bench_sweep.py --source store
      a 2-point store of d = 256 float16 rows written to a temporary folder; 8 small
      TopK SAEs on one point (2 widths x 2 k x 2 seeds). The sweep reads each batch
      once for all 8, the separate runs read it 8 times.
  .venv/bin/python bench/bench_sweep.py --source model
      live capture from the bundled MiniLM on CPython's docs; 8 SAEs on 2 points
      (2 points x 2 widths x 2 k). The sweep runs one forward per input batch for
      both points (MultiPointSource), the separate runs one each (ModelSource).

Both sides train the same 8 configs for the same steps on the same batches. Rounds
alternate the two sides, so they share whatever load the machine has; the table
gives min / median / max over the rounds, and the load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from _common import machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sae_hooks.store import StoreWriter  # noqa: E402
from sae_hooks.train import (  # noqa: E402
    ModelSource,
    MultiPointSource,
    Sweep,
    TrainConfig,
    train,
    train_many,
)

POINTS = ("resid_post.0", "resid_post.1")


def write_store(path: Path, rows: int, d: int, chunk_rows: int) -> None:
    """Random low-rank-plus-noise rows at two points (float16 on disk, as captures are)."""
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(64, d, generator=g)
    with StoreWriter(path, points=list(POINTS), d_model=d, chunk_rows=chunk_rows) as writer:
        for start in range(0, rows, 8192):
            n = min(8192, rows - start)
            x = torch.randn(n, 64, generator=g) @ basis + 0.1 * torch.randn(n, d, generator=g)
            writer.append(
                SimpleNamespace(
                    acts={p: x.half() for p in POINTS},
                    token_ids=torch.zeros(n, dtype=torch.int64),
                    doc_index=torch.arange(start, start + n) // 128,
                    position=torch.arange(n) % 128,
                )
            )


def sweep(args: argparse.Namespace, d: int) -> Sweep:
    base = TrainConfig(
        point=POINTS[0],
        architecture="topk",
        batch_size=args.batch_size,
        steps=args.steps,
        log_every=max(args.steps // 4, 1),
        val_every=None,
        checkpoint_every=None,
        init_rows=2048,
        device=args.device,
        progress=False,
    )
    axes = {"nb_concepts": [d, d * 2], "k_per_token": [8, 32], "seed": [0, 1]}
    if args.source == "model":
        axes = {"point": list(MODEL_POINTS), **axes, "seed": [0]}
    return Sweep(base, axes)


MODEL_POINTS = ("resid_post.1", "resid_post.3")


def minilm_data(args: argparse.Namespace):
    """The bundled MiniLM and batches of CPython's docs (offline)."""
    from transformers import AutoModel, AutoTokenizer

    from sae_hooks.data import pydoc_texts, text_batches
    from sae_hooks.models import minilm_dir, offline

    offline()
    model = AutoModel.from_pretrained(minilm_dir(), local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
    data = list(text_batches(pydoc_texts(), tokenizer, context_length=128, batch_size=16))
    return model, data


def run_together(source, grid: Sweep, out: Path, live) -> float:
    tic = time.perf_counter()
    if live is not None:
        source = MultiPointSource(live[0], MODEL_POINTS, live[1], **LIVE)
    train_many(grid, source, out)
    return time.perf_counter() - tic


def run_apart(source, grid: Sweep, out: Path, live) -> float:
    tic = time.perf_counter()
    for cfg, name in zip(grid.configs(), grid.names(), strict=True):
        if live is not None:
            source = ModelSource(live[0], cfg.point, live[1], **LIVE)
        train(cfg, source, out / name)
    return time.perf_counter() - tic


LIVE = {"buffer_rows": 4096, "val_rows": 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", choices=("store", "model"), default="store")
    p.add_argument("--rows", type=int, default=300_000)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--chunk-rows", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--dir", help="where to write the store [default: a temporary folder]")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-sweep-"))
    live, source, d = None, str(work / "store"), args.d
    if args.source == "model":
        live = minilm_data(args)
        d = live[0].config.hidden_size
    elif not Path(source).exists():
        write_store(Path(source), args.rows, args.d, args.chunk_rows)
    grid = sweep(args, d)
    n = len(grid.configs())
    together, apart = [], []
    for r in range(args.rounds):
        for side, times, fn in (("together", together, run_together), ("apart", apart, run_apart)):
            out = work / f"{side}-{r}"
            times.append(fn(source, grid, out, live))
            shutil.rmtree(out)
            print(f"round {r} {side}: {times[-1]:.2f} s", flush=True)
    ratio = [t / a for t, a in zip(together, apart, strict=True)]
    device = torch.device(args.device)
    print(f"\n{n} SAEs ({', '.join(grid.names())}), {args.steps} steps of {args.batch_size} rows,")
    what = "live MiniLM capture" if live else f"store of {args.rows:,} float16 rows"
    print(f"d = {d}, {what}; {machine(device)}")
    print("| | min | median | max |")
    print("|---|---|---|---|")
    for label, values, unit in (
        (f"train_many, {n} SAEs (s)", together, ""),
        (f"{n} x train() (s)", apart, ""),
        ("ratio together / apart", ratio, ""),
    ):
        cells = [f"{v:.2f}{unit}" for v in (min(values), statistics.median(values), max(values))]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.dir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
