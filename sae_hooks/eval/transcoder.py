"""How much of a model survives when a transcoder replaces one MLP.

The transcoder reads the MLP's input (``mlp_in.L``) and its prediction replaces the
MLP's output (``mlp_out.L``) through `splice_transcoder`. Per batch: one clean
forward capturing both points, then the same inputs with the MLP output replaced by
(a) the prediction, (b) zeros (the MLP ablated) and (c) the mean output. FVU is that
of the predicted output against the true output; L0, dead and dense latents are the
transcoder's codes; the downstream numbers (loss recovered, KL, ...) are those of
`evaluate_reconstruction` (one pass of `sae_hooks.eval.engine`), with "spliced"
meaning "MLP replaced".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor, nn

from sae_hooks.eval.downstream import Downstream
from sae_hooks.eval.engine import Subject, run_pass
from sae_hooks.eval.reconstruction import ReconstructionResult, RowStats, reconstruction_result
from sae_hooks.model_outputs import model_kind


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
    rows, down = RowStats(transcoder), Downstream(kind)
    subject = Subject(transcoder, input_point, [rows, down], target=output_point, mean=mean_output)
    caller = "evaluate_transcoder"
    opts = dict(max_batches=max_batches, drop_bos=drop_bos, progress=progress, caller=caller)
    if run_pass(model, [subject], data, **opts) == 0:
        raise ValueError("evaluate_transcoder: the data source yielded no batches")
    return reconstruction_result(f"{input_point}->{output_point}", kind, rows, down, dense_above)
