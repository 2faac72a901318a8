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
"""

from __future__ import annotations

import torch
from torch import nn

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


@torch.no_grad()
def remove_parallel_gradient_(weight: torch.Tensor) -> None:
    """Project each row's gradient onto the tangent space of the unit sphere at that row."""
    if weight.grad is None:
        return
    unit = weight / weight.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    weight.grad.sub_((weight.grad * unit).sum(-1, keepdim=True) * unit)


@torch.no_grad()
def normalize_rows_(weight: torch.Tensor) -> None:
    weight.div_(weight.norm(dim=-1, keepdim=True).clamp_min(_EPS))
