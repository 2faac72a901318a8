"""What replacing a point changes in the model's output, summed over the batches.

One accumulator for every evaluation, whatever the model kind: per replaced output
(SPLICED, ZERO, MEAN) next-token CE and KL(clean || replaced) for causal LMs, top-1
agreement and KL for classifiers, cosine of mean-pooled embeddings for encoders. Pad
tokens never count. eval.json reads it with `eval_json`, SAEBench's core metrics with
`sae_hooks.eval.core`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from sae_hooks import metrics
from sae_hooks.eval.engine import MEAN, SPLICED, ZERO, Batch
from sae_hooks.model_outputs import ModelKind


class Downstream:
    """Output-level sums of one subject over batches.

    `outputs`: the replaced outputs measured; `kl`: those of them whose KL from the clean
    output is summed too (KL costs a softmax over the vocabulary per position).
    """

    def __init__(
        self,
        kind: ModelKind,
        outputs: Iterable[str] = (SPLICED, ZERO, MEAN),
        kl: Iterable[str] = (SPLICED,),
    ) -> None:
        self.kind = kind
        self.kl = frozenset(kl)
        self.outputs = frozenset(outputs) | self.kl
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

    def update(self, batch: Batch) -> None:
        outs = {name: out for name, out in batch.outputs.items() if name in self.outputs}
        if not outs:
            return
        clean = batch.clean
        mask = batch.inputs.get("attention_mask")
        if self.kind == "lm":
            ids = batch.inputs["input_ids"]
            m = (torch.ones_like(ids) if mask is None else mask).to(clean.device)
            pairs = metrics.pair_mask(m)
            for name, logits in {"clean": clean, **outs}.items():
                self.add(f"ce_{name}", metrics.next_token_ce(logits, ids.to(logits.device)), pairs)
            weight = m.float()
        elif self.kind == "classifier":
            top = clean.argmax(-1)
            for name, logits in outs.items():
                self.add(f"top1_agreement_{name}", (logits.argmax(-1) == top).float())
            weight = None
        else:
            m = None if mask is None else mask.to(clean.device)
            ref = metrics.mean_pool(clean, m)
            for name, hidden in outs.items():
                self.add(f"cosine_{name}", metrics.cosine(ref, metrics.mean_pool(hidden, m)))
            return
        for name in self.kl & outs.keys():
            self.add(f"kl_{name}", metrics.kl_div(clean, outs[name]), weight)

    def eval_json(self) -> dict[str, float]:
        """eval.json's "downstream": the keys of the model kind."""
        r: dict[str, float] = {}
        if self.kind == "lm":
            clean, spliced = self.mean("ce_clean"), self.mean("ce_spliced")
            zero, mean = self.mean("ce_zero"), self.mean("ce_mean")
            r.update(ce_clean=clean, ce_spliced=spliced, ce_zero_ablated=zero, ce_mean_ablated=mean)
            r["delta_ce"] = spliced - clean
            r["loss_recovered"] = metrics.loss_recovered(clean, spliced, zero)
            r["loss_recovered_vs_mean"] = metrics.loss_recovered(clean, spliced, mean)
            r["kl_clean_spliced"] = self.mean("kl_spliced")
        elif self.kind == "classifier":
            r["top1_agreement"] = self.mean("top1_agreement_spliced")
            r["top1_agreement_zero_ablated"] = self.mean("top1_agreement_zero")
            r["top1_agreement_mean_ablated"] = self.mean("top1_agreement_mean")
            r["kl_clean_spliced"] = self.mean("kl_spliced")
        else:
            cos, zero = self.mean("cosine_spliced"), self.mean("cosine_zero")
            r.update(
                cosine=cos, cosine_zero_ablated=zero, cosine_mean_ablated=self.mean("cosine_mean")
            )
            r["cosine_recovered"] = (cos - zero) / (1 - zero) if zero < 1 else math.nan
        return r
