"""What an SAE's forward returns: `SAEOutput`, and what a training forward adds to it.

`SAEOutput` unpacks like overcomplete's (z_pre, z, x_hat) tuple. A forward that selects
its codes through a kept support (the sparse paths of sae/base.py and the variants)
knows more than those three tensors, and the training losses read it instead of a
(rows, n) pass over z: that is `SAEOutput.support`, a `TrainingSupport`, a typed field
outside the tuple (None for a dense or no-grad forward, and for an SAEOutput built
by a caller).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch


class Support(NamedTuple):
    """The kept (row, latent, value) triples of a forward's codes, sorted by row; values
    carry their autograd history. Fire counts, the L1 and Matryoshka's prefix losses
    read them instead of a (rows, n) pass over z."""

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor


class EncoderInputs(NamedTuple):
    """What the pre-codes pre = (x - centre) W^T + b were computed from, so that kept
    pre-codes can be read back through the sparse encoder backward
    (`sparse_encoder.gather_pre_codes`); centre is the decoder bias, or None."""

    x: torch.Tensor
    centre: torch.Tensor | None
    weight: torch.Tensor
    bias: torch.Tensor | None


@dataclasses.dataclass(frozen=True)
class TrainingSupport:
    """What a forward with a gradient knows beyond (z_pre, z, x_hat).

    kept: the kept codes' (row, latent, value) triples (None when z came from a dense
    selection). encoder_inputs: set when z_pre came from the linear encoder's sparse
    path: AuxK reads its pre-codes through the sparse backward with them. penalty: the
    forward's own sparsity loss (JumpReLU: the L0 through the Heaviside that shares its
    kernel evaluation with the codes'; zero during its per-row top-k warm-up), which
    `sparsity_loss` returns as it is.
    """

    kept: Support | None = None
    encoder_inputs: EncoderInputs | None = None
    penalty: torch.Tensor | None = None


class _Codes(NamedTuple):
    z_pre: torch.Tensor
    z: torch.Tensor
    x_hat: torch.Tensor


class SAEOutput(_Codes):
    """What forward returns; unpacks like overcomplete's (z_pre, z, x_hat) tuple.

    `support` (not one of the tuple's items, so `z_pre, z, x_hat = sae(x)` still
    unpacks): the `TrainingSupport` of a forward that recorded one, else None.
    """

    support: TrainingSupport | None = None

    def __new__(
        cls,
        z_pre: torch.Tensor,
        z: torch.Tensor,
        x_hat: torch.Tensor,
        support: TrainingSupport | None = None,
    ) -> SAEOutput:
        out = super().__new__(cls, z_pre, z, x_hat)
        if support is not None:
            out.support = support
        return out


def kept_support(out: SAEOutput) -> Support | None:
    """The kept codes the forward recorded in `out`, or None (a dense path, or an
    output made by a caller)."""
    support = out.support
    return None if support is None else support.kept
