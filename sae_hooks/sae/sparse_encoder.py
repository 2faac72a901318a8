"""The encoder's backward pass over the kept codes only.

A top-k style selection passes gradient to k of a row's n pre-codes, so the
encoder's weight gradient has k non-zero terms per row: sum over the kept
(row r, latent j) pairs of g_rj x_r, added into row j of dW. Autograd through a
dense `F.linear` computes it as a (n, rows) @ (rows, d) matmul of a mostly-zero
gradient, as costly as the forward; here it is a sparse (n, rows) CSR matrix of
the M kept gradients times x, M x d multiply-adds.

`SparsePreCodes` gives the kept pre-codes (M,) as a differentiable function of
(x, W, b) whose backward is:
- dW = CSR(g at (j, r)) @ x, the kept pairs sorted by latent;
- db = index_add of g over the latents;
- d centre = -db @ W, (n,) @ (n, d): the input is centred on b_dec before the
  matmul, and the sum over rows of a (rows, d) input gradient is that product;
- dx = embedding_bag(latents, W, row offsets, per_sample_weights=g), pairs
  sorted by row (only when x needs a gradient; training rows do not).
The values themselves are read from the dense pre-codes of the forward matmul.
Gradients equal the dense path's up to float summation order
(tests/test_sae_sparse.py). No host sync: offsets come from `searchsorted`.

`z_pre` keeps its ordinary dense autograd history for callers who differentiate
it; `gather_pre_codes(z_pre, rows, cols, inputs)` reads kept pre-codes through the
sparse backward given the `EncoderInputs` that z_pre was computed from, and through
plain indexing otherwise. The forward hands those inputs on in its output
(`SAEOutput.support.encoder_inputs`, which AuxK reads), so the sparse context lives
and dies with the forward's own output (nothing is cached on the module).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import sparse
from .output import EncoderInputs, SAEOutput, Support, kept_support
from .sparse import LatentOrder, latent_grad, pairs_of, row_offsets


class SparsePreCodes(torch.autograd.Function):
    """pre[rows, cols] of pre = (x - centre) W^T + b, with a backward over the M pairs only."""

    @staticmethod
    def forward(
        x: torch.Tensor,
        centre: torch.Tensor | None,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        pre: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        order: LatentOrder | None = None,
    ) -> torch.Tensor:
        return pairs_of(pre.detach(), rows, cols)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        x, centre, weight, bias, _, rows, cols, order = inputs
        ctx.save_for_backward(x, centre, weight, rows, cols)
        ctx.bias_dtype, ctx.order = (None if bias is None else bias.dtype), order

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        x, centre, weight, rows, cols = ctx.saved_tensors
        grad_x = grad_centre = grad_w = grad_b = None
        needs_x, needs_centre, needs_w, needs_b = ctx.needs_input_grad[:4]
        g = grad.float() if grad.dtype in (torch.float16, torch.bfloat16) else grad
        if needs_x:
            offsets = row_offsets(rows, x.shape[0])
            grad_x = F.embedding_bag(
                cols, weight, offsets, per_sample_weights=g.to(weight.dtype), mode="sum"
            ).to(x.dtype)
        if needs_w:
            centred = x if centre is None else x - centre
            centred = centred.to(weight.dtype)
            grad_w = latent_grad(weight.shape[0], rows, cols, g, centred, ctx.order)
        if needs_b or needs_centre:
            per_latent = torch.zeros(weight.shape[0], dtype=g.dtype, device=g.device)
            per_latent.index_add_(0, cols, g)
            if needs_b:
                grad_b = per_latent.to(ctx.bias_dtype)
            if needs_centre:  # -sum over pairs of g W[col]: (n,) @ (n, d), no (rows, d) term
                grad_centre = -(per_latent.to(weight.dtype) @ weight).to(centre.dtype)
        return grad_x, grad_centre, grad_w, grad_b, None, None, None, None


class PreCodeBuffer:
    """One (rows, n) matrix that an SAE's training forwards write their pre-codes into,
    step after step, on CPU: a fresh 50 MB matrix (2048 x 6144 fp32) is new pages from
    the kernel every step, and their first touch took as long as a quarter of the
    encoder's matmul itself (single thread, 2026-12-07). The matrix is handed out again
    only when nothing else holds its memory (the previous step's pre-codes and every
    view of them are gone); otherwise a new one is allocated and kept."""

    def __init__(self) -> None:
        self._matrix: torch.Tensor | None = None

    def take(self, shape: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        held = self._matrix
        if (
            held is None
            or held.shape != shape
            or held.dtype != like.dtype
            or held.device != like.device
            or not _unshared(held)
        ):
            held = self._matrix = torch.empty(shape, dtype=like.dtype, device=like.device)
        return held


def _unshared(matrix: torch.Tensor) -> bool:
    """True when only `matrix` itself refers to its memory (no view, no alias alive).
    The storage's use count: `matrix` and the temporary storage object make 2."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:  # another torch: never reuse
        return False
    return use_count(matrix.untyped_storage()._cdata) <= 2


