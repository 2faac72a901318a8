"""Activation store vs plain numpy files: write, sequential read, shuffled batches.

One command: `.venv/bin/python bench/bench_store.py [--rows N] [--d D]`. Prints a
markdown table. Files live in a temporary folder, so reads are from the page cache
on both sides (the comparison is fair, the absolute figures are optimistic for cold
disks and much higher than for object stores).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from sae_hooks.store import ActivationLoader, StoreWriter, open_store


def timed(fn, repeats: int = 3) -> float:
    """Best of `repeats` runs: the machine is shared, the minimum is the least disturbed."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def write_store(path: Path, x: np.ndarray, dtype: str, batch: int) -> None:
    with StoreWriter(path, points=["p"], dtype=dtype) as w:
        for s in range(0, len(x), batch):
            rows = torch.arange(s, min(s + batch, len(x)))
            acts = {"p": torch.from_numpy(x[s : s + batch])}
            w.append(SimpleNamespace(acts=acts, token_ids=rows, doc_index=rows, position=rows))


def drain(loader: ActivationLoader) -> int:
    return sum(len(b) for b in loader)


def bench_store(tmp: Path, x: np.ndarray, dtype: str, bs: int) -> list[tuple[str, str, float]]:
    paths = iter([tmp / f"store_{dtype}_{i}" for i in range(3)])
    write = timed(lambda: write_store(next(paths), x, dtype, 2048))
    store = open_store(tmp / f"store_{dtype}_0")
    read = timed(lambda: store.read("p"))
    loader = ActivationLoader(store, "p", bs, val_fraction=0.0)
    shuffled = timed(lambda: drain(loader))
    return [
        (f"write {dtype}", "store", write),
        (f"read all {dtype}", "store", read),
        (f"shuffled batches {dtype}", "store loader", shuffled),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=65536)
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--batch", type=int, default=4096, help="training batch rows")
    args = parser.parse_args()
    torch.set_num_threads(2)
    n, d, bs = args.rows, args.d, args.batch
    x = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
    mb = x.nbytes / 1e6
    results: list[tuple[str, str, float]] = []  # (operation, implementation, seconds)
    tmp = Path(tempfile.mkdtemp(prefix="bench_store_"))
    try:
        for dtype in ("float32", "bfloat16"):
            results += bench_store(tmp, x, dtype, bs)
        npy = tmp / "acts.npy"
        results.append(("write float32", "np.save", timed(lambda: np.save(npy, x))))
        results.append(("read all float32", "np.load", timed(lambda: np.load(npy))))
        mm = np.load(npy, mmap_mode="r")
        perm = np.random.default_rng(1).permutation(n)

        def memmap_batches() -> None:
            for s in range(0, n - bs + 1, bs):
                torch.from_numpy(mm[np.sort(perm[s : s + bs])])

        results.append(("shuffled batches float32", "np.memmap random rows", timed(memmap_batches)))
    finally:
        shutil.rmtree(tmp)

    print(f"\n{n} rows x d={d} ({mb:.0f} MB as float32); shuffled batches of {bs} rows\n")
    print("| operation | implementation | MB/s (float32-equivalent) | rows/s |")
    print("|---|---|---:|---:|")
    for op, impl, secs in results:
        print(f"| {op} | {impl} | {mb / secs:,.0f} | {n / secs:,.0f} |")


if __name__ == "__main__":
    main()
