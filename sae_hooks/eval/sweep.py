"""Evaluate every SAE of a sweep on the same held-out batches, one clean forward per batch.

`evaluate_many` is one pass of `sae_hooks.eval.engine` with every SAE a subject: each
batch runs through the model once, capturing every point the SAEs read; per point the
zero- and mean-ablation baselines run once; then each SAE is spliced in turn. Each SAE's
result is the `ReconstructionResult` that `evaluate_reconstruction` gives it alone on the
same batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from sae_hooks.atomic import write_text_atomic
from sae_hooks.eval.downstream import Downstream
from sae_hooks.eval.engine import Subject, run_pass
from sae_hooks.eval.reconstruction import ReconstructionResult, RowStats, reconstruction_result
from sae_hooks.model_outputs import model_kind


def evaluate_many(
    model: nn.Module,
    saes: Mapping[str, tuple[str, nn.Module]],
    data: Iterable[Mapping[str, Tensor]],
    *,
    max_batches: int | None = None,
    dense_above: float = 0.1,
    drop_bos: bool = False,
    progress: bool = True,
) -> dict[str, ReconstructionResult]:
    """{name: ReconstructionResult} of every SAE in `saes` ({name: (point, sae)}).

    The mean-ablation baseline is each batch's own mean, as evaluate_reconstruction's
    default; drop_bos and dense_above mean what they mean there.
    """
    if not saes:
        raise ValueError("evaluate_many needs at least one SAE: {name: (point, sae)}")
    kind = model_kind(model)
    measures = {name: (RowStats(sae), Downstream(kind)) for name, (_, sae) in saes.items()}
    subjects = [Subject(sae, point, measures[name]) for name, (point, sae) in saes.items()]
    opts = dict(max_batches=max_batches, drop_bos=drop_bos, progress=progress)
    if run_pass(model, subjects, data, caller="evaluate_many", **opts) == 0:
        raise ValueError("evaluate_many: the data source yielded no batches")
    return {
        name: reconstruction_result(point, kind, *measures[name], dense_above)
        for name, (point, _) in saes.items()
    }


def evaluate_sweep(
    model: nn.Module,
    sweep_dir: str | os.PathLike,
    data: Iterable[Mapping[str, Tensor]],
    *,
    device: str = "cpu",
    **options: Any,
) -> dict[str, ReconstructionResult]:
    """Evaluate every trained SAE of a train_many directory with `evaluate_many`; write
    each SAE's result to SWEEP/<name>/eval.json (the frontier reads it). `options`
    go to evaluate_many (max_batches, drop_bos, ...)."""
    from sae_hooks.sae import load_sae
    from sae_hooks.train.many import read_sweep

    root = Path(sweep_dir)
    saes = {}
    for entry in read_sweep(root):
        sae_dir = root / entry["name"] / "sae"
        if not sae_dir.is_dir():
            raise FileNotFoundError(f"{sae_dir} does not exist: train the sweep to its end first")
        saes[entry["name"]] = (entry["config"]["point"], load_sae(sae_dir, device=device))
    results = evaluate_many(model, saes, data, **options)
    for name, result in results.items():
        write_text_atomic(root / name / "eval.json", result.to_json() + "\n")
    return results