class PreCodes(torch.autograd.Function):
    """pre = (x - centre) W^T + b written into a `PreCodeBuffer`'s matrix, the bias added
    in place after the product; the output is an alias of that matrix.

    Its backward is the dense one (for a caller who differentiates all of z_pre, such as
    JumpReLU's and ReLU's dense fallbacks), with centre's gradient as -(sum over rows of
    g) @ W, an (n,) @ (n, d) product, where autograd through `x - centre` ran a full
    (rows, n) @ (n, d) matmul for it; x's own gradient only when x needs one."""

    @staticmethod
    def forward(x, centre, weight, bias, buffer: PreCodeBuffer):
        centred = x if centre is None else x - centre
        out = buffer.take((x.shape[0], weight.shape[0]), centred)
        torch.mm(centred, weight.t(), out=out)
        if bias is not None:
            # after the product, in place: addmm first copies the broadcast bias into
            # out and has the GEMM read it back (2,048 x 6,144, Intel Xeon, 2 threads:
            # 57 ms against 52-55)
            out.add_(bias)
        return out.detach()  # an alias: the buffer's own tensor carries no graph

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        x, centre, weight, _, _ = inputs
        ctx.save_for_backward(x, centre, weight)
        # The sparse paths read pre through SparsePreCodes, which passes it no gradient:
        # that None must not become a (rows, n) matrix of zeros and three dense matmuls.
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor | None):
        grad_x = grad_centre = grad_w = grad_b = None
        if grad is None:
            return grad_x, grad_centre, grad_w, grad_b, None
        x, centre, weight = ctx.saved_tensors
        needs_x, needs_centre, needs_w, needs_b, _ = ctx.needs_input_grad
        if needs_x:
            grad_x = grad @ weight
        if needs_w:
            grad_w = grad.t() @ (x if centre is None else x - centre)
        if needs_b or needs_centre:
            per_latent = grad.sum(0)
            grad_b = per_latent if needs_b else None
            grad_centre = -(per_latent @ weight) if needs_centre else None
        return grad_x, grad_centre, grad_w, grad_b, None


def encoder_pre_codes(
    x: torch.Tensor,
    centre: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    buffer: PreCodeBuffer | None,
) -> torch.Tensor:
    """pre = (x - centre) W^T + b, the linear encoder's pre-codes for the sparse paths:
    into `buffer` on CPU outside autocast (`PreCodes`); elsewhere F.linear (a device's
    caching allocator already reuses memory, and autocast picks the matmul's dtype)."""
    if buffer is None or x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        return F.linear(x if centre is None else x - centre, weight, bias)
    return PreCodes.apply(x, centre, weight, bias, buffer)


