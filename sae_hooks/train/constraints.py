"""Unit-norm decoder rows, kept by the optimiser step rather than only by the forward.

With the DictionaryLayer's default 'l2' normalisation the forward already divides
each raw row by its norm, so the loss cannot be gamed by shrinking codes and
growing atoms, and the gradient on the raw row is (analytically) orthogonal to it.
What the forward cannot fix is the *raw* norm drifting under Adam: a row whose raw
norm grows sees a proportionally smaller effective step. Renormalising the raw
weight after every step pins it at 1, so the effective learning rate stays the
configured one. With 'identity' the constraint exists only through this module:
the parallel gradient component is removed before the step and the rows
renormalised after it. Other normalisations ('max_l2', 'l1', 'max_l1', custom)
are inequality or non-Euclidean constraints that the forward enforces; they are
left alone.

Since the rows are unit norm at every forward of training, the trainer runs its
forward inside `unit_rows_forward`: the 'l2' atoms are then the raw rows (no
normalisation and no normalisation backward), and `remove_parallel_gradient_`
does the projection that backward would have done.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from sae_hooks.sae import sparse

UNIT_NORM_NORMALIZATIONS = ("l2", "identity")
_EPS = 1e-12


def constrained_weight(sae: nn.Module) -> torch.Tensor | None:
    """The raw dictionary weight that should keep unit-norm rows, or None."""
    dictionary = getattr(sae, "dictionary", None)
    if dictionary is None:
        return None
    if getattr(dictionary, "normalization", "l2") not in UNIT_NORM_NORMALIZATIONS:
        return None
    return dictionary.weight


def unit_rows_forward(sae: nn.Module) -> contextlib.AbstractContextManager:
    """A context for the training forward when the SAE's dictionary rows are kept at unit
    norm (`normalize_rows_` after every step, at init and in every checkpoint): the
    dictionary then skips its 'l2' normalisation (DictionaryLayer.rows_kept_unit)."""
    dictionary = getattr(sae, "dictionary", None)
    if constrained_weight(sae) is None or not hasattr(dictionary, "rows_kept_unit"):
        return contextlib.nullcontext()
    return dictionary.rows_kept_unit()


@torch.no_grad()
def remove_parallel_gradient_(weight: torch.Tensor, *, unit_rows: bool = False) -> None:
    """Project each row's gradient onto the tangent space of the unit sphere at that row:
    g - (g . w) w / |w|^2, three passes over the weight (two row dots and one addcmul).
    unit_rows: the rows are unit norm already (the trainer's, renormalised after every
    step), so |w|^2 = 1 up to rounding and its pass is skipped (2.8 ms of a ~100 ms
    step at 6144 x 768, Intel Xeon, 2 threads)."""
    if weight.grad is None:
        return
    grad = weight.grad
    along = _row_dot(grad, weight)
    if not unit_rows:
        along.div_(_row_dot(weight, weight).clamp_min_(_EPS * _EPS))
    grad.addcmul_(weight, along, value=-1.0)


@torch.no_grad()
def clip_grad_norm_(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch's clip_grad_norm_ (foreach), the same numbers, but on the host the scaling
    pass is skipped when the norm is within max_norm (torch multiplies every gradient by
    a coefficient clamped to 1.0 to avoid a device sync; on the host the comparison is
    free and the multiply by 1.0 an identity)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.nn.utils.get_total_norm(grads, foreach=True)
    on_host = grads[0].device.type in sparse.HOST_DEVICES
    # torch's coefficient before its clamp to 1; elsewhere reading it would be a sync
    if not on_host or bool(max_norm / (total + 1e-6) < 1.0):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach=True)
    return total


@torch.no_grad()
def normalize_rows_(weight: torch.Tensor) -> None:
    weight.div_(weight.norm(dim=-1, keepdim=True).clamp_min(_EPS))


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(rows, 1) for (rows, d) a and b: each row of a dotted with the same row of b, one
    multiply-and-sum pass (`vecdot`; a batch of (1, d) @ (d, 1) `bmm`s took 3.5x as long
    on CPU, 6144 x 768). On the host over ROW_DOT_ROWS rows at a time, so that vecdot's
    (rows, d) product stays in L2 instead of a fresh 19 MB one (in the step, 6144 x 768,
    Intel Xeon, 2 threads: 2.3 ms against 3.0; the same numbers, row by row)."""
    if a.device.type not in sparse.HOST_DEVICES:
        return torch.linalg.vecdot(a, b).unsqueeze(-1)
    out = a.new_empty(a.shape[0], 1)
    for start in range(0, a.shape[0], ROW_DOT_ROWS):
        rows = slice(start, start + ROW_DOT_ROWS)
        torch.linalg.vecdot(a[rows], b[rows], out=out[rows, 0])
    return out


ROW_DOT_ROWS = 256
"""Rows a host `_row_dot` multiplies at a time (256 x 768 fp32: 768 KiB)."""
