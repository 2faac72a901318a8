"""AuxK where its picks are dense among the dead latents' columns (on the host).

With many latents dead, each row's top k_aux dead pre-codes are a large share of the
(rows, m) pre-codes of the m dead latents (384 of 2,000: 19%), and AuxK's exact
gradient needs four products of that pick matrix V (rows, m) with d columns: the
decode V @ A (A: the dead atoms), the picks' gradient <g_row, A_latent>, the dead
atoms' gradient V^T g and the dead encoder rows' gradient G^T (x - centre). Measured
kernels (2,048 rows, 2,000 dead, d = 768, one thread, AMD EPYC; bench/bench_auxk_kernels.py,
docs/benchmarks.md): dense products 70-86 ms each; CSR products 88-95; embedding_bag's
gather-dot for the picks' gradient 125; embedding_bag's forward (a sum of weighted table
rows a bag) 42-50, and 34-36 over column blocks of the table that stay in L2
(`sparse.bag_sums`). So:

- picks denser than DENSE_PICKS_FROM: all four as dense (rows, m) products;
- below: the decode and both weight gradients as `bag_sums` (by row for the decode,
  by latent, of rows of g and of x - centre, for the gradients) and the picks'
  gradient as one dense (m, d) @ (d, rows) product read at the picks;
- below `losses.MAX_SPARSE_AUX_DENSITY`: the sparse encoder and decoder's pairs
  (`losses.aux_k_loss`).
"""

from __future__ import annotations

from typing import Any

import torch

from sae_hooks.sae import sparse

__all__ = ["DENSE_PICKS_FROM", "DeadColumnDecode", "DeadPicks", "dead_picks"]

DENSE_PICKS_FROM = 0.3
"""Share of picks among the dead latents' pre-codes from which dense (rows, m) products
beat `bag_sums`: between 1,000 dead latents (38% picked: 211 ms against 241 for AuxK's
forward and backward) and 1,500 (26%: 322 against 291), 2,048 rows, one thread."""


class DeadPicks:
    """AuxK's picks on the host: each row's top min(k, m) dead latents whose pre-code
    is > 0, as a mask `keep` (rows, m) over the candidates, the m dead latents' pre-codes
    (`cols` ascending). by_row: the picks' flat indices into (rows, m), ascending, and
    from them rows and local (0..m-1) latents; `by_latent` gives the transposed order."""

    def __init__(self, cols: torch.Tensor, candidates: torch.Tensor, keep: torch.Tensor) -> None:
        self.cols, self.candidates, self.keep = cols, candidates, keep
        self.row_sparse_grads = False  # `losses.aux_k_loss`'s switch
        self.n_rows, self.m = keep.shape
        self.by_row, self.rows, self._row_starts = _runs(keep)
        self.local = self.by_row - self.rows * self.m
        self._by_latent: tuple[torch.Tensor, ...] | None = None
        self._atoms: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def count(self) -> int:
        return self.by_row.numel()

    @property
    def dense(self) -> bool:
        return self.count >= DENSE_PICKS_FROM * self.keep.numel()

    def pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, latents) of the picks, sorted by row."""
        return self.rows, self.cols.index_select(0, self.local)

    def values(self) -> torch.Tensor:
        """The picks' pre-codes (all > 0), by row."""
        return self.candidates.reshape(-1).index_select(0, self.by_row)

    def matrix(self) -> torch.Tensor:
        """V (rows, m): the picks' pre-codes, 0 elsewhere."""
        return self.candidates * self.keep

    def atoms(self, dictionary: torch.Tensor) -> torch.Tensor:
        """The dead latents' atoms (m, d), gathered once for the forward and backward."""
        if self._atoms is None or self._atoms[0] is not dictionary:
            self._atoms = (dictionary, dictionary.detach().index_select(0, self.cols))
        return self._atoms[1]

    def row_starts(self) -> torch.Tensor:
        return self._row_starts

    def by_latent(self) -> tuple[torch.Tensor, ...]:
        """(flat indices into (m, rows), rows, local latents, start of each latent's run,
        pre-codes) of the picks in latent order, rows ascending within a latent."""
        if self._by_latent is None:
            flat, local, starts = _runs(self.keep.t().contiguous())
            rows = flat - local * self.n_rows
            values = self.candidates.reshape(-1).index_select(0, rows * self.m + local)
            self._by_latent = (flat, rows, local, starts, values)
        return self._by_latent

    def latent_sums(self, table: torch.Tensor, grad_t: torch.Tensor | None) -> torch.Tensor:
        """(m, d): for each dead latent, the sum over its picks (row r) of w_r table[r],
        w the pick's pre-code (grad_t None) or grad_t (m, rows) read at the pick."""
        if self.dense:
            return (self.matrix().t() if grad_t is None else grad_t) @ table
        flat, rows, _, starts, values = self.by_latent()
        weights = values if grad_t is None else grad_t.reshape(-1).index_select(0, flat)
        return sparse.bag_sums(rows, table, starts, weights)

    def row_sums(self, table: torch.Tensor, grad_t: torch.Tensor | None) -> torch.Tensor:
        """(rows, d): for each row, the sum over its picks (latent j) of w_j table[j],
        w the pick's pre-code (grad_t None) or grad_t (m, rows) read at the pick."""
        if self.dense:
            return (self.matrix() if grad_t is None else grad_t.t()) @ table
        if grad_t is None:
            weights = self.values()
        else:
            weights = grad_t.reshape(-1).index_select(0, self.local * self.n_rows + self.rows)
        return sparse.bag_sums(self.local, table, self.row_starts(), weights)


