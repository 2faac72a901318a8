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
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sae_hooks import metrics as sae_metrics
from sae_hooks.eval import metrics
from sae_hooks.hooks import capture, splice
from sae_hooks.hooks.capture import model_call_args
from sae_hooks.hooks.points import is_transformer_lens
from sae_hooks.sae import SAEOutput

ModelKind = Literal["lm", "classifier", "encoder"]
KINDS = ("lm", "classifier", "encoder")


def model_kind(model: nn.Module) -> ModelKind:
    """What the model outputs: next-token logits, class logits or hidden states."""
    if is_transformer_lens(model):
        return "lm"
    name = type(model).__name__
    if "CausalLM" in name or "LMHead" in name:
        return "lm"
    if "Classification" in name:
        return "classifier"
    return "encoder"


def run_model(model: nn.Module, inputs: Mapping[str, Tensor]) -> Tensor:
    """The model's main output: logits (LMs, classifiers) or the last hidden state."""
    kwargs, args = model_call_args(model, to_device(inputs, model_device(model)))
    out = model(*args, **kwargs)
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    return logits if logits is not None else out.last_hidden_state


def model_device(model: nn.Module) -> torch.device:
    """Where the model's inputs go: the device of its first parameter."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def sae_tensor_spec(sae: nn.Module) -> torch.Tensor:
    """A tensor of the SAE's own device and dtype (its first parameter or buffer), to
    move activations to; float32 on the CPU for an SAE that holds no tensor."""
    for t in (*sae.parameters(), *sae.buffers()):
        if t.is_floating_point():
            return t
    return torch.empty(0)


def to_device(inputs: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in inputs.items()}


class Replace(nn.Module):
    """A stand-in "SAE" whose reconstruction is a fixed vector (zeros or the mean).

    Lets the ablation baselines go through the very same splice as the SAE.
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


@dataclass
class ReconstructionResult:
    """The standard numbers of a spliced SAE; `to_json` for files, `summary` for people."""

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
        return d

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), indent=2, **kw)

    def summary(self) -> str:
        lines = [
            f"point {self.point} ({self.kind}): {self.n_rows:,} rows in {self.n_batches} batches",
            f"  FVU {self.fvu:.4f} (explained variance {self.explained_variance:.4f})",
            f"  L0 {self.l0:.2f}, dead {self.dead_fraction:.2%}, dense {self.dense_fraction:.2%}",
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


def _row_mask(inputs: Mapping[str, Tensor], x: Tensor, drop_bos: bool) -> Tensor:
    """(B, T) bool: the positions whose activations count (real tokens, BOS optionally not)."""
    mask = inputs.get("attention_mask")
    keep = torch.ones(x.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
    if drop_bos:
        keep = keep & (keep.long().cumsum(1) > 1)
    return keep.to(x.device)


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
    position is an attention sink with an outsized norm). The SAE runs in eval mode (BatchTopK uses its
    running threshold) and is put back in its previous mode afterwards.
    """
    kind = model_kind(model)
    was_training = sae.training
    sae.eval()
    param = sae_tensor_spec(sae)
    firing = sae_metrics.FiringStats(sae.nb_concepts, device=param.device)
    sos = sae_metrics.SumOfSquares()
    downstream = _Downstream(kind)
    result = ReconstructionResult(point=point, kind=kind)
    d = sae.input_size
    zero = Replace(torch.zeros(d)).to(param.device)
    try:
        for i, inputs in enumerate(
            tqdm(data, desc="eval", disable=not progress, total=max_batches)
        ):
            if max_batches is not None and i >= max_batches:
                break
            inputs = to_device(inputs, model_device(model))
            with capture(model, point) as acts:
                clean = run_model(model, inputs)
            x = acts[point]
            if x.shape[-1] != d:
                raise ValueError(
                    f"evaluate_reconstruction: the activation at {point!r} has d={x.shape[-1]} "
                    f"but the SAE's input_size is {d}"
                )
            rows = x[_row_mask(inputs, x, drop_bos)] if x.ndim == 3 else x.reshape(-1, d)
            out = sae(rows.to(device=param.device, dtype=param.dtype))
            firing.update(out.z)
            sos.update(rows, out.x_hat)
            mean = rows.float().mean(0) if mean_activation is None else mean_activation
            outs = {}
            for name, stand_in in (
                ("spliced", sae),
                ("zero", zero),
                ("mean", Replace(mean).to(param.device)),
            ):
                with splice(model, point, stand_in):
                    outs[name] = run_model(model, inputs)
            downstream.update(inputs, clean, outs)
            result.n_rows += rows.shape[0]
            result.n_batches += 1
    finally:
        sae.train(was_training)
    if result.n_batches == 0:
        raise ValueError("evaluate_reconstruction: the data source yielded no batches")
    result.fvu = sos.fvu
    result.l0 = firing.l0
    result.dead_fraction = firing.dead_fraction
    result.dense_fraction = firing.dense_fraction(dense_above)
    result.downstream = downstream.result()
    return result
