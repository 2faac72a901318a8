"""Training losses: AuxK, and its share under data parallel.

Shapes: rows in, (N, d). The reconstruction metrics (mse, fvu) are sae_hooks.metrics',
re-exported here for `sae_hooks.train.mse` / `fvu`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from sae_hooks.metrics import fvu, mse
from sae_hooks.sae import sparse
from sae_hooks.sae.sparse_encoder import fixed_support, gather_pre_codes

from .auxk_columns import DeadColumnDecode, DeadPicks, dead_picks

if TYPE_CHECKING:
    from sae_hooks.distributed import ProcessRank
    from sae_hooks.sae import SAE
    from sae_hooks.sae.output import EncoderInputs, TrainingSupport

    from .window import DeadLatents

__all__ = [
    "aux_k_loss",
    "aux_k_rank_scale",
    "dead_top_k",
    "fvu",
    "mse",
    "trainer_aux_loss",
]


def aux_k_loss(
    residual: torch.Tensor,
    z_pre: torch.Tensor,
    dead: torch.Tensor,
    dictionary: torch.Tensor,
    k_aux: int,
    *,
    support: TrainingSupport | None = None,
    row_sparse_grads: bool = False,
) -> torch.Tensor:
    """AuxK (Gao et al. 2024): let the dead latents explain what the live ones missed.

    residual: the detached error e = x - x_hat (N, d). z_pre: pre-activations (N, n).
    dead: bool mask (n,). dictionary: the normalised atoms (n, d); the decoder bias is
    not used. The top min(k_aux, n_dead) dead pre-activations of each row (after ReLU)
    reconstruct e, as in SAELens and sparsify; the loss is
    ||e - e_hat||^2 / ||e - mean(e)||^2, scaled by min(n_dead / k_aux, 1), which is
    0 when nothing is dead. (Clipping k_aux to n_dead changes no value: live latents
    never contribute, so the top k_aux of all latents with the live ones at 0 decodes
    to the same e_hat. It changes the cost: see `dead_top_k`.)

    The selection runs without gradient. Given the support of an SAE forward with a
    sparse encoder gradient (`SAEOutput.support`, whose encoder inputs z_pre came
    from), AuxK back-propagates through the picked pairs only: by the sparse encoder
    and decoder (`gather_pre_codes`, `decode_pairs`) where the positive picks are
    sparse among the dead latents' columns, by `DeadColumnDecode` where they are dense.

    row_sparse_grads: `DeadColumnDecode` gives the leaf weights (encoder, dictionary)
    their dead rows' gradient as a sparse (n, d) tensor, for a backward in which the
    main loss gives the same weights a dense gradient that autograd adds it into (the
    trainer's): no (n, d) zero matrix filled, copied into and added per weight (9 ms of
    a 200 ms step at 2,000 dead, 6144 x 768, Intel Xeon, 2 threads). Off, the
    gradients are dense whatever else the backward holds.
    """
    k = min(k_aux, z_pre.shape[-1])
    inputs = None if support is None else support.encoder_inputs
    picks = dead_picks(z_pre.detach(), dead, k)
    if picks is not None:
        picks.row_sparse_grads = row_sparse_grads
    if picks is not None and _dense_picks(picks, z_pre, dictionary, inputs):
        pre = z_pre if inputs is None else z_pre.detach()  # its gradient goes to inputs
        e_hat = DeadColumnDecode.apply(*(inputs or (None,) * 4), pre, dictionary, picks)
    else:
        rows, cols = picks.pairs() if picks is not None else dead_top_k(z_pre.detach(), dead, k)
        order = sparse.LatentOrder(rows, cols)  # one sort for both weight gradients
        picked = gather_pre_codes(z_pre, rows, cols, inputs, order)
        values = F.relu(picked) * dead.index_select(0, cols)  # a live pick (off CPU) adds 0
        e_hat = sparse.decode_pairs(
            rows, cols, values.to(dictionary.dtype), dictionary, n_rows=len(residual), order=order
        )
    e = residual.to(e_hat.dtype)
    loss = (e - e_hat).pow(2).sum() / (e - e.mean(0)).pow(2).sum().clamp_min(1e-12)
    scale = (dead.sum() / k).clamp(max=1.0)
    return scale * loss


MAX_SPARSE_AUX_DENSITY = sparse.MAX_SPARSE_DENSITY
"""Share of the dead latents' (rows, n_dead) pre-codes picked (positive, in the row's top
min(k_aux, n_dead)) above which AuxK runs `DeadColumnDecode` on the host, below which
the sparse pairs: the sparse decoder's cut-off, kept (not re-measured against
`DeadColumnDecode`, whose dense picks' gradient costs the same at any share)."""


