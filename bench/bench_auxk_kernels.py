"""AuxK's four products over the dead latents' columns, kernel by kernel (issue 35).

With m dead latents and each row's top k_aux = min(d/2, m) of them picked, AuxK's exact
gradient needs four products of the (rows, m) pick matrix V with d columns: the decode
V @ A, the picks' gradient <g_row, A_latent> at each pick (an SDDMM), the dead atoms'
gradient V^T g and the dead encoder rows' gradient G^T x. This times every exact kernel
torch offers for each, at the step's shapes (2,048 rows, d = 768), in process CPU time
and wall time (each the min of --repeat), so that `train/auxk_columns.py` can pick per
product and density; then AuxK's selection before and after 2026-12-07, the listings
only the bag sums read, and the encoder's forward matmul, against which the step's
ratios are taken.

    .venv/bin/python bench/bench_auxk_kernels.py --threads 1 --dead 500,2000,6000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent


def cpu_ms(fn, repeat: int) -> tuple[float, float]:
    """(process CPU, wall) ms of fn, each the min of `repeat` calls."""
    fn()
    cpu = wall = float("inf")
    for _ in range(repeat):
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - cpu_start)
    return cpu * 1e3, wall * 1e3


def csr_times(matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """matrix (sparse CSR) @ dense written straight into uninitialised memory."""
    out = torch.empty(matrix.shape[0], dense.shape[1])
    return torch.addmm(out, matrix, dense, beta=0, out=out)


def kernels(m: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    sys.path.insert(0, str(ROOT))
    from sae_hooks.sae.sparse import bag_sums
    from sae_hooks.train.auxk_columns import DeadPicks, dead_picks

    gen = torch.Generator().manual_seed(0)
    rows, d, k = args.rows, args.d, min(args.d // 2, m)
    atoms = torch.randn(m, d, generator=gen)
    g = torch.randn(rows, d, generator=gen)
    pre = torch.randn(rows, m, generator=gen)
    encoder_t = torch.randn(d, args.width, generator=gen)
    top = pre.topk(k, dim=1).indices
    keep = torch.zeros(rows, m, dtype=torch.bool).scatter_(1, top, True)
    picks = DeadPicks(torch.arange(m), pre.abs(), keep)
    v = picks.matrix()
    flat, by_latent, _, starts, values_t = picks.by_latent()
    values, row_starts = picks.values(), picks.row_starts()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        v_csr, vt_csr = v.to_sparse_csr(), v.t().contiguous().to_sparse_csr()
    psw = torch.ops.aten._embedding_bag_per_sample_weights_backward

    def t(fn) -> tuple[float, float]:
        return cpu_ms(fn, args.repeat)

    def eb(indices, table, bag_starts, weights):
        return F.embedding_bag(indices, table, bag_starts, per_sample_weights=weights, mode="sum")

    return {
        "decode V @ A": {
            "dense": t(lambda: v @ atoms),
            "CSR": t(lambda: csr_times(v_csr, atoms)),
            "embedding_bag": t(lambda: eb(picks.local, atoms, row_starts, values)),
            "bag_sums (L2 blocks)": t(lambda: bag_sums(picks.local, atoms, row_starts, values)),
        },
        "picks' gradient <g_r, A_j>": {
            "dense A @ g^T, read at picks": t(lambda: (atoms @ g.t()).reshape(-1)[flat]),
            "embedding_bag per-sample-weights backward": t(
                lambda: psw(g, atoms, picks.local, row_starts, picks.rows, 0)
            ),
        },
        "dead atoms' gradient V^T g": {
            "dense": t(lambda: v.t() @ g),
            "CSR": t(lambda: csr_times(vt_csr, g)),
            "embedding_bag": t(lambda: eb(by_latent, g, starts, values_t)),
            "bag_sums (L2 blocks)": t(lambda: bag_sums(by_latent, g, starts, values_t)),
        },
        "(the encoder rows' G^T x: the same kernels)": {},
        "the picks (selection)": {
            "row_top_k + scatter of its indices (before 2026-12-07)": t(
                lambda: _indices_and_scatter(pre, k)
            ),
            "dead_picks: each row's k-th largest by introselect": t(
                lambda: dead_picks(pre, torch.ones(m, dtype=torch.bool), k)
            ),
        },
        "the picks listed (bag sums only)": {
            "by row and by latent": t(lambda: _listed(DeadPicks(picks.cols, pre, keep))),
        },
        "for scale: the encoder's forward matmul": {
            f"(rows, d) @ (d, {args.width:,})": t(lambda: g @ encoder_t),
        },
    }


def _indices_and_scatter(pre: torch.Tensor, k: int) -> torch.Tensor:
    """AuxK's selection before 2026-12-07: each row's top-k indices (argpartition's
    (rows, m) index array), scattered into a mask with the positive ones."""
    from sae_hooks.sae.sparse import row_top_k

    top = row_top_k(pre, k)
    return (pre > 0) & torch.zeros_like(pre, dtype=torch.bool).scatter_(1, top, True)


def _listed(picks) -> None:
    picks.values()
    picks.by_latent()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dead", default="500,2000,6000")
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--width", type=int, default=6144, help="latents of the matmul for scale")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    deads = [int(v) for v in args.dead.split(",")]
    tables = {m: kernels(m, args) for m in deads}
    print(
        "\n| product | kernel | " + " | ".join(f"{m:,} dead: CPU / wall ms" for m in deads) + " |"
    )
    print("|---|---|" + "---:|" * len(deads))
    for product, by_kernel in tables[deads[0]].items():
        if not by_kernel:
            print(f"| {product} | | " + " | ".join("" for _ in deads) + " |")
        for kernel in by_kernel:
            cells = " | ".join("{:.1f} / {:.1f}".format(*tables[m][product][kernel]) for m in deads)
            print(f"| {product} | {kernel} | {cells} |")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