def gather_pre_codes(
    pre: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    inputs: EncoderInputs | None = None,
    order: LatentOrder | None = None,
) -> torch.Tensor:
    """pre[rows, cols]; through the sparse backward when `inputs` (what pre was computed
    from, `EncoderInputs`) are given and a gradient is wanted. order: the pairs'
    `LatentOrder`, shared with the decoder's backward over the same pairs."""
    if inputs is None or not torch.is_grad_enabled():
        return pairs_of(pre, rows, cols)
    return SparsePreCodes.apply(*inputs, pre, rows, cols, order)


def support_codes(
    pre: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    *,
    sparse: bool = False,
) -> tuple[torch.Tensor, Support]:
    """(z, its `Support`): the codes z (pre's shape) holding `values` at the kept
    (rows, cols) pairs and 0 elsewhere, and those pairs, for the forward's output.

    Dense by default. sparse: a sparse COO tensor of the same codes instead, for a
    forward whose caller reads only the support (the trainer's, inside
    `SAE.sparse_codes`): the dense (N, n) codes cost a zero fill and a scatter over
    rows x n, and a (rows x n) matrix of memory until the step ends.
    """
    if sparse:
        z = torch.sparse_coo_tensor(
            torch.stack([rows, cols]), values, pre.shape, check_invariants=False
        )
    else:
        n = pre.shape[-1]
        z = torch.zeros_like(pre).flatten().scatter(0, rows * n + cols, values).view_as(pre)
    return z, Support(rows, cols, values)


