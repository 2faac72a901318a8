"""Bytes and rows each rank reads for one epoch of TopK training, 1 vs N processes.

One command: `.venv/bin/python bench/bench_ranks.py [--rows 204800] [--d 256] [--ranks 1 2]`.
Writes a bfloat16 store (the default codec, blosc lz4) of random rows in a temporary
folder, then for each N runs `torchrun --nproc-per-node N` (CPU, gloo) on this file:
every rank trains one epoch of TopK (steps = training rows // batch) from the store
and reports what its process read, in two parts: "init" (the Trainer's set-up: the
initialisation sample) and "epoch" (fit: the epoch, the final validation, the
checkpoint), after a 1-step warm-up run so that lazily imported modules are not
counted: `/proc/self/io`'s `rchar` (bytes through read(), page cache
included) and `read_bytes` (bytes fetched from the disk: 0 when the store is in the
page cache, as it is right after writing), and the rows it asked the store for
(`read_raw` calls, counted by wrapping the opened store's method). `--code PATH`
measures the sae_hooks of another checkout (e.g. the code before streams).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def _io() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, value = line.split(":")
        fields[key] = int(value)
    return fields


def worker(args: argparse.Namespace) -> None:
    """One rank: one epoch of TopK training from the store; its reads to a JSON file."""
    import torch

    from sae_hooks.distributed import processes
    from sae_hooks.store import open_store
    from sae_hooks.train import TrainConfig, Trainer, train

    torch.set_num_threads(1)
    rank = processes()
    store = open_store(args.store)
    rows = {"n": 0}
    read_raw = store.read_raw

    @functools.wraps(read_raw)
    def counted(point, start=0, stop=None, **kw):
        rows["n"] += (store.n_rows if stop is None else stop) - start
        return read_raw(point, start, stop, **kw)

    store.read_raw = counted
    train_rows = store.n_rows - -(-store.n_rows // 100)  # val_fraction 0.01, rounded up
    cfg = TrainConfig(
        architecture="topk",
        point="p",
        expansion_factor=2,
        k_per_token=16,
        batch_size=args.batch,
        steps=train_rows // args.batch,
        val_every=None,
        checkpoint_every=None,
        log_every=10_000,
        progress=False,
    )
    # a 1-step run first: the modules training imports lazily are not counted
    train(dataclasses.replace(cfg, steps=1), store, Path(args.out) / f"warm{rank.rank}")
    rank.barrier()
    report = {"world": rank.world, "rank": rank.rank, "steps": cfg.steps}
    io, asked, tic = _io(), rows["n"], time.perf_counter()
    trainer = Trainer(cfg, store, Path(args.out) / "run")  # initialisation: the sample
    for phase, run in [("init", lambda: None), ("epoch", trainer.fit)]:
        run()
        now = _io()
        report[phase] = {
            "rchar": now["rchar"] - io["rchar"],
            "read_bytes": now["read_bytes"] - io["read_bytes"],
            "rows": rows["n"] - asked,
        }
        io, asked = now, rows["n"]
    report["wall_s"] = time.perf_counter() - tic
    Path(args.out, f"rank{rank.rank}.json").write_text(json.dumps(report))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write(path: Path, rows: int, d: int) -> int:
    """A bfloat16 store of random rows; its bytes on disk."""
    import numpy as np
    import torch

    from sae_hooks.store import StoreWriter

    gen = np.random.default_rng(0)
    with StoreWriter(path, points=["p"], dtype="bfloat16") as w:
        for s in range(0, rows, 4096):
            n = min(4096, rows - s)
            ids = torch.arange(s, s + n)
            acts = {"p": torch.from_numpy(gen.standard_normal((n, d), dtype=np.float32))}
            w.append(argparse.Namespace(acts=acts, token_ids=ids, doc_index=ids, position=ids))
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=204_800)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--code", default=str(HERE.parents[1]), help="checkout to measure")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, args.code)
    if args.worker:
        worker(args)
        return
    from _common import load_average, machine

    import sae_hooks

    tmp = Path(tempfile.mkdtemp(prefix="bench-ranks-"))
    try:
        size = write(tmp / "store", args.rows, args.d)
        print(f"code: {Path(sae_hooks.__file__).parents[1]}; store: {args.rows} rows x d={args.d}")
        print(f"bfloat16 (blosc lz4), {size / 1e6:.1f} MB on disk; {machine(_cpu())}\n")
        print(
            "| processes | rank | init: rchar MB | init: rows | epoch: rchar MB "
            "| epoch: read_bytes MB | epoch: rows | epoch: x store | wall s |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in args.ranks:
            out = tmp / f"n{n}"
            out.mkdir()
            _launch(args, n, tmp / "store", out)
            for r in range(n):
                rep = json.loads((out / f"rank{r}.json").read_text())
                init, epoch = rep["init"], rep["epoch"]
                print(
                    f"| {n} | {r} | {init['rchar'] / 1e6:.1f} | {init['rows']:,} "
                    f"| {epoch['rchar'] / 1e6:.1f} | {epoch['read_bytes'] / 1e6:.1f} "
                    f"| {epoch['rows']:,} | {epoch['rchar'] / size:.2f} | {rep['wall_s']:.1f} |"
                )
        print(f"\nload average after: {load_average():.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cpu():
    import torch

    return torch.device("cpu")


def _launch(args: argparse.Namespace, n: int, store: Path, out: Path) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [
        str(torchrun),
        f"--nproc-per-node={n}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{_free_port()}",
        str(HERE),
        "--worker",
        f"--store={store}",
        f"--out={out}",
        f"--batch={args.batch}",
        f"--code={args.code}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stdout[-3000:] + done.stderr[-6000:])


if __name__ == "__main__":
    main()
