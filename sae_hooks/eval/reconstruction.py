"""How much of a model's behaviour survives when an SAE replaces one activation.

For every batch: one clean forward that also captures the activation, then the
same inputs with the activation replaced by (a) the SAE reconstruction, (b) zeros
and (c) the mean activation. Reconstruction statistics (FVU, L0, dead and dense
latents) come from the captured rows; downstream statistics depend on what the
model outputs: next-token CE and KL for causal LMs, top-1 agreement and KL for
classifiers, cosine of mean-pooled embeddings for encoders. Pad tokens never count.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sae_hooks import metrics as sae_metrics
from sae_hooks.devices import model_device, sae_device_dtype, to_device
from sae_hooks.eval import metrics
from sae_hooks.hooks import capture, splice
from sae_hooks.model_outputs import ModelKind, model_kind, run_model
from sae_hooks.sae import SAEOutput
from sae_hooks.sae.modes import eval_mode


class ConstantReconstruction(nn.Module):
    """A stand-in "SAE" whose reconstruction is one fixed vector (zeros or the mean).

    Lets the zero- and mean-ablation baselines go through the very same splice as the SAE.
    """

    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value.detach().float().reshape(-1))
        self.input_size = self.nb_concepts = self.value.numel()  # its "latents": x itself

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, x

    def decode(self, z: Tensor) -> Tensor:
        return self.value.to(z.dtype).expand(z.shape[0], -1)

    def forward(self, x: Tensor) -> SAEOutput:
        return SAEOutput(x, x, self.decode(x))


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

    @property
    def explained_variance(self) -> float:
        return 1.0 - self.fvu

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["explained_variance"] = self.explained_variance
        d["l0_measures"] = L0_MEASURES
        return d

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), indent=2, **kw)

    def summary(self) -> str:
        lines = [
            f"point {self.point} ({self.kind}): {self.n_rows:,} rows in {self.n_batches} batches",
            f"  FVU {self.fvu:.4f} (explained variance {self.explained_variance:.4f})",
            f"  L0 {self.l0:.2f} (eval mode; BatchTopK: codes >= its running threshold)",
            f"  dead {self.dead_fraction:.2%}, dense {self.dense_fraction:.2%}",
        ]
        lines += [f"  {k} {v:.4f}" for k, v in self.downstream.items()]
        return "\n".join(lines)


class _Downstream:
    """Accumulates the output-level metrics of one model kind over batches."""

    def __init__(self, kind: ModelKind) -> None:
        self.kind = kind
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, name: str, values: Tensor, weight: Tensor | None = None) -> None:
        values = values.float()
        if weight is None:
            weight = torch.ones_like(values)
        self.sums[name] = self.sums.get(name, 0.0) + (values * weight).sum().item()
        self.counts[name] = self.counts.get(name, 0.0) + weight.sum().item()

    def mean(self, name: str) -> float:
        return self.sums[name] / self.counts[name] if self.counts.get(name) else math.nan

    def update(self, inputs: Mapping[str, Tensor], clean: Tensor, outs: dict[str, Tensor]) -> None:
        mask = inputs.get("attention_mask")
        if self.kind == "lm":
            ids = inputs["input_ids"]
            m = torch.ones_like(ids) if mask is None else mask
            pairs = metrics.pair_mask(m.to(clean.device))
            for name, logits in {"clean": clean, **outs}.items():
                self.add(f"ce_{name}", metrics.next_token_ce(logits, ids.to(logits.device)), pairs)
            real = m.to(clean.device).float()
            self.add("kl", metrics.kl_div(clean, outs["spliced"]), real)
        elif self.kind == "classifier":
            top = clean.argmax(-1)
            for name, logits in outs.items():
                self.add(f"top1_agreement_{name}", (logits.argmax(-1) == top).float())
            self.add("kl", metrics.kl_div(clean, outs["spliced"]))
        else:
            m = None if mask is None else mask.to(clean.device)
            ref = metrics.mean_pool(clean, m)
            for name, hidden in outs.items():
                self.add(f"cosine_{name}", metrics.cosine(ref, metrics.mean_pool(hidden, m)))

    def result(self) -> dict[str, float]:
        r: dict[str, float] = {}
        if self.kind == "lm":
            clean, spliced = self.mean("ce_clean"), self.mean("ce_spliced")
            zero, mean = self.mean("ce_zero"), self.mean("ce_mean")
            r.update(ce_clean=clean, ce_spliced=spliced, ce_zero_ablated=zero, ce_mean_ablated=mean)
            r["delta_ce"] = spliced - clean
            r["loss_recovered"] = metrics.loss_recovered(clean, spliced, zero)
            r["loss_recovered_vs_mean"] = metrics.loss_recovered(clean, spliced, mean)
            r["kl_clean_spliced"] = self.mean("kl")
        elif self.kind == "classifier":
            r["top1_agreement"] = self.mean("top1_agreement_spliced")
            r["top1_agreement_zero_ablated"] = self.mean("top1_agreement_zero")
            r["top1_agreement_mean_ablated"] = self.mean("top1_agreement_mean")
            r["kl_clean_spliced"] = self.mean("kl")
        else:
            cos, zero = self.mean("cosine_spliced"), self.mean("cosine_zero")
            r.update(
                cosine=cos, cosine_zero_ablated=zero, cosine_mean_ablated=self.mean("cosine_mean")
            )
            r["cosine_recovered"] = (cos - zero) / (1 - zero) if zero < 1 else math.nan
        return r


def _rows(inputs: Mapping[str, Tensor], x: Tensor, d: int, point: str, drop_bos: bool) -> Tensor:
    """The activation rows that count: real tokens (BOS optionally not), as (N, d)."""
    if x.shape[-1] != d:
        raise ValueError(
            f"evaluate_reconstruction: the activation at {point!r} has d={x.shape[-1]} "
            f"but the SAE's input_size is {d}"
        )
    if x.ndim != 3:
        return x.reshape(-1, d)
    mask = inputs.get("attention_mask")
    keep = torch.ones(x.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
    if drop_bos:
        keep = keep & (keep.long().cumsum(1) > 1)
    return x[keep.to(x.device)]


class _Measures:
    """The running sums of one evaluation: reconstruction (FVU, firing) and downstream."""

    def __init__(self, sae: nn.Module, kind: ModelKind, drop_bos: bool) -> None:
        self.sae, self.drop_bos = sae, drop_bos
        self.device, self.dtype = sae_device_dtype(sae)
        self.firing = sae_metrics.FiringStats(sae.nb_concepts, device=self.device)
        self.sos = sae_metrics.SumOfSquares()
        self.downstream = _Downstream(kind)
        self.zero = ConstantReconstruction(torch.zeros(sae.input_size)).to(self.device)

    def add_batch(
        self, model: nn.Module, point: str, inputs: Mapping[str, Tensor], mean: Tensor | None
    ) -> int:
        """Measure one batch (inputs on the model's device); returns its number of rows."""
        with capture(model, point) as acts:
            clean = run_model(model, inputs)
        rows = _rows(inputs, acts[point], self.sae.input_size, point, self.drop_bos)
        out = self.sae(rows.to(device=self.device, dtype=self.dtype))
        self.firing.update(out.z)
        self.sos.update(rows, out.x_hat)
        mean = rows.float().mean(0) if mean is None else mean
        outs = {}
        for name, stand_in in (
            ("spliced", self.sae),
            ("zero", self.zero),
            ("mean", ConstantReconstruction(mean).to(self.device)),
        ):
            with splice(model, point, stand_in):
                outs[name] = run_model(model, inputs)
        self.downstream.update(inputs, clean, outs)
        return rows.shape[0]


@torch.no_grad()
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
    result = ReconstructionResult(point=point, kind=kind)
    with eval_mode(sae):
        measures = _Measures(sae, kind, drop_bos)
        batches = tqdm(data, desc="eval", disable=not progress, total=max_batches)
        for i, inputs in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            inputs = to_device(inputs, model_device(model))
            result.n_rows += measures.add_batch(model, point, inputs, mean_activation)
            result.n_batches += 1
    if result.n_batches == 0:
        raise ValueError("evaluate_reconstruction: the data source yielded no batches")
    result.fvu = measures.sos.fvu
    result.l0 = measures.firing.l0
    result.dead_fraction = measures.firing.dead_fraction
    result.dense_fraction = measures.firing.dense_fraction(dense_above)
    result.downstream = measures.downstream.result()
    return result
