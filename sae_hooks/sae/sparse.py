"""Decode only the active latents: x_hat = sum_j z_j * atom_j + b_dec over the j with z_j != 0.

A TopK / BatchTopK code has k non-zeros out of n, so the dense `z @ atoms` spends
n / k times the work it needs, in the forward and twice more in the backward
(grad of z, grad of the atoms). `F.embedding_bag(mode="sum", per_sample_weights=...)`
gathers the k atoms of each row and sums them; its backward gives the gradient of
the kept values and a gradient of the atoms that touches only the rows used.

Two layouts:
- fixed: every row keeps exactly k latents (TopK), known from the top-k indices,
  so there is no host sync and no scan of z;
- ragged: rows keep different counts (BatchTopK, a threshold, an edited code);
  `decode_pairs` takes the support as flat (row, latent, value) triples sorted by
  row (BatchTopK's training forward has them from its sorted top-k indices, no
  host sync); `decode_ragged` finds them with `z.nonzero()`, one host sync, for
  codes that come without them (eval, `decode(z)`).

Either is exact up to float summation order. The gradient reaches the atoms and
the non-zero codes (the gathered values), not the zero ones: SAE._decodes_sparsely
uses these only where that is the whole gradient.

Measured on 2 idle CPU cores at 768 -> 6144, 2048 rows, forward + backward of
the decoder alone (`bench/bench_train.py --decoder`, docs/benchmarks.md): 8x
faster than dense at density 0.005 (k = 32), 3x at 0.04, 1.8x at 0.08, slower
at 0.17. The cut-off MAX_SPARSE_DENSITY = 0.05 keeps a margin for loaded
machines, where embedding_bag's backward (a parallel sort) degrades first.
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

MAX_SPARSE_DENSITY = 0.05
"""Share of non-zero codes above which TopK / BatchTopK decode densely (see above)."""

HOST_DEVICES = ("cpu",)
"""Devices whose tensors the host reads without waiting for a device: there the sparse
paths may branch on a value (`sparse_encoder.batch_top_k`'s candidate check,
`nonzero_pairs`' compaction); elsewhere they never do, so a step makes no host sync."""

MAX_SPARSE_GRAD_DENSITY = 0.05
"""Share of kept codes above which the encoder's gradient is computed densely
(sparse_encoder.py; the crossover is measured by `bench_train.py --encoder`)."""


def decode_fixed(
    indices: torch.Tensor,
    values: torch.Tensor,
    atoms: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    order: LatentOrder | None = None,
) -> torch.Tensor:
    """Rows (N, d) from k (index, value) pairs per row; indices and values are (N, k).
    order: the pairs' `LatentOrder`, when the encoder's backward sorts the same pairs."""
    if indices.shape != values.shape or indices.dim() != 2:
        raise ValueError(
            "decode_fixed needs indices and values of the same shape (N, k), got "
            f"{tuple(indices.shape)} and {tuple(values.shape)}"
        )
    n_rows, k = indices.shape
    rows = torch.arange(n_rows, device=indices.device).repeat_interleave(k)
    offsets = torch.arange(0, n_rows * k, k, device=indices.device)
    cols = indices.reshape(-1)
    out = SparseDecode.apply(rows, cols, values.reshape(-1), atoms, offsets, order)
    return out if bias is None else out + bias


def decode_ragged(
    z: torch.Tensor, atoms: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Rows (N, d) from a dense code z (N, n) with any number of non-zeros per row."""
    if z.dim() != 2 or z.shape[1] != atoms.shape[0]:
        raise ValueError(
            f"decode_ragged needs codes of shape (N, {atoms.shape[0]}), got {tuple(z.shape)}"
        )
    rows, cols = z.nonzero(as_tuple=True)  # row-major, so each row's entries are contiguous
    return decode_pairs(rows, cols, pairs_of(z, rows, cols), atoms, bias, n_rows=z.shape[0])


def decode_pairs(
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    atoms: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    n_rows: int,
    order: LatentOrder | None = None,
) -> torch.Tensor:
    """Rows (n_rows, d) from flat (row, latent, value) triples sorted by row; a row
    with no triple decodes to the bias. Row offsets from searchsorted: no host sync.
    order: the pairs' `LatentOrder`, when the encoder's backward sorts the same pairs."""
    out = SparseDecode.apply(rows, cols, values, atoms, row_offsets(rows, n_rows), order)
    return out if bias is None else out + bias


PARALLEL_ROWS_FROM = 1 << 20
"""Elements of a host array from which `by_row_chunks` splits its rows over threads."""

_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def by_row_chunks(fn: Callable[[np.ndarray, int], np.ndarray], array: np.ndarray) -> np.ndarray:
    """fn(chunk, first row) over chunks of a host array's rows, concatenated: on torch's
    intra-op thread count, in threads (numpy's partition, compare and nonzero kernels
    release the GIL), where torch's own host kernels run on all of them and numpy's on
    one. 2,048 x 2,000, AuxK's 384 picks a row, 2 threads: 7.4 ms against 12.3."""
    threads = torch.get_num_threads()
    if threads < 2 or array.size < PARALLEL_ROWS_FROM or len(array) < threads:
        return fn(array, 0)
    key = (os.getpid(), threads)  # a forked child has none of its parent's threads
    pool = _POOLS.get(key)
    if pool is None:
        pool = _POOLS[key] = ThreadPoolExecutor(threads, thread_name_prefix="sae_hooks_rows")
    bounds = np.linspace(0, len(array), threads + 1).astype(int)
    chunks = [(array[lo:hi], lo) for lo, hi in itertools.pairwise(bounds)]
    return np.concatenate(list(pool.map(lambda chunk: fn(*chunk), chunks)))


def flat_true(mask: np.ndarray) -> np.ndarray:
    """Flat indices of a host bool matrix's True entries, ascending (`by_row_chunks`)."""

    def chunk_true(chunk: np.ndarray, first_row: int) -> np.ndarray:
        return np.flatnonzero(chunk) + first_row * chunk.shape[1]

    return by_row_chunks(chunk_true, mask)


def row_counts(mask: np.ndarray) -> np.ndarray:
    """True entries in each row of a host bool matrix (`by_row_chunks`)."""
    return by_row_chunks(lambda chunk, _: np.count_nonzero(chunk, axis=1), mask)


def row_offsets(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Start of each row's run in `rows` (sorted ascending), (n_rows,); no host sync."""
    targets = torch.arange(n_rows, device=rows.device, dtype=rows.dtype)
    return torch.searchsorted(rows, targets)


def pairs_of(matrix: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """matrix[rows, cols] as one index_select of the flat matrix. On CPU torch's
    advanced indexing of 65k pairs took 8 ms on 2 threads against 0.3 ms for
    index_select (and for itself on one thread): its parallel kernel stalls."""
    flat = rows * matrix.shape[-1] + cols
    return matrix.reshape(-1).index_select(0, flat)


INT16_MIN, INT16_MAX = -(2**15), 2**15 - 1


def sort_indices(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted, order) of a 1-d integer tensor. On CPU numpy's serial sort: torch's
    parallel sort of 65k indices took 1 ms alone and 100-400 ms on 2 cores shared
    with other jobs (bench/bench_train.py --ratio profiles). Latents below 2^15 sort as
    16-bit keys, by radix (275k: 8 ms against 20 ms as int64, one thread)."""
    if values.device.type != "cpu":
        return values.sort()
    keys = values.numpy()
    if keys.size and keys.min() >= INT16_MIN and keys.max() <= INT16_MAX:
        keys = keys.astype(np.int16)  # numpy's stable sort of 16-bit keys is a radix sort
    order = torch.from_numpy(np.argsort(keys, kind="stable"))
    return values.index_select(0, order), order


NUMPY_TOP_K_FROM = 64
"""Per-row k from which `row_top_k` selects with numpy's introselect on the host."""

BLOCK_CANDIDATES = 1024
"""Codes a row keeps for `row_top_k`'s exact selection after its block pruning: blocks
of BLOCK_CANDIDATES // k columns (a power of two), the k blocks with the largest
maxima. 2,048 x 6,144 rows (bench/bench_train.py --ratio, docs/benchmarks.md), Intel
Xeon, 2 threads: k = 32 in 8.3 ms against torch's top-k 17.5; k = 128 in 17.6 against
numpy's introselect 25."""


def row_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (N, k) of each row's k largest scores (N, m), in no particular order.

    On the host, the k largest of a row lie in the k column blocks with the largest
    maxima (each of those blocks holds a score at least the k-th largest block maximum,
    so no score of another block can beat k of them): those blocks' k * width scores are
    all that the exact selection reads (`_block_top_k`). The selection itself is numpy's
    argpartition from k = NUMPY_TOP_K_FROM (torch's CPU top-k grows with k: single
    thread, 2048 rows: 42 ms at k = 32 of 6,144, 125 ms at 128, where the introselect
    takes 48 and 19) and torch's top-k below. bf16 / fp16 scores (autocast) go the same
    way in strided blocks, their candidates upcast for numpy (exact; torch's bf16 top-k
    of 32 over 2,048 x 6,144 took 23 ms of an 80 ms step, Intel Xeon, 2 threads). The
    same set as torch's top-k but for ties at the k-th value, which either breaks."""
    m = scores.shape[-1]
    if scores.device.type not in HOST_DEVICES or not scores.is_floating_point() or not 0 < k < m:
        return scores.topk(k, dim=-1, sorted=False).indices
    rows = scores.detach().reshape(-1, m)
    width = _block_width(m, k)
    picked = _select(rows, k) if width is None else _block_top_k(rows, k, width)
    return picked.view(*scores.shape[:-1], k)


def _block_width(m: int, k: int) -> int | None:
    """Columns a block for `row_top_k`'s pruning: a power of two, k blocks of it at most a
    sixth of the row; None where no width of at least MIN_BLOCK_WIDTH prunes that much.
    Less pruning lost to the plain selection (2,048 rows, one thread: k = 96 of 2,000 in
    blocks of 4, 8.7 ms against 7.4; k = 256 of 6,144 in blocks of 4 won, 19 against 25)."""
    width = 1 << max(0, (BLOCK_CANDIDATES // k).bit_length() - 1)
    while width >= MIN_BLOCK_WIDTH and 6 * k * width > m:
        width //= 2
    return width if width >= MIN_BLOCK_WIDTH else None


MIN_BLOCK_WIDTH = 4


def _select(rows: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's k largest (N, k), by numpy's introselect from NUMPY_TOP_K_FROM."""
    if k < NUMPY_TOP_K_FROM:
        return rows.topk(k, dim=-1, sorted=False).indices
    return _top_positions(rows, k)


def _block_top_k(rows: torch.Tensor, k: int, width: int) -> torch.Tensor:
    """`row_top_k` over the k blocks of `width` columns with the largest maxima; the
    columns past the last whole block are candidates of every row. Blocks of 32 columns
    or more are runs of adjacent columns; narrower ones are strided (block b: columns b,
    b + blocks, ...), whose maxima are a vectorised max across `width` rows of a view
    (2,048 x 6,144, width 16: 1.6 ms against 5-10 for the max over runs of 16)."""
    n_rows, m = rows.shape
    n_blocks = m // width
    whole = n_blocks * width
    # torch's max over runs of bf16 is slow (8.2 ms against 1.5 strided, 2,048 x 6,144)
    strided = width < 32 or rows.dtype not in (torch.float32, torch.float64)
    if strided:
        maxima = rows[:, :whole].unflatten(1, (width, n_blocks)).amax(1)
    else:
        maxima = rows[:, :whole].unflatten(1, (n_blocks, width)).amax(-1)
    top_blocks = _select(maxima, k)  # (N, k)
    if not strided and whole == m and rows.is_contiguous():  # whole runs: rows of a view
        flat = top_blocks + torch.arange(n_rows).unsqueeze(1) * n_blocks
        candidates = rows.view(-1, width).index_select(0, flat.view(-1)).view(n_rows, k * width)
        pos = _top_positions(candidates, k)
        return top_blocks.gather(1, pos // width) * width + pos % width
    if strided and whole == m and width >= 8:  # through a broadcast index, none built
        # (at 4 columns a block torch's gather over it was slower: 18 ms against 13)
        index = top_blocks.unsqueeze(1).expand(n_rows, width, k)
        candidates = rows.unflatten(1, (width, n_blocks)).gather(2, index).view(n_rows, width * k)
        pos = _top_positions(candidates, k)  # position i * k + j: block j's i-th column
        return top_blocks.gather(1, pos % k) + pos.div(k, rounding_mode="floor") * n_blocks
    if strided:
        cols = (top_blocks.unsqueeze(-1) + torch.arange(width) * n_blocks).view(n_rows, k * width)
    else:
        cols = (top_blocks.unsqueeze(-1) * width + torch.arange(width)).view(n_rows, k * width)
    if whole < m:
        tail = torch.arange(whole, m).expand(n_rows, m - whole)
        cols = torch.cat([cols, tail], dim=1)
    return cols.gather(1, _top_positions(rows.gather(1, cols), k))


def _top_positions(candidates: torch.Tensor, k: int) -> torch.Tensor:
    """Positions (N, k) of each row's k largest candidates, by numpy's introselect
    (2,048 x 1,024, k = 32: 4.3 ms against torch's top-k 7.0 on 2 threads)."""
    size = candidates.shape[1]
    if candidates.dtype not in (torch.float32, torch.float64):
        candidates = candidates.float()  # bf16 / fp16: exact, and numpy has neither

    def top(chunk: np.ndarray, _: int) -> np.ndarray:
        return np.argpartition(chunk, size - k, axis=-1)[:, size - k :]

    return torch.from_numpy(np.ascontiguousarray(by_row_chunks(top, candidates.numpy())))


def nonzero_pairs(
    rows: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """On CPU, the pairs whose weight is not 0 (a 0 adds nothing to a weighted sum);
    elsewhere all of them, since the kept count would make the host wait for the device.
    JumpReLU's support holds ~4 pairs at 0 (codes within the kernel's reach of their
    threshold, kept for theta's gradient) for every code above its threshold."""
    if weights.device.type not in HOST_DEVICES or weights.dim() != 1:
        return rows, cols, weights
    keep = weights != 0
    if bool(keep.all()):
        return rows, cols, weights
    at = keep.nonzero().squeeze(1)
    return rows.index_select(0, at), cols.index_select(0, at), weights.index_select(0, at)


class LatentOrder:
    """The (row, latent) pairs of one support sorted by latent, sorted once when first
    asked for: the decoder's atom gradient and the encoder's weight gradient are CSR
    products over the same pairs (TopK, BatchTopK, JumpReLU, AuxK), each of which sorted
    them anew before."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor) -> None:
        self.rows, self.cols = rows, cols
        self._sorted: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def sorted(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(permutation, rows, cols) of the pairs in latent order (stable: rows ascend
        within a latent)."""
        if self._sorted is None:
            cols, perm = sort_indices(self.cols)
            self._sorted = (perm, self.rows.index_select(0, perm), cols)
        return self._sorted


LATENT_BAGS_FROM = 64
"""Pairs per row of x from which `latent_grad` sums by `bag_sums` (a bag a latent) on the
host instead of the CSR product: 2,048 x 768, 262k pairs (k = 128), Intel Xeon, 2
threads: 4.6 ms against 7.2 (in the step 122 against 128 ms); at k = 32 the two tie."""


def latent_grad(
    n: int,
    rows: torch.Tensor,
    cols: torch.Tensor,
    grad: torch.Tensor,
    x: torch.Tensor,
    order: LatentOrder | None = None,
    *,
    drop_zeros: bool = True,
) -> torch.Tensor:
    """sum over pairs m of grad_m x[rows_m] into row cols_m of an (n, d) matrix; order:
    the same pairs' `LatentOrder`, whose sort is then shared with other products. A CSR
    product, or on the host from LATENT_BAGS_FROM pairs a row of x `bag_sums` (a bag a
    latent, in the same latent order).
    drop_zeros=False: no compaction pass for weights that are rarely 0."""
    if x.device.type == "cpu" and x.dtype not in (torch.float32, torch.float64):
        # torch's CPU CSR product has no bf16 / fp16 kernel: sum in fp32, return x's dtype
        out = latent_grad(n, rows, cols, grad.float(), x.float(), order, drop_zeros=drop_zeros)
        return out.to(x.dtype)
    if order is None:
        if drop_zeros:
            rows, cols, grad = nonzero_pairs(rows, cols, grad)
        cols_sorted, perm = sort_indices(cols)
        rows_sorted, grad_sorted = rows.index_select(0, perm), grad.index_select(0, perm)
    else:
        perm, rows_sorted, cols_sorted = order.sorted()
        grad_sorted = grad.index_select(0, perm)
        rows_sorted, cols_sorted, grad_sorted = nonzero_pairs(rows_sorted, cols_sorted, grad_sorted)
    crow = torch.searchsorted(cols_sorted, torch.arange(n + 1, device=cols.device))
    if x.device.type in HOST_DEVICES and rows_sorted.numel() >= LATENT_BAGS_FROM * x.shape[0]:
        return bag_sums(rows_sorted, x, crow[:-1], grad_sorted)
    with warnings.catch_warnings():  # torch calls every CSR construction beta
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_csr_tensor(
            crow, rows_sorted, grad_sorted.to(x.dtype), (n, x.shape[0]), check_invariants=False
        )
    if x.device.type != "cpu":
        return matrix @ x
    # On CPU `matrix @ x` zero-fills a result, accumulates into it and copies it out
    # (18 ms here at 6144 x 768, 65k pairs); addmm with beta = 0 writes the product
    # straight into uninitialised memory (6 ms), which beta = 0 never reads.
    out = torch.empty(n, x.shape[1], dtype=x.dtype, device=x.device)
    return torch.addmm(out, matrix, x, beta=0, out=out)


def _l2_bytes() -> int:
    """One core's L2 as the kernel reports it (/sys/devices/system/cpu/cpu0/cache), else
    512 KiB (the smallest of the CPUs measured here)."""
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for index in sorted(root.glob("index*")):
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip().upper()
                scale = {"K": 1024, "M": 1024**2}.get(size[-1:], 1)
                return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return 512 * 1024


L2_BYTES = _l2_bytes()
"""Bytes of table a column block of `bag_sums` may hold: its gathered rows then come
from one core's L2 rather than from L3 (three quarters of it; the rest holds the sums)."""

BAG_BLOCKS_FROM = 12
"""Reads per table row from which `bag_sums` copies the table into column blocks: the
copy (a read and a write of the table) is then a small share of the gathers it speeds.
The main decode in the step (6,144 x 768 atoms, 2,048 rows, Intel Xeon, 2 threads,
profiled in the step): k = 32 (10.7 reads a row) 4.7 ms whole against 5.3 in blocks,
k = 48 (16) 6.2 against 5.7, k = 64 7.9 against 6.4, k = 128 15.4 against 8.5."""


def bag_sums(
    indices: torch.Tensor, table: torch.Tensor, starts: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """(len(starts), d): bag b sums weights_i * table[indices_i] over its run of i from
    starts[b]. On the host, one embedding_bag per column block of the table small enough
    to stay in L2 (at least 32 columns). Exact: each output column is the same sum.
    Intel Xeon (2 MiB L2), 2,048 bags of 128 from 6,144 x 768, 2 threads: 5.2 ms with
    the copy against 11.7 (one thread 10.4 against 25.6); AMD EPYC (512 KiB L2), AuxK's
    786k pairs from 2,000 x 768, one thread: 34 ms against 50."""
    table, weights = table.contiguous(), weights.to(table.dtype)
    rows, width = table.shape
    block = max(32, L2_BYTES * 3 // 4 // (table.element_size() * max(rows, 1)) // 16 * 16)
    blocked = (
        table.device.type in HOST_DEVICES
        and block < width
        and indices.numel() >= BAG_BLOCKS_FROM * rows
    )
    if not blocked:
        return F.embedding_bag(indices, table, starts, per_sample_weights=weights, mode="sum")
    out = table.new_empty(starts.numel(), width)
    for start in range(0, width, block):
        part = table[:, start : start + block].contiguous()
        out[:, start : start + block] = F.embedding_bag(
            indices, part, starts, per_sample_weights=weights, mode="sum"
        )
    return out


class SparseDecode(torch.autograd.Function):
    """sum over pairs m of values_m atoms[cols_m] into row rows_m (pairs sorted by row).

    Forward: `bag_sums` (embedding_bag over L2-sized column blocks of the atoms).
    Backward: the values' gradient is embedding_bag's own per-sample-weights backward
    (a gather-dot, M x d; over column blocks it was slower); the atoms' gradient is a
    (n, rows) CSR matmul (`latent_grad`), where embedding_bag's backward runs a
    parallel stable sort that degrades badly on a shared CPU.
    """

    @staticmethod
    def forward(rows, cols, values, atoms, offsets, order=None):
        kept_rows, kept_cols, kept = nonzero_pairs(rows, cols, values)
        if kept is not values:
            offsets = row_offsets(kept_rows, offsets.numel())
        return bag_sums(kept_cols, atoms, offsets, kept)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        rows, cols, values, atoms, offsets, order = inputs
        ctx.save_for_backward(rows, cols, values, atoms, offsets)
        ctx.values_dtype, ctx.order = values.dtype, order

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        rows, cols, values, atoms, offsets = ctx.saved_tensors
        grad_values = grad_atoms = None
        grad = grad.to(atoms.dtype)
        if ctx.needs_input_grad[2]:
            grad_values = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad, atoms, cols, offsets, rows, 0
            ).to(ctx.values_dtype)
        if ctx.needs_input_grad[3]:
            weights = values.to(atoms.dtype)
            grad_atoms = latent_grad(atoms.shape[0], rows, cols, weights, grad, ctx.order)
        return None, None, grad_values, grad_atoms, None, None


def check_sparse_decode(value: object, name: str = "sparse_decode") -> bool | None:
    """Validate a sparse-path switch (sparse_decode, sparse_encoder_grad): None (by
    code density), True or False."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(
            f"{name} must be None (decide by code density), True or False, got {value!r}"
        )
    return value
