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

- picks denser than DENSE_PICKS_FROM: all four as dense (rows, m) products, the picks'
  gradient masked to them; no listing of the picks is made;
- below: the decode and both weight gradients as `bag_sums` (by row for the decode,
  by latent, of rows of g and of x - centre, for the gradients) and the picks'
  gradient as one dense (m, d) @ (d, rows) product read at the picks;
- below `losses.MAX_SPARSE_AUX_DENSITY`: the sparse encoder and decoder's pairs
  (`losses.aux_k_loss`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sae_hooks.sae import sparse

__all__ = ["DENSE_PICKS_FROM", "DeadColumnDecode", "DeadPicks", "dead_picks"]

DENSE_PICKS_FROM = 0.3
"""Share of picks among the dead latents' pre-codes from which dense (rows, m) products
beat `bag_sums`: between 1,000 dead latents (38% picked: 211 ms against 241 for AuxK's
forward and backward) and 1,500 (26%: 322 against 291), 2,048 rows, one thread, AMD
EPYC. On an Intel Xeon (2 threads), whose dense products are relatively faster, the
two tie at 2,000 dead (19%: a whole step 1.95-1.98x one without AuxK by either) and
the bag sums win at 3,000 (13%)."""


class DeadPicks:
    """AuxK's picks on the host: each row's top min(k, m) dead latents whose pre-code
    is > 0, as a mask `keep` (rows, m) over the candidates, the m dead latents' pre-codes
    (`cols` ascending). The listings the bag sums read are made when first asked for:
    by row (`by_row`: flat indices into (rows, m), ascending; `rows`, `local` latents
    0..m-1, `row_starts`) and by latent (`by_latent`); the dense products read none."""

    def __init__(
        self,
        cols: torch.Tensor,
        candidates: torch.Tensor,
        keep: torch.Tensor,
        counts: torch.Tensor | None = None,
    ) -> None:
        self.cols, self.candidates, self.keep = cols, candidates, keep
        self.row_sparse_grads = False  # `losses.aux_k_loss`'s switch
        self.n_rows, self.m = keep.shape
        self._counts = (
            torch.from_numpy(sparse.row_counts(keep.numpy())) if counts is None else counts
        )
        self.count = int(self._counts.sum())
        self._by_row: tuple[torch.Tensor, ...] | None = None
        self._by_latent: tuple[torch.Tensor, ...] | None = None
        self._matrix: torch.Tensor | None = None
        self._grads: tuple[torch.Tensor, torch.Tensor] | None = None
        self._atoms: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def dense(self) -> bool:
        return self.count >= DENSE_PICKS_FROM * self.keep.numel()

    def _listing_by_row(self) -> tuple[torch.Tensor, ...]:
        if self._by_row is None:
            by_row = torch.from_numpy(sparse.flat_true(self.keep.numpy()))
            rows = torch.repeat_interleave(torch.arange(self.n_rows), self._counts)
            self._by_row = (by_row, rows, by_row - rows * self.m, _starts(self._counts))
        return self._by_row

    @property
    def by_row(self) -> torch.Tensor:
        return self._listing_by_row()[0]

    @property
    def rows(self) -> torch.Tensor:
        return self._listing_by_row()[1]

    @property
    def local(self) -> torch.Tensor:
        return self._listing_by_row()[2]

    def row_starts(self) -> torch.Tensor:
        return self._listing_by_row()[3]

    def pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, latents) of the picks, sorted by row."""
        return self.rows, self.cols.index_select(0, self.local)

    def values(self) -> torch.Tensor:
        """The picks' pre-codes (all > 0), by row."""
        return self.candidates.reshape(-1).index_select(0, self.by_row)

    def matrix(self) -> torch.Tensor:
        """V (rows, m): the picks' pre-codes, 0 elsewhere."""
        if self._matrix is None:
            self._matrix = self.candidates * self.keep
        return self._matrix

    def atoms(self, dictionary: torch.Tensor) -> torch.Tensor:
        """The dead latents' atoms (m, d), gathered once for the forward and backward."""
        if self._atoms is None or self._atoms[0] is not dictionary:
            self._atoms = (dictionary, dictionary.detach().index_select(0, self.cols))
        return self._atoms[1]

    def by_latent(self) -> tuple[torch.Tensor, ...]:
        """(flat indices into (m, rows), rows, local latents, start of each latent's run,
        pre-codes) of the picks in latent order, rows ascending within a latent."""
        if self._by_latent is None:
            keep_t = self.keep.t().contiguous().numpy()
            flat = torch.from_numpy(sparse.flat_true(keep_t))
            counts = torch.from_numpy(sparse.row_counts(keep_t))
            local = torch.repeat_interleave(torch.arange(self.m), counts)
            rows = flat - local * self.n_rows
            values = self.candidates.reshape(-1).index_select(0, rows * self.m + local)
            self._by_latent = (flat, rows, local, _starts(counts), values)
        return self._by_latent

    def pick_grads(self, atoms: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """d loss / d pre (rows, m) from d loss / d e_hat (rows, d), exact at the picks.
        Dense: 0 elsewhere (the (rows, m) product, masked). Else the transpose of the
        (m, rows) product, whose flat order `by_latent` indexes, read at the picks alone."""
        if self.dense:
            return (grad @ atoms.t()).mul_(self.keep)
        return (atoms @ grad.t()).t()

    def _in_latent_order(self, pick_grads: torch.Tensor) -> torch.Tensor:
        """`pick_grads` at the picks in latent order, gathered once for both weight grads."""
        if self._grads is None or self._grads[0] is not pick_grads:
            flat = self.by_latent()[0]
            self._grads = (pick_grads, pick_grads.t().reshape(-1).index_select(0, flat))
        return self._grads[1]

    def latent_sums(self, table: torch.Tensor, pick_grads: torch.Tensor | None) -> torch.Tensor:
        """(m, d): for each dead latent, the sum over its picks (row r) of w table[r], w
        the pick's pre-code (pick_grads None) or its gradient (`pick_grads`)."""
        if self.dense:
            return (self.matrix() if pick_grads is None else pick_grads).t() @ table
        _, rows, _, starts, values = self.by_latent()
        if pick_grads is not None:
            values = self._in_latent_order(pick_grads)
        return sparse.bag_sums(rows, table, starts, values)

    def per_latent(self, pick_grads: torch.Tensor) -> torch.Tensor:
        """(m,): each dead latent's sum of `pick_grads` over its picks."""
        if self.dense:
            return pick_grads.sum(0)
        local = self.by_latent()[2]
        weights = self._in_latent_order(pick_grads)
        return weights.new_zeros(self.m).index_add_(0, local, weights)

    def row_sums(self, table: torch.Tensor, pick_grads: torch.Tensor | None) -> torch.Tensor:
        """(rows, d): for each row, the sum over its picks (latent j) of w table[j], w
        the pick's pre-code (pick_grads None) or its gradient (`pick_grads`)."""
        if self.dense:
            return (self.matrix() if pick_grads is None else pick_grads) @ table
        if pick_grads is None:
            weights = self.values()
        else:
            flat_t = self.local * self.n_rows + self.rows
            weights = pick_grads.t().reshape(-1).index_select(0, flat_t)
        return sparse.bag_sums(self.local, table, self.row_starts(), weights)

    def on_pre(self, pick_grads: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """The gradient of the (rows, n) pre-codes: `pick_grads` at the picks, 0 elsewhere."""
        out = pick_grads.new_zeros(shape)
        if self.dense:
            return out.index_copy_(1, self.cols, pick_grads)
        rows, latents = self.pairs()
        at = pick_grads.t().reshape(-1).index_select(0, self.local * self.n_rows + rows)
        return out.view(-1).index_put_((rows * shape[1] + latents,), at).view(shape)


def _starts(counts: torch.Tensor) -> torch.Tensor:
    starts = torch.zeros(len(counts), dtype=torch.long)
    torch.cumsum(counts[:-1], 0, out=starts[1:])
    return starts


@torch.no_grad()
def dead_picks(pre: torch.Tensor, dead: torch.Tensor, k: int) -> DeadPicks | None:
    """AuxK's picks among the dead latents' columns (`DeadPicks`) on the host; None off
    it, or for pre-codes that are not (rows, n): there `losses.dead_top_k` selects.

    Only the dead latents' columns are read. A row with more than k positive candidates
    keeps those above its k-th largest, which numpy's introselect finds on a copy of
    that row alone (no index array: 2,048 x 2,000, k 384, Intel Xeon, 2 threads, 5 ms
    against 9-15 for argpartition and a scatter of its indices); a tie at that value
    (more than k kept) is settled by torch's top-k, as the dense definition's is."""
    if pre.device.type not in sparse.HOST_DEVICES or pre.dim() != 2:
        return None
    cols = dead.nonzero().squeeze(1)
    candidates = pre.index_select(1, cols)
    if k >= cols.numel() or candidates.dtype not in (torch.float32, torch.float64):
        keep = candidates > 0
        if k < cols.numel():  # bf16 / fp16 pre-codes: no numpy dtype to select in
            keep &= torch.zeros_like(keep).scatter_(1, candidates.topk(k, dim=1).indices, True)
        return DeadPicks(cols, candidates, keep)
    keep = candidates > _floors(candidates, k).unsqueeze(1)
    counts = torch.from_numpy(sparse.row_counts(keep.numpy()))
    tied = (counts > k).nonzero().squeeze(1)
    if tied.numel():
        rows = candidates.index_select(0, tied)
        top = torch.zeros_like(rows, dtype=torch.bool).scatter_(
            1, rows.topk(k, dim=1).indices, True
        )
        keep.index_copy_(0, tied, top & (rows > 0))
        counts.index_copy_(0, tied, keep.index_select(0, tied).sum(1))
    return DeadPicks(cols, candidates, keep, counts)


def _floors(candidates: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the value a candidate must exceed to be picked: 0 for a row with at most
    k positive candidates (all of those), else just below its k-th largest."""
    at = candidates.shape[1] - k

    def floors(chunk: np.ndarray, _: int) -> np.ndarray:
        out = np.zeros(len(chunk), chunk.dtype)
        over = np.flatnonzero(np.count_nonzero(chunk > 0, axis=1) > k)
        if over.size:
            rows = chunk[over]  # a copy (fancy indexing): the candidates stay as they are
            rows.partition(at, axis=1)
            out[over] = np.nextafter(rows[:, at], chunk.dtype.type(-np.inf))
        return out

    return torch.from_numpy(sparse.by_row_chunks(floors, candidates.numpy()))


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
        pick_grads = picks.pick_grads(picks.atoms(dictionary), grad)
        if needs[4]:
            grads[4] = picks.on_pre(pick_grads, ctx.pre_shape)
        grads[:4] = _encoder_grads(x, centre, weight, picks, pick_grads, needs, ctx.sparse_rows[0])
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
    x, centre, weight, picks: DeadPicks, pick_grads: torch.Tensor, needs, sparse_rows: bool
) -> list:
    """Gradients of (x, centre, W, b) from d loss / d pre at the picks (`pick_grads`);
    W and b get rows on the dead latents alone."""
    grad_x = grad_centre = grad_w = grad_b = None
    if needs[0]:
        grad_x = picks.row_sums(weight.index_select(0, picks.cols), pick_grads)
    if needs[2]:
        centred = x if centre is None else x - centre
        rows_grad = picks.latent_sums(centred, pick_grads)
        grad_w = _on_rows(rows_grad, picks.cols, weight.shape[0], sparse_rows)
    if needs[1] or needs[3]:
        per_latent = picks.per_latent(pick_grads)
        if needs[3]:
            grad_b = _on_rows(per_latent, picks.cols, weight.shape[0])
        if needs[1]:
            grad_centre = -(per_latent @ weight.index_select(0, picks.cols))
    return [grad_x, grad_centre, grad_w, grad_b]
