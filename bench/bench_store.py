"""Activation store vs plain numpy: write, read, shuffled batches, and training from a store.

One command: `.venv/bin/python bench/bench_store.py [--rows N] [--d D] [--rounds R]`.
Prints markdown tables. Every operation runs once per round, the operations
interleaved within a round so that they share the machine's load; each figure is
`min / median / max` over the rounds, with the 1-minute load average over the
rounds beside it. Files live in a temporary folder, so reads are from the page
cache on both sides (fair between them; optimistic next to cold disks or object
stores).

"plain copy" is the in-memory yardstick of the loader: the same bytes (the
stored dtype) copied batch by batch into fresh arrays, `np.array(rows[s:s+b])`,
one thread. The loader's ratio to it is taken round by round. Writes time the
first `--write-rows` rows (a fresh store each time, its creation included).

`--train-steps S` (default 4; 0 skips) also times S TopK training steps (768 ->
6144 at d = 768, k = 32) a round fed by the store's loader (one loader for the whole
run, as in training) against the same S batches fed from a list in memory,
interleaved over the rounds, and prints the ratio: the data path's cost to training.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from _common import load_average, machine, spread

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from sae_hooks.store import ActivationLoader, StoreWriter, open_store
from sae_hooks.store.layout import to_storage

GPU_TOKENS_PER_S = 1_500_000  # issue 17's GPU step target: the loader must feed it
SIZES: dict[str, int] = {}  # kind -> bytes of its acts/ arrays on disk


#: label -> (stored dtype, compressors): the defaults (bfloat16 gets lz4 + bit shuffle),
#: bfloat16 with zstd (the default before issue 17) and raw bfloat16.
KINDS = {
    "float32": ("float32", "auto"),
    "bfloat16": ("bfloat16", "auto"),
    "bfloat16 zstd": ("bfloat16", "zstd"),
    "bfloat16 uncompressed": ("bfloat16", None),
}
#: what each kind's store is, for the tables
CODECS = {
    "float32": "none (default)",
    "bfloat16": "blosc lz4 + bit shuffle (default)",
    "bfloat16 zstd": "blosc zstd(1) + byte shuffle (default before issue 17)",
    "bfloat16 uncompressed": "none",
}


def write_store(
    path: Path, x: np.ndarray, dtype: str, compressors: object = "auto", batch: int = 2048
) -> None:
    shutil.rmtree(path, ignore_errors=True)
    with StoreWriter(path, points=["p"], dtype=dtype, compressors=compressors) as w:
        for s in range(0, len(x), batch):
            rows = torch.arange(s, min(s + batch, len(x)))
            acts = {"p": torch.from_numpy(x[s : s + batch])}
            w.append(SimpleNamespace(acts=acts, token_ids=rows, doc_index=rows, position=rows))


def drain(loader: ActivationLoader) -> int:
    return sum(len(b) for b in loader)


def plain_copy(rows: np.ndarray, bs: int) -> Callable[[], None]:
    def run() -> None:
        for s in range(0, len(rows) - bs + 1, bs):
            np.array(rows[s : s + bs])

    return run


def operations(
    tmp: Path, x: np.ndarray, bs: int, write_rows: int
) -> dict[str, tuple[Callable[[], object], int]]:
    """label -> (one timed run, rows it handles); labels are '<operation> | <implementation>'.

    One loader per store, drained once a round: a round is one epoch of a loader
    that lives for the whole run, as in training (its scratch buffers are reused).
    """
    ops: dict[str, tuple[Callable[[], object], int]] = {}
    part = x[:write_rows]
    for kind, (dtype, compressors) in KINDS.items():
        path = tmp / kind.replace(" ", "_")
        write_store(path, x, dtype, compressors)
        SIZES[kind] = sum(f.stat().st_size for f in (path / "acts").rglob("*") if f.is_file())
        store = open_store(path)
        keep = ActivationLoader(store, "p", bs, val_fraction=0.0, dtype=None)
        write = functools.partial(write_store, tmp / "w", part, dtype, compressors)
        ops[f"write {kind} | store"] = (write, len(part))
        ops[f"read all {kind} | store read_raw"] = (functools.partial(store.read_raw, "p"), len(x))
        ops[f"shuffled batches {kind} | store loader, stored dtype"] = (
            functools.partial(drain, keep),
            len(x),
        )
        if dtype == "bfloat16" and compressors != "zstd":
            wide = ActivationLoader(store, "p", bs, val_fraction=0.0)
            ops[f"shuffled batches {kind} | store loader, widened to float32"] = (
                functools.partial(drain, wide),
                len(x),
            )
        if compressors == "auto":  # one yardstick per dtype
            copy = plain_copy(to_storage(x, dtype), bs)
            ops[f"batches {dtype} | plain copy (same bytes, in memory)"] = (copy, len(x))
    npy, npy_part = tmp / "acts.npy", tmp / "part.npy"
    np.save(npy, x)
    ops["write float32 | np.save"] = (functools.partial(np.save, npy_part, part), len(part))
    ops["read all float32 | np.load"] = (functools.partial(np.load, npy), len(x))
    mm = np.load(npy, mmap_mode="r")
    perm = np.random.default_rng(1).permutation(len(x))

    def memmap_batches() -> None:
        for s in range(0, len(x) - bs + 1, bs):
            torch.from_numpy(mm[np.sort(perm[s : s + bs])])

    ops["shuffled batches float32 | np.memmap random rows"] = (memmap_batches, len(x))
    return ops


def store_table(args: argparse.Namespace, tmp: Path) -> None:
    n, d, bs = args.rows, args.d, args.batch
    x = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
    ops = operations(tmp, x, bs, min(args.write_rows, n))
    for fn, _ in ops.values():
        fn()  # warm-up: page cache, allocator, the loaders' scratch buffers
    rates: dict[str, list[float]] = {label: [] for label in ops}
    loads = []
    for _ in range(args.rounds):
        loads.append(load_average())
        for label, (fn, rows) in ops.items():
            start = time.perf_counter()
            fn()
            rates[label].append(rows / (time.perf_counter() - start))
    loads.append(load_average())

    mb = x.nbytes / 1e6
    print(f"\n{n} rows x d={d} ({mb:.0f} MB as float32), batches of {bs} rows; {machine_cpu()}")
    print(f"{args.rounds} interleaved rounds; load average over them: {spread(loads, '{:.1f}')}\n")
    print(
        "| operation | implementation | rows/s (min / median / max) | MB/s float32-equiv. (median) |"
    )
    print("|---|---|---:|---:|")
    for label, rows_per_s in rates.items():
        op, impl = label.split(" | ")
        print(f"| {op} | {impl} | {spread(rows_per_s)} | {mb * np.median(rows_per_s) / n:,.0f} |")

    print("\n| store | codec | acts on disk (MB) | shrink vs raw rows |")
    print("|---|---|---:|---:|")
    for kind, size in SIZES.items():
        raw = n * d * (4 if KINDS[kind][0] == "float32" else 2)
        print(f"| {kind} | {CODECS[kind]} | {size / 1e6:,.1f} | {raw / size:.2f}x |")

    print("\nLoader vs a plain in-memory copy of the same bytes (per round; target >= 0.50):\n")
    print(
        "| loader | vs plain copy (min / median / max) | rows/s needed | rows/s delivered (median) |"
    )
    print("|---|---:|---:|---:|")
    for kind, mode in [
        ("float32", "stored dtype"),
        ("bfloat16", "stored dtype"),
        ("bfloat16", "widened to float32"),
        ("bfloat16 zstd", "stored dtype"),
        ("bfloat16 uncompressed", "stored dtype"),
        ("bfloat16 uncompressed", "widened to float32"),
    ]:
        dtype = KINDS[kind][0]
        r_loader = rates[f"shuffled batches {kind} | store loader, {mode}"]
        r_copy = rates[f"batches {dtype} | plain copy (same bytes, in memory)"]
        ratios = [a / b for a, b in zip(r_loader, r_copy, strict=True)]
        delivered = np.median(r_loader)
        print(
            f"| {kind}, {mode} | {spread(ratios, '{:.2f}')} | {GPU_TOKENS_PER_S:,} "
            f"| {delivered:,.0f} |"
        )


def machine_cpu() -> str:
    return machine(torch.device("cpu"))


def train_table(args: argparse.Namespace, tmp: Path) -> None:
    """TopK steps fed by the loader vs by the same batches from memory, interleaved."""
    from sae_hooks.train import TrainConfig, Trainer

    bs, steps = args.train_batch, args.train_steps
    # one epoch holds every timed batch: no epoch boundary (a new worker) inside the rounds
    n_rows = bs * (steps * (args.rounds + 1) + 2)
    x = np.random.default_rng(2).standard_normal((n_rows, args.d), dtype=np.float32)
    write_store(tmp / "train", x, "float32")
    store = open_store(tmp / "train")
    torch.manual_seed(0)
    config = TrainConfig(
        architecture="topk",
        nb_concepts=args.train_width,
        k_per_token=32,
        batch_size=bs,
        steps=10**6,
        log_every=10**6,
        val_every=0,
        checkpoint_every=0,
        progress=False,
    )
    trainer = Trainer(config, torch.from_numpy(x[: 2 * bs]), tmp / "run")

    # One loader for the whole run, as in training (its threads, plan and row map are
    # made once); a round takes its next `steps` batches. The in-memory side replays
    # the same batches, taken from an identical loader beforehand.
    feed = ActivationLoader(store, "p", bs, val_fraction=0.0).batches()
    replay = ActivationLoader(store, "p", bs, val_fraction=0.0).batches()
    in_memory = [next(replay).clone() for _ in range(steps * args.rounds)]

    def from_store() -> None:
        for _ in range(steps):
            trainer.train_step(next(feed))

    def from_memory(r: int) -> None:
        for b in in_memory[r * steps : (r + 1) * steps]:
            trainer.train_step(b)

    from_memory(0)  # warm-up
    t_store, t_mem, loads = [], [], []
    for r in range(args.rounds):
        loads.append(load_average())
        for fn, out in [(from_store, t_store), (functools.partial(from_memory, r), t_mem)]:
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    loads.append(load_average())
    ratios = [s / m for s, m in zip(t_store, t_mem, strict=True)]
    print(
        f"\nTraining from the store vs from memory, same batches: TopK {args.d} -> "
        f"{args.train_width}, k = 32, {bs} rows a step, {steps} steps a round, "
        f"{args.rounds} rounds; load average {spread(loads, '{:.1f}')} (target <= 1.05x)\n"
    )
    print("| fed from | ms/step (min / median / max) | time vs in-memory (min / median / max) |")
    print("|---|---:|---:|")
    print(f"| in-memory batches | {spread([t / steps * 1e3 for t in t_mem])} | 1.00x |")
    print(
        f"| store loader | {spread([t / steps * 1e3 for t in t_store])} "
        f"| {spread(ratios, '{:.3f}x')} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=131072)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--batch", type=int, default=4096, help="loader batch rows")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write-rows", type=int, default=32768, help="rows per timed write")
    parser.add_argument("--train-steps", type=int, default=4, help="0: skip the training table")
    parser.add_argument("--train-batch", type=int, default=2048)
    parser.add_argument("--train-width", type=int, default=6144)
    args = parser.parse_args()
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="bench_store_"))
    try:
        store_table(args, tmp)
        if args.train_steps:
            train_table(args, tmp)
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
