"""Evaluate every SAE of a sweep on the same held-out batches, one clean forward per batch.

`evaluate_many` runs each batch through the model once, capturing every point the
SAEs read; per point the zero- and mean-ablation baselines run once; then each SAE
is spliced in turn. Each SAE's result is the `ReconstructionResult` that
`evaluate_reconstruction` gives it alone on the same batches.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sae_hooks.devices import model_device, to_device
from sae_hooks.hooks import capture, splice
from sae_hooks.model_outputs import model_kind, run_model
from sae_hooks.sae.modes import eval_mode

from .reconstruction import ConstantReconstruction, ReconstructionResult, _Measures, _rows


@torch.no_grad()
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
    points = list(dict.fromkeys(point for point, _ in saes.values()))
    results = {name: ReconstructionResult(point=p, kind=kind) for name, (p, _) in saes.items()}
    with contextlib.ExitStack() as modes:
        for _, sae in saes.values():
            modes.enter_context(eval_mode(sae))
        measures = {name: _Measures(sae, kind, drop_bos) for name, (_, sae) in saes.items()}
        batches = tqdm(data, desc="eval", disable=not progress, total=max_batches)
        for i, inputs in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            inputs = to_device(inputs, model_device(model))
            with capture(model, points) as acts:
                clean = run_model(model, inputs)
            for point in points:
                _point_batch(model, point, acts[point], inputs, clean, saes, measures, results)
    for name, result in results.items():
        if result.n_batches == 0:
            raise ValueError("evaluate_many: the data source yielded no batches")
        m = measures[name]
        result.fvu, result.l0 = m.sos.fvu, m.firing.l0
        result.dead_fraction = m.firing.dead_fraction
        result.dense_fraction = m.firing.dense_fraction(dense_above)
        result.downstream = m.downstream.result()
    return results


def _point_batch(
    model: nn.Module,
    point: str,
    act: Tensor,
    inputs: Mapping[str, Tensor],
    clean: Tensor,
    saes: Mapping[str, tuple[str, nn.Module]],
    measures: Mapping[str, _Measures],
    results: Mapping[str, ReconstructionResult],
) -> None:
    """The baselines of one point once, then every SAE of that point spliced in turn."""
    names = [name for name, (p, _) in saes.items() if p == point]
    first = measures[names[0]]
    rows = _rows(inputs, act, first.sae.input_size, point, first.drop_bos)
    mean = rows.float().mean(0)
    baselines = {}
    for label, stand_in in (
        ("zero", ConstantReconstruction(torch.zeros(rows.shape[-1]))),
        ("mean", ConstantReconstruction(mean)),
    ):
        with splice(model, point, stand_in.to(rows.device)):
            baselines[label] = run_model(model, inputs)
    for name in names:
        m = measures[name]
        out = m.sae(rows.to(device=m.device, dtype=m.dtype))
        m.firing.update(out.z)
        m.sos.update(rows, out.x_hat)
        with splice(model, point, m.sae):
            spliced = run_model(model, inputs)
        m.downstream.update(inputs, clean, {"spliced": spliced, **baselines})
        results[name].n_rows += rows.shape[0]
        results[name].n_batches += 1


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
        (root / name / "eval.json").write_text(result.to_json() + "\n")
    return results
