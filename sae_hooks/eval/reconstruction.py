"""How much of a model's behaviour survives when an SAE replaces one activation.

For every batch: one clean forward that also captures the activation, then the
same inputs with the activation replaced by (a) the SAE reconstruction, (b) zeros
and (c) the mean activation (the loop is `sae_hooks.eval.engine`). Reconstruction
statistics (FVU, L0, dead and dense latents) come from the captured rows; downstream
statistics depend on what the model outputs: next-token CE and KL for causal LMs, top-1
agreement and KL for classifiers, cosine of mean-pooled embeddings for encoders (see
`sae_hooks.eval.downstream`). Pad tokens never count.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor, nn

from sae_hooks import metrics
from sae_hooks.devices import sae_device_dtype
from sae_hooks.eval.downstream import Downstream
from sae_hooks.eval.engine import Batch, ConstantReconstruction, Subject, run_pass
from sae_hooks.model_outputs import model_kind

__all__ = [
    "L0_MEASURES",
    "ConstantReconstruction",
    "ReconstructionResult",
    "RowStats",
    "evaluate_reconstruction",
    "reconstruction_result",
]

L0_MEASURES = (
    "mean non-zero codes per row with the SAE in eval mode (BatchTopK: codes at or above "
    "its running threshold, so a row's count does not depend on its batch; training's l0 "
    "is the per-batch top-k budget)"
)
"""What `ReconstructionResult.l0` counts; written next to it in eval.json."""


@dataclass
class ReconstructionResult:
    """The standard numbers of a spliced SAE; `to_json` for files, `summary` for people.

    FVU, L0 and the dead/dense fractions are those of sae_hooks.metrics over the real
    tokens measured. `l0` is measured in eval mode: see L0_MEASURES.
    """

    point: str
    kind: str
    n_rows: int = 0
    n_batches: int = 0
    fvu: float = math.nan
    l0: float = math.nan
    dead_fraction: float = math.nan
    dense_fraction: float = math.nan
    downstream: dict[str, float] = field(default_factory=dict)

    explained_variance = property(
        lambda self: metrics.explained_variance(self.fvu),
        doc="1 - FVU (sae_hooks.metrics.explained_variance)",
    )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["explained_variance"] = self.explained_variance
        d["l0_measures"] = L0_MEASURES
        return d

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), indent=2, **kw)

    def summary(self, selection: str | None = None) -> str:
        """The numbers for people; `selection`: how the SAE picks its codes in eval mode
        (its class's `selection`), said next to L0."""
        how = f"; {selection}" if selection else ""
        lines = [
            f"point {self.point} ({self.kind}): {self.n_rows:,} rows in {self.n_batches} batches",
            f"  FVU {self.fvu:.4f} (explained variance {self.explained_variance:.4f})",
            f"  L0 {self.l0:.2f} (eval mode{how})",
            f"  dead {self.dead_fraction:.2%}, dense {self.dense_fraction:.2%}",
        ]
        lines += [f"  {k} {v:.4f}" for k, v in self.downstream.items()]
        return "\n".join(lines)


class RowStats:
    """The reconstruction sums of one subject: FVU and MSE of the rows it replaces, firing
    of its codes (L0, dead, dense), and how many rows and batches were measured."""

    outputs = frozenset()

    def __init__(self, sae: nn.Module) -> None:
        device, _ = sae_device_dtype(sae)
        self.firing = metrics.FiringStats(sae.nb_concepts, device=device)
        self.sos = metrics.SumOfSquares()
        self.n_rows = self.n_batches = 0

    def update(self, batch: Batch) -> None:
        self.firing.update(batch.out.z)
        self.sos.update(batch.y, batch.out.x_hat)
        self.n_rows += batch.x.shape[0]
        self.n_batches += 1


def reconstruction_result(
    point: str, kind: str, rows: RowStats, downstream: Downstream, dense_above: float = 0.1
) -> ReconstructionResult:
    """The ReconstructionResult that a pass's accumulators add up to."""
    return ReconstructionResult(
        point=point,
        kind=kind,
        n_rows=rows.n_rows,
        n_batches=rows.n_batches,
        fvu=rows.sos.fvu,
        l0=rows.firing.l0,
        dead_fraction=rows.firing.dead_fraction,
        dense_fraction=rows.firing.dense_fraction(dense_above),
        downstream=downstream.eval_json(),
    )


def evaluate_reconstruction(
    model: nn.Module,
    point: str,
    sae: nn.Module,
    data: Iterable[Mapping[str, Tensor]],
    *,
    max_batches: int | None = None,
    mean_activation: Tensor | None = None,
    dense_above: float = 0.1,
    drop_bos: bool = False,
    progress: bool = True,
) -> ReconstructionResult:
    """FVU, L0, dead/dense latents and downstream metrics of `sae` spliced at `point`.

    `mean_activation` (d,) is the mean-ablation baseline; by default each batch's
    own mean over its real tokens. `drop_bos` leaves each sequence's first real
    token out of FVU and L0, as a store captured with drop_bos does (GPT-2's first
    position is an attention sink with an outsized norm). The SAE runs in eval mode
    (BatchTopK: its running threshold, so L0 is that of inference, not the batch top-k
    of training) and gets its previous mode back afterwards.
    """
    kind = model_kind(model)
    rows, down = RowStats(sae), Downstream(kind)
    subject = Subject(sae, point, [rows, down], mean=mean_activation)
    caller = "evaluate_reconstruction"
    opts = dict(max_batches=max_batches, drop_bos=drop_bos, progress=progress, caller=caller)
    if run_pass(model, [subject], data, **opts) == 0:
        raise ValueError("evaluate_reconstruction: the data source yielded no batches")
    return reconstruction_result(point, kind, rows, down, dense_above)