def _runs(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(flat indices of the True entries, ascending; the row of each; the start of each
    row's run) of a host bool matrix, by numpy's flatnonzero and count_nonzero (3.5 and
    1.5 ms for 2,048 x 2,000, one thread; torch's nonzero took 12-15, its bool sum 4)."""
    bools = mask.numpy()
    counts = torch.from_numpy(sparse.row_counts(bools))
    rows = torch.repeat_interleave(torch.arange(mask.shape[0]), counts)
    starts = torch.zeros(mask.shape[0], dtype=torch.long)
    torch.cumsum(counts[:-1], 0, out=starts[1:])
    return torch.from_numpy(sparse.flat_true(bools)), rows, starts


@torch.no_grad()
def dead_picks(pre: torch.Tensor, dead: torch.Tensor, k: int) -> DeadPicks | None:
    """AuxK's picks among the dead latents' columns (`DeadPicks`) on the host; None off
    it, or for pre-codes that are not (rows, n): there `losses.dead_top_k` selects.

    Only the dead latents' columns are read, and each row's top-k runs only where some
    row has more than k positive candidates: latents long dead rarely have any."""
    if pre.device.type not in sparse.HOST_DEVICES or pre.dim() != 2:
        return None
    cols = dead.nonzero().squeeze(1)
    candidates = pre.index_select(1, cols)
    keep = candidates > 0
    if k < cols.numel() and int(sparse.row_counts(keep.numpy()).max()) > k:
        top = sparse.row_top_k(candidates, k)
        keep &= torch.zeros_like(keep).scatter_(1, top, True)
    return DeadPicks(cols, candidates, keep)


class DeadColumnDecode(torch.autograd.Function):
    """e_hat = sum over each row's picks of pre * atom (`DeadPicks`). With (x, centre,
    W, b) given (the forward's `EncoderInputs`, pre = (x - centre) W^T + b) the picks'
    gradient goes to them (to the dead rows of W and b alone), else to pre itself.
    The picks' pre-codes are > 0, so the ReLU passes their gradient whole."""

    @staticmethod
    def forward(x, centre, weight, bias, pre, dictionary, picks: DeadPicks) -> torch.Tensor:
        return picks.row_sums(picks.atoms(dictionary), None)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        x, centre, weight, _, pre, dictionary, picks = inputs
        ctx.save_for_backward(x, centre, weight, dictionary)
        ctx.picks, ctx.pre_shape = picks, pre.shape
        sparse_rows = picks.row_sparse_grads
        ctx.sparse_rows = [
            sparse_rows and t is not None and t.is_leaf for t in (weight, dictionary)
        ]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        x, centre, weight, dictionary = ctx.saved_tensors
        picks: DeadPicks = ctx.picks
        needs = ctx.needs_input_grad
        grad = grad.contiguous()
        grads: list[torch.Tensor | None] = [None] * 7
        if needs[5]:
            rows_grad = picks.latent_sums(grad, None)
            grads[5] = _on_rows(rows_grad, picks.cols, dictionary.shape[0], ctx.sparse_rows[1])
        if not any(needs[:5]):
            return tuple(grads)
        # d loss / d pre (m, rows), read at the picks alone (zero elsewhere when dense)
        grad_t = picks.atoms(dictionary) @ grad.t()
        if picks.dense:
            grad_t.mul_(picks.keep.t())
        if needs[4]:
            grad_pre = grad.new_zeros(ctx.pre_shape)
            rows, latents = picks.pairs()
            at = grad_t.reshape(-1).index_select(0, picks.local * picks.n_rows + rows)
            grad_pre.view(-1).index_put_((rows * ctx.pre_shape[1] + latents,), at)
            grads[4] = grad_pre
        grads[:4] = _encoder_grads(x, centre, weight, picks, grad_t, needs, ctx.sparse_rows[0])
        return tuple(grads)


def _on_rows(rows_grad: torch.Tensor, cols: torch.Tensor, n: int, sparse_rows: bool = False):
    """An (n, ...) gradient that is rows_grad on rows cols (ascending) and 0 elsewhere;
    sparse_rows: as a sparse tensor of those rows."""
    shape = (n, *rows_grad.shape[1:])
    if sparse_rows:
        index = cols.unsqueeze(0)
        return torch.sparse_coo_tensor(
            index, rows_grad, shape, is_coalesced=True, check_invariants=False
        )
    return rows_grad.new_zeros(shape).index_copy_(0, cols, rows_grad)


def _encoder_grads(
    x, centre, weight, picks: DeadPicks, grad_t: torch.Tensor, needs, sparse_rows: bool
) -> list:
    """Gradients of (x, centre, W, b) from d loss / d pre at the picks, grad_t (m, rows);
    W and b get rows on the dead latents alone."""
    grad_x = grad_centre = grad_w = grad_b = None
    if needs[0]:
        grad_x = picks.row_sums(weight.index_select(0, picks.cols), grad_t)
    if needs[2]:
        centred = x if centre is None else x - centre
        rows_grad = picks.latent_sums(centred, grad_t)
        grad_w = _on_rows(rows_grad, picks.cols, weight.shape[0], sparse_rows)
    if needs[1] or needs[3]:
        if picks.dense:
            per_latent = grad_t.sum(1)
        else:
            flat, _, local, _, _ = picks.by_latent()
            g = grad_t.reshape(-1).index_select(0, flat)
            per_latent = g.new_zeros(picks.m).index_add_(0, local, g)
        if needs[3]:
            grad_b = _on_rows(per_latent, picks.cols, weight.shape[0])
        if needs[1]:
            grad_centre = -(per_latent @ weight.index_select(0, picks.cols))
    return [grad_x, grad_centre, grad_w, grad_b]