def _dense_picks(
    picks: DeadPicks, pre: torch.Tensor, dictionary: torch.Tensor, inputs: EncoderInputs | None
) -> bool:
    """Whether `DeadColumnDecode` takes AuxK: dense picks, one float dtype throughout."""
    dtypes = {pre.dtype, dictionary.dtype} | {t.dtype for t in inputs or () if t is not None}
    dense = picks.count > MAX_SPARSE_AUX_DENSITY * picks.n_rows * picks.cols.numel()
    return dense and len(dtypes) == 1 and pre.dtype in (torch.float32, torch.float64)


@torch.no_grad()
def dead_top_k(pre: torch.Tensor, dead: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) flat and sorted by row: each row's top min(k, n_dead) dead latents
    by pre-code, those whose pre-code is > 0 (a ReLU'd 0 decodes to nothing).

    On CPU only the dead latents' columns are read (`dead_picks`), (N, n_dead) instead
    of a `where` and a top-k over (N, n); counting and dropping are host reads, free
    there. Elsewhere they would make the host wait for the device: the top-k runs over
    all latents with the live ones at 0 (the caller weighs a live pick by 0).
    """
    picks = dead_picks(pre, dead, k)
    if picks is not None:
        return picks.pairs()
    candidates = torch.where(dead, pre, 0.0).clamp_min_(0.0)
    return fixed_support(candidates.topk(k, dim=-1, sorted=False).indices)


@torch.no_grad()
def aux_k_rank_scale(residual: torch.Tensor, rank: ProcessRank) -> torch.Tensor:
    """world * D_rank / D_global: turns this rank's AuxK loss into its share of the global one.

    AuxK divides the summed squared error by D = sum ||e - mean(e)||^2 over the
    batch, a constant for the gradient; with D of the global batch, the mean of
    the ranks' losses is the single-process loss. One all-reduce of d + 1 values.
    """
    e = residual.double()
    local = (e - e.mean(0)).pow(2).sum()
    sums = rank.all_reduce_sum_(torch.cat([e.sum(0), e.pow(2).sum().reshape(1)]))
    n = e.shape[0] * rank.world
    total = sums[-1] - sums[:-1].pow(2).sum() / n
    return (rank.world * local / total.clamp_min(1e-12)).float()


def trainer_aux_loss(
    residual: torch.Tensor,
    z_pre: torch.Tensor,
    *,
    active: bool,
    dead: DeadLatents,
    sae: SAE,
    k_aux: int,
    rank: ProcessRank,
    device: torch.device,
    support: TrainingSupport | None = None,
) -> torch.Tensor:
    """AuxK while some latent is dead (the trainer checks every few steps), else a constant 0.

    The mask and dictionary are only read when active, so a run with no dead latent
    pays nothing; under data parallel the loss is this rank's share of the global one.
    """
    if not active:
        return torch.zeros((), device=device)
    dictionary = sae.get_dictionary()
    aux = aux_k_loss(
        residual, z_pre, dead.mask(), dictionary, k_aux, support=support, row_sparse_grads=True
    )
    if rank.distributed:
        aux = aux * aux_k_rank_scale(residual, rank)
    return aux
