"""Run an SAE in a given train/eval mode for one block, then put its mode back.

Inference code (splice, evaluate_reconstruction, concept_ablation, the report) must
not depend on the mode the caller left the SAE in: a BatchTopK SAE in train mode
keeps the top k*B codes of the whole batch, so a token's codes would change with
the sequences batched next to it. Each such function wraps its work in
``eval_mode(sae)``; every submodule gets its own mode back on every exit path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TypeVar

from torch import nn

M = TypeVar("M")


@contextmanager
def module_mode(module: M, training: bool) -> Iterator[M]:
    """`module` and all its submodules in train (True) or eval (False) mode for the block;
    afterwards each submodule has the mode it had before. Anything that is not an
    nn.Module (a duck-typed SAE) is yielded unchanged."""
    if not isinstance(module, nn.Module):
        yield module
        return
    saved = [(m, m.training) for m in module.modules()]
    module.train(training)
    try:
        yield module
    finally:
        for m, was_training in saved:
            m.training = was_training


def eval_mode(sae: M) -> AbstractContextManager[M]:
    """``with eval_mode(sae):`` runs the block with `sae` in eval mode (BatchTopK: its
    running threshold, so a row's codes do not depend on its batch) and restores the
    mode it had, even when the block raises."""
    return module_mode(sae, training=False)