@torch.no_grad()
def pairs_at_least(
    pre: torch.Tensor, floor: torch.Tensor, limit: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(rows, cols), row-major, of the pairs with pre[r, j] >= floor[j]; None when more
    than `limit` of them (a support too dense to list, counted before it is listed).

    On the host: one compare, its count, and a flat `nonzero` (a third cheaper than the
    2-d `nonzero(as_tuple=True)`, which builds an (M, 2) matrix and splits it; rows and
    columns then come from one division), by numpy for fp32 / fp64 (2048 x 6144, 319k
    pairs: 12 ms against torch's 28, one thread), over chunks of rows in threads
    (`sparse.by_row_chunks`); bf16 pre-codes (autocast) by numpy too, from their bits. A scan in cache-sized blocks of rows that
    stopped at the limit was tried: no less CPU time (single thread, 2048 x 6144), and
    its ~70 small parallel regions stalled on a 2-core machine at load 28. Elsewhere
    one `nonzero` (its count is the host sync); the caller compares it with its limit.
    """
    n = pre.shape[-1]
    bf16 = pre.dtype == torch.bfloat16  # autocast's pre-codes: numpy reads their bits
    if pre.device.type in sparse.HOST_DEVICES and (bf16 or pre.dtype in NUMPY_FLOATS):
        values = pre.detach().view(torch.int16).numpy() if bf16 else pre.detach().numpy()
        bound = floor.detach()
        bound = (bound.float() if bf16 or bound.dtype not in NUMPY_FLOATS else bound).numpy()
        mask = np.empty(values.shape, dtype=bool)

        def compared(chunk: np.ndarray, first_row: int) -> np.ndarray:
            out = mask[first_row : first_row + len(chunk)]
            if bf16:
                chunk = _bf16_bits_as_float32(chunk)
            return np.array([np.count_nonzero(np.greater_equal(chunk, bound, out=out))])

        if int(sparse.by_row_chunks(compared, values).sum()) > limit:
            return None

        rows, cols = np.divmod(sparse.flat_true(mask), n)
        return torch.from_numpy(rows), torch.from_numpy(cols)
    mask = pre >= floor
    if pre.device.type not in sparse.HOST_DEVICES:
        return mask.nonzero(as_tuple=True)
    if int(mask.count_nonzero()) > limit:
        return None
    flat = mask.view(-1).nonzero().squeeze(1)
    return flat.div(n, rounding_mode="floor"), flat.remainder(n)


NUMPY_FLOATS = (torch.float32, torch.float64)


def _bf16_bits_as_float32(bits: np.ndarray) -> np.ndarray:
    """float32 values of bf16 numbers given as their int16 bits: the bits are a float32's
    upper half (exact, as torch's upcast; torch's own mixed bf16 / fp32 compare of
    2,048 x 6,144 pre-codes took 7 ms and its nonzero 15, Intel Xeon, 2 threads)."""
    return np.left_shift(bits.astype(np.int32), 16).view(np.float32)


def fire_counts(out: SAEOutput) -> torch.Tensor:
    """Per-latent count of non-zero codes (n,) int64 of a forward's output, from its
    kept support when the forward recorded one (M index_adds, no (rows, n) pass), else
    from the codes out.z themselves."""
    z, support = out.z, kept_support(out)
    if support is None:
        return (z.detach().reshape(-1, z.shape[-1]) != 0).sum(0)
    counts = torch.zeros(z.shape[-1], dtype=torch.int64, device=z.device)
    return counts.index_add_(0, support.cols, (support.values.detach() != 0).to(torch.int64))


def fixed_support(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) flat, row-major, of k indices per row (N, k)."""
    n_rows, k = indices.shape
    rows = torch.arange(n_rows, device=indices.device).repeat_interleave(k)
    return rows, indices.reshape(-1)


BATCH_TOP_K_CANDIDATES = 2
"""Per-row candidates of `batch_top_k`, as a multiple of the budget's mean per row."""


def batch_top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, flat indices) of the k largest entries of scores (rows, n), exactly k,
    grouped by row (rows ascending, a row's columns in any order): the layout the
    sparse decoder reads.

    On CPU a single top-k of k = 65,536 over 12.6M codes costs more than the encoder's
    matmul (and copies the matrix three times over). Where runs of BATCH_BLOCK_WIDTH
    columns tile the rows, the runs' maxima narrow it (`_batch_top_k_in_blocks`).
    Otherwise each row first keeps its top
    m = 2 k / rows candidates and the budget's k-th largest candidate t is found. A row
    whose smallest candidate is below t holds no other code above t; a row whose every
    candidate reached t ("full") may hold more, so all of its codes >= t join the pool
    in place of its candidates. Every code >= t is then in the pool, and so is the
    whole budget (t never exceeds the true k-th largest). Without full rows and ties at
    t, the budget is the candidates >= t, listed in the pool's row order (t by numpy's
    introselect: 2,048 rows, k = 128 a row, 2 ms against 16 for a top-k and a sort of
    the 262k picks); otherwise one more top-k over the pool, sorted. Reading which rows
    are full is free on CPU and a device sync elsewhere, so other devices take the
    flat top-k directly.
    """
    n_rows, n = scores.shape
    m = math.ceil(BATCH_TOP_K_CANDIDATES * k / max(n_rows, 1))
    if scores.device.type not in sparse.HOST_DEVICES or 2 * m > n:
        return _by_row(*scores.flatten().topk(k, sorted=False))
    found = _batch_top_k_in_blocks(scores, k)
    if found is not None:
        return found
    cand_cols = sparse.row_top_k(scores, m)  # block-pruned on the host
    cand_values = scores.gather(1, cand_cols)
    row_starts = torch.arange(n_rows, device=scores.device).mul_(n).unsqueeze(-1)
    pool_values, pool_flat = cand_values.flatten(), (row_starts + cand_cols).flatten()
    threshold = _kth_largest(pool_values, k)
    full = cand_values.amin(-1) >= threshold
    if not bool(full.any()):
        keep = pool_values >= threshold
        if int(keep.sum()) == k:  # no tie at t: the budget is what reaches it
            at = keep.nonzero().squeeze(1)
            return pool_values.index_select(0, at), pool_flat.index_select(0, at)
        values, pos = pool_values.topk(k, sorted=False)
        return _by_row(values, pool_flat.index_select(0, pos))
    full_rows = full.nonzero().squeeze(1)
    rest = (~full).repeat_interleave(m).nonzero().squeeze(1)
    rows, cols = (scores.index_select(0, full_rows) >= threshold).nonzero(as_tuple=True)
    rows = full_rows.index_select(0, rows)
    pool_values = torch.cat([pool_values.index_select(0, rest), pairs_of(scores, rows, cols)])
    pool_flat = torch.cat([pool_flat.index_select(0, rest), rows * n + cols])
    values, pos = pool_values.topk(k, sorted=False)
    return _by_row(values, pool_flat.index_select(0, pos))


BATCH_BLOCK_WIDTH = 32
"""Columns of the runs whose maxima `batch_top_k` ranks first on the host."""


def _batch_top_k_in_blocks(
    scores: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`batch_top_k` on the host through runs of BATCH_BLOCK_WIDTH columns: the k-th
    largest run maximum f is at most the k-th largest score (k runs reach f, each with a
    score >= f), so every score of the budget lies in a run whose maximum reaches f.
    Those runs' scores >= f are the pool (about 1.1 k for Gaussian codes), whose k-th
    largest is the budget's threshold. The pool is listed in flat order, so the budget
    comes out grouped by row. 2,048 x 6,144, k = 65,536, Intel Xeon, 2 threads: ~5 ms
    against ~12 for the per-row candidates; k = 64 a row 9 against 14, 128 a row (two
    thirds of the runs) 25 against 28, 192 a row 110 against 27. bf16 / fp16 scores
    (autocast) are ranked as float32, upcast RUNS_UPCAST_ROWS rows at a time (exact).
    None where the runs do not tile the rows or the budget is over half the runs: the
    caller's way then."""
    n_rows, n = scores.shape
    width = BATCH_BLOCK_WIDTH
    if n % width or not scores.is_floating_point() or not 0 < k * width <= n_rows * n // 2:
        return None  # from half the runs on, the pool is most of the codes
    runs = scores.contiguous().view(-1, width)
    if scores.dtype in NUMPY_FLOATS:
        maxima = runs.amax(-1)
    else:  # torch's max over runs of bf16 is slow (8 ms at 2,048 x 6,144 against 1.5)
        step = RUNS_UPCAST_ROWS * (n // width)
        maxima = torch.cat([part.float().amax(-1) for part in runs.split(step)])
    if bool(maxima.isnan().any()):
        return None  # a NaN run ranks nowhere here; the caller's top-k ranks it first
    floor = _kth_largest(maxima, k)
    reached = torch.from_numpy(np.flatnonzero(maxima.numpy() >= floor.item()))
    pool = runs.index_select(0, reached).view(-1)
    if pool.dtype not in NUMPY_FLOATS:
        pool = pool.float()
    at = torch.from_numpy(np.flatnonzero(pool.numpy() >= floor.item()))
    values = pool.index_select(0, at)
    flat = reached.index_select(0, at.div(width, rounding_mode="floor")) * width + at % width
    threshold = _kth_largest(values, k)
    keep = torch.from_numpy(np.flatnonzero(values.numpy() >= threshold.item()))
    if keep.numel() == k:  # no tie at the threshold: the budget is what reaches it
        return values.index_select(0, keep).to(scores.dtype), flat.index_select(0, keep)
    top, pos = values.topk(k, sorted=False)
    return _by_row(top.to(scores.dtype), flat.index_select(0, pos))


RUNS_UPCAST_ROWS = 128
"""Rows of bf16 / fp16 scores `_batch_top_k_in_blocks` upcasts at a time (128 x 6,144
fp32: 3 MiB, which the max over its runs reads back from cache)."""


def _kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest of a 1-d host tensor, by numpy's introselect where it can."""
    if values.dtype not in (torch.float32, torch.float64):
        return values.topk(k, sorted=False).values.min()
    at = values.numel() - k
    return torch.as_tensor(np.partition(values.numpy(), at)[at])


def _by_row(values: torch.Tensor, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, flat) in ascending flat order."""
    flat, order = sparse.sort_indices(flat)
    return values.index_select(0, order), flat
