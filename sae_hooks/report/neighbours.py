"""Nearest latents of each latent: by decoder direction and by firing together.

Both are computed for every latent in blocks, so memory stays O(block x latents)
whatever the width of the SAE.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

BLOCK = 1024


@torch.no_grad()
def decoder_neighbours(sae: nn.Module, k: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, cosines), each (L, k): the latents whose decoder directions are closest."""
    w = sae.get_dictionary().detach().float().cpu().reshape(sae.nb_concepts, -1)
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    k = min(k, w.shape[0] - 1)
    ids, sims = [], []
    for lo in range(0, w.shape[0], BLOCK):
        cos = w[lo : lo + BLOCK] @ w.T
        cos[torch.arange(cos.shape[0]), torch.arange(lo, lo + cos.shape[0])] = -2.0  # not itself
        top = cos.topk(k, dim=1)
        ids.append(top.indices)
        sims.append(top.values)
    return torch.cat(ids), torch.cat(sims)


def decoder_norms(sae: nn.Module) -> torch.Tensor:
    """The L2 norm of each latent's decoder direction."""
    with torch.no_grad():
        w = sae.get_dictionary().detach().float().cpu()
    return w.reshape(w.shape[0], -1).norm(dim=1)


def cofire_neighbours(
    row: torch.Tensor, latent: torch.Tensor, nb_concepts: int, k: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, share), each (L, k): for latent i, the latents j that fire most often on the
    rows where i fires, as the share P(j fires | i fires) over the rows sampled."""
    k = min(k, nb_concepts - 1)
    if row.numel() == 0:
        return torch.zeros(nb_concepts, k, dtype=torch.long), torch.zeros(nb_concepts, k)
    n_rows = int(row.max()) + 1
    ones = torch.ones(row.numel())
    z = torch.sparse_coo_tensor(
        torch.stack([row, latent]), ones, (n_rows, nb_concepts), check_invariants=False
    )
    z = z.coalesce()
    fires = torch.zeros(nb_concepts).index_add_(0, latent, ones)
    ids, shares = [], []
    for lo in range(0, nb_concepts, BLOCK):
        hi = min(lo + BLOCK, nb_concepts)
        mine = (latent >= lo) & (latent < hi)
        block = torch.sparse_coo_tensor(
            torch.stack([latent[mine] - lo, row[mine]]),
            ones[mine],
            (hi - lo, n_rows),
            check_invariants=False,
        )
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            co = torch.sparse.mm(block.coalesce(), z).to_dense()  # (block, L) co-firing counts
        co[torch.arange(hi - lo), torch.arange(lo, hi)] = -1.0
        top = (co / fires[lo:hi, None].clamp_min(1)).topk(k, dim=1)
        ids.append(top.indices)
        shares.append(top.values.clamp_min(0))
    return torch.cat(ids), torch.cat(shares)
