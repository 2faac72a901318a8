"""How much of a model survives when a transcoder replaces one MLP.

The transcoder reads the MLP's input (``mlp_in.L``) and its prediction replaces the
MLP's output (``mlp_out.L``) through `splice_transcoder`. Per batch: one clean
forward capturing both points, then the same inputs with the MLP output replaced by
(a) the prediction, (b) zeros (the MLP ablated) and (c) the mean output. FVU is that
of the predicted output against the true output; L0, dead and dense latents are the
transcoder's codes; the downstream numbers (loss recovered, KL, ...) are those of
`evaluate_reconstruction`, with "spliced" meaning "MLP replaced".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sae_hooks import metrics as sae_metrics
from sae_hooks.devices import model_device, sae_device_dtype, to_device
from sae_hooks.eval.reconstruction import (
    ConstantReconstruction,
    ReconstructionResult,
    _Downstream,
    _rows,
)
from sae_hooks.hooks import capture, splice, splice_transcoder
from sae_hooks.model_outputs import model_kind, run_model
from sae_hooks.sae.modes import eval_mode


@torch.no_grad()
def evaluate_transcoder(
    model: nn.Module,
    input_point: str,
    output_point: str,
    transcoder: nn.Module,
    data: Iterable[Mapping[str, Tensor]],
    *,
    max_batches: int | None = None,
    mean_output: Tensor | None = None,
    dense_above: float = 0.1,
    drop_bos: bool = False,
    progress: bool = True,
) -> ReconstructionResult:
    """FVU of the predicted output, L0, dead/dense latents and downstream metrics with
    the MLP at `output_point` replaced by `transcoder` reading `input_point`.

    The result's `point` is "input_point->output_point"; `mean_output` (d_out,) is the
    mean-ablation baseline (default: each batch's own mean); `drop_bos` as in
    `evaluate_reconstruction`. The transcoder runs in eval mode.
    """
    kind = model_kind(model)
    result = ReconstructionResult(point=f"{input_point}->{output_point}", kind=kind)
    device, dtype = sae_device_dtype(transcoder)
    firing = sae_metrics.FiringStats(transcoder.nb_concepts, device=device)
    squares = sae_metrics.SumOfSquares()
    downstream = _Downstream(kind)
    zero = ConstantReconstruction(torch.zeros(transcoder.output_size)).to(device)
    with eval_mode(transcoder):
        batches = tqdm(data, desc="eval", disable=not progress, total=max_batches)
        for i, inputs in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            inputs = to_device(inputs, model_device(model))
            with capture(model, [input_point, output_point]) as acts:
                clean = run_model(model, inputs)
            x = _rows(inputs, acts[input_point], transcoder.input_size, input_point, drop_bos)
            y = _rows(inputs, acts[output_point], transcoder.output_size, output_point, drop_bos)
            out = transcoder(x.to(device=device, dtype=dtype))
            firing.update(out.z)
            squares.update(y, out.x_hat)
            mean = y.float().mean(0) if mean_output is None else mean_output
            outs = {}
            with splice_transcoder(model, input_point, output_point, transcoder):
                outs["spliced"] = run_model(model, inputs)
            for name, stand_in in (("zero", zero), ("mean", ConstantReconstruction(mean))):
                with splice(model, output_point, stand_in.to(device)):
                    outs[name] = run_model(model, inputs)
            downstream.update(inputs, clean, outs)
            result.n_rows += x.shape[0]
            result.n_batches += 1
    if result.n_batches == 0:
        raise ValueError("evaluate_transcoder: the data source yielded no batches")
    result.fvu = squares.fvu
    result.l0 = firing.l0
    result.dead_fraction = firing.dead_fraction
    result.dense_fraction = firing.dense_fraction(dense_above)
    result.downstream = downstream.result()
    return result
