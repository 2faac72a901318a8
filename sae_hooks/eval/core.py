"""SAEBench's core evaluation, with its JSON layout and metric names (eval_core.json).

Computed on held-out data only (the caller passes the held-out split: see
`sae_hooks.data.splits` and `held_out_rows`). Formulas, per row x, its
reconstruction x_hat and codes z (means over all real tokens measured):

- model_behavior_preservation: kl_div_with_sae = E KL(p_clean || p_sae),
  kl_div_with_ablation = E KL(p_clean || p_zero) (the activation zeroed),
  kl_div_score = (kl_ablation - kl_sae) / kl_ablation (1 perfect, 0 no better than zeros).
- model_performance_preservation: ce_loss_without_sae / _with_sae / _with_ablation (next-
  token CE), ce_loss_score = (ce_ablation - ce_sae) / (ce_ablation - ce_clean).
  (Causal LMs only; other models get null, as SAEBench has no such score for them.)
- reconstruction_quality: explained_variance = 1 - sum ||x - x_hat||^2 / sum ||x - mean x||^2
  (variance around the mean over the whole set; = 1 - FVU of sae_hooks.metrics),
  mse = mean over rows and dimensions of (x - x_hat)^2, cossim = E cos(x, x_hat).
- shrinkage: l2_norm_in = E ||x||, l2_norm_out = E ||x_hat||, l2_ratio = E ||x_hat|| / ||x||,
  relative_reconstruction_bias = E ||x_hat||^2 / E <x, x_hat> (1: unbiased, < 1: shrunk).
- sparsity: l0 = E #{z_i != 0}, l1 = E sum |z_i|.
- misc_metrics: frac_alive (latents that fired at least once), freq_over_1_percent /
  _10_percent (share of latents firing on more than 1% / 10% of rows), normalized_...
  (the share of all firings those latents account for), average_max_encoder_cosine_sim /
  _decoder_ (mean over latents of the largest cosine with another latent's row).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sae_hooks import metrics as sae_metrics
from sae_hooks.devices import model_device, sae_device_dtype, to_device
from sae_hooks.eval import metrics
from sae_hooks.eval.reconstruction import ConstantReconstruction, _rows
from sae_hooks.hooks import capture, splice
from sae_hooks.model_outputs import model_kind, run_model
from sae_hooks.sae.modes import eval_mode

EVAL_TYPE_ID_CORE = "core"
CORE_FILE = "eval_core.json"


class RowMetrics:
    """Streaming reconstruction, shrinkage, sparsity and frequency sums over batches of rows."""

    def __init__(self, nb_concepts: int) -> None:
        self.sos = sae_metrics.SumOfSquares()
        self.firing = sae_metrics.FiringStats(nb_concepts)
        self.sums: dict[str, float] = {}
        self.rows = 0
        self.dims = 0

    def update(self, x: Tensor, x_hat: Tensor, z: Tensor) -> None:
        x, x_hat, z = x.double().cpu(), x_hat.double().cpu(), z.float().cpu()
        self.sos.update(x, x_hat)
        self.firing.update(z)
        n_in, n_out = x.norm(dim=-1), x_hat.norm(dim=-1)
        parts = {
            "cossim": torch.nn.functional.cosine_similarity(x, x_hat, dim=-1),
            "l2_norm_in": n_in,
            "l2_norm_out": n_out,
            "l2_ratio": n_out / n_in.clamp_min(1e-12),
            "out_sq": n_out.pow(2),
            "dot": (x * x_hat).sum(-1),
            "l1": z.abs().sum(-1).double(),
            "sq_err": (x - x_hat).pow(2).sum(-1),
        }
        for key, values in parts.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(values.sum())
        self.rows += x.shape[0]
        self.dims = x.shape[-1]

    def result(self, sae: nn.Module) -> dict[str, dict[str, float]]:
        n = max(self.rows, 1)
        mean = {k: v / n for k, v in self.sums.items()}
        density = self.firing.density
        total = float(density.sum()) or math.nan
        enc, dec = _encoder_weight(sae), _decoder_weight(sae)
        return {
            "reconstruction_quality": {
                "explained_variance": 1.0 - self.sos.fvu,
                "mse": mean["sq_err"] / max(self.dims, 1),
                "cossim": mean["cossim"],
            },
            "shrinkage": {
                "l2_norm_in": mean["l2_norm_in"],
                "l2_norm_out": mean["l2_norm_out"],
                "l2_ratio": mean["l2_ratio"],
                "relative_reconstruction_bias": mean["out_sq"] / mean["dot"]
                if mean["dot"]
                else math.nan,
            },
            "sparsity": {"l0": self.firing.l0, "l1": mean["l1"]},
            "misc_metrics": {
                "freq_over_1_percent": float((density > 0.01).float().mean()),
                "freq_over_10_percent": float((density > 0.1).float().mean()),
                "normalized_freq_over_1_percent": float(density[density > 0.01].sum()) / total,
                "normalized_freq_over_10_percent": float(density[density > 0.1].sum()) / total,
                "average_max_encoder_cosine_sim": _mean_max_cosine(enc),
                "average_max_decoder_cosine_sim": _mean_max_cosine(dec),
                "frac_alive": float((density > 0).float().mean()),
            },
        }


def _encoder_weight(sae: nn.Module) -> Tensor | None:
    weight = getattr(getattr(sae, "encoder", None), "weight", None)
    return weight.detach().float().cpu() if isinstance(weight, Tensor) else None


def _decoder_weight(sae: nn.Module) -> Tensor | None:
    get = getattr(sae, "get_dictionary", None)
    return get().detach().float().cpu() if callable(get) else None


def _mean_max_cosine(rows: Tensor | None) -> float:
    """Mean over rows of the largest cosine with another row (NaN without rows)."""
    if rows is None or rows.ndim != 2 or rows.shape[0] < 2:
        return math.nan
    unit = torch.nn.functional.normalize(rows, dim=-1)
    cos = unit @ unit.T
    cos.fill_diagonal_(-math.inf)
    return float(cos.max(dim=1).values.mean())


@torch.no_grad()
def core_metrics_from_rows(sae: nn.Module, batches: Iterable[Tensor]) -> dict[str, dict]:
    """The reconstruction / shrinkage / sparsity / misc categories on held-out rows
    (no model: for stores and synthetic data). The SAE runs in eval mode."""
    device, dtype = sae_device_dtype(sae)
    acc = RowMetrics(sae.nb_concepts)
    with eval_mode(sae):
        for rows in batches:
            rows = rows.reshape(-1, rows.shape[-1])
            out = sae(rows.to(device=device, dtype=dtype))
            acc.update(rows, out.x_hat.float(), out.z)
    if acc.rows == 0:
        raise ValueError("core_metrics_from_rows: the held-out data yielded no rows")
    return {**_no_logits(), **acc.result(sae)}


def _nulls(*keys: str) -> dict[str, None]:
    return dict.fromkeys(keys)


class _Downstream:
    """CE and KL sums with the SAE spliced in and with the activation zeroed."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, name: str, values: Tensor, weight: Tensor) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float((values.float() * weight).sum())
        self.weights[name] = self.weights.get(name, 0.0) + float(weight.sum())

    def mean(self, name: str) -> float:
        w = self.weights.get(name, 0.0)
        return self.sums[name] / w if w else math.nan

    def result(self, lm: bool) -> dict[str, dict[str, float | None]]:
        kl_sae, kl_zero = self.mean("kl_sae"), self.mean("kl_zero")
        behaviour = {
            "kl_div_score": (kl_zero - kl_sae) / kl_zero if kl_zero > 0 else math.nan,
            "kl_div_with_ablation": kl_zero,
            "kl_div_with_sae": kl_sae,
        }
        if not lm:
            return {
                "model_behavior_preservation": behaviour,
                "model_performance_preservation": _nulls(
                    "ce_loss_score",
                    "ce_loss_with_ablation",
                    "ce_loss_with_sae",
                    "ce_loss_without_sae",
                ),
            }
        clean, with_sae, zero = self.mean("ce_clean"), self.mean("ce_sae"), self.mean("ce_zero")
        return {
            "model_behavior_preservation": behaviour,
            "model_performance_preservation": {
                "ce_loss_score": metrics.loss_recovered(clean, with_sae, zero),
                "ce_loss_with_ablation": zero,
                "ce_loss_with_sae": with_sae,
                "ce_loss_without_sae": clean,
            },
        }


@torch.no_grad()
def evaluate_core(
    model: nn.Module,
    point: str,
    sae: nn.Module,
    data: Iterable[Mapping[str, Tensor]],
    *,
    max_batches: int | None = None,
    drop_bos: bool = False,
) -> dict[str, dict]:
    """SAEBench core metrics of `sae` spliced at `point` over held-out `data` (batches of
    model inputs). KL and CE need a model with logits; an encoder (no logits) gets null
    there, as do CE scores of a classifier. The SAE runs in eval mode."""
    kind = model_kind(model)
    device, dtype = sae_device_dtype(sae)
    acc = RowMetrics(sae.nb_concepts)
    down = _Downstream()
    zero = ConstantReconstruction(torch.zeros(sae.input_size)).to(device)
    with eval_mode(sae):
        for i, inputs in enumerate(data):
            if max_batches is not None and i >= max_batches:
                break
            inputs = to_device(inputs, model_device(model))
            with capture(model, point) as acts:
                clean = run_model(model, inputs)
            rows = _rows(inputs, acts[point], sae.input_size, point, drop_bos)
            out = sae(rows.to(device=device, dtype=dtype))
            acc.update(rows, out.x_hat.float(), out.z)
            if kind == "encoder":
                continue
            outs = {}
            for name, stand_in in (("sae", sae), ("zero", zero)):
                with splice(model, point, stand_in):
                    outs[name] = run_model(model, inputs)
            _add_downstream(down, kind, inputs, clean, outs)
    if acc.rows == 0:
        raise ValueError("evaluate_core: the held-out data yielded no batches")
    categories = acc.result(sae)
    if kind == "encoder":
        return {**_no_logits(), **categories}
    return {**down.result(kind == "lm"), **categories}


def _no_logits() -> dict[str, dict[str, None]]:
    return {
        "model_behavior_preservation": _nulls("kl_div_score", "kl_div_with_ablation"),
        "model_performance_preservation": _nulls("ce_loss_score", "ce_loss_with_ablation"),
    }


def _add_downstream(
    down: _Downstream, kind: str, inputs: Mapping[str, Tensor], clean: Tensor, outs: dict
) -> None:
    mask = inputs.get("attention_mask")
    if kind == "lm":
        ids = inputs["input_ids"]
        m = (torch.ones_like(ids) if mask is None else mask).to(clean.device)
        pairs = metrics.pair_mask(m)
        down.add("ce_clean", metrics.next_token_ce(clean, ids.to(clean.device)), pairs)
        for name, logits in outs.items():
            down.add(f"ce_{name}", metrics.next_token_ce(logits, ids.to(logits.device)), pairs)
        weight = m.float()
    else:
        weight = torch.ones(clean.shape[:-1], device=clean.device)
    for name, logits in outs.items():
        down.add(f"kl_{name}", metrics.kl_div(clean, logits), weight)


def core_eval_json(
    metrics_by_category: Mapping[str, Any],
    *,
    eval_config: Mapping[str, Any] | None = None,
    sae_cfg: Mapping[str, Any] | None = None,
    details: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The SAEBench core-eval output object around the metric categories."""
    clean = json.loads(
        json.dumps(metrics_by_category, default=float), parse_constant=lambda _: None
    )
    return {
        "eval_type_id": EVAL_TYPE_ID_CORE,
        "eval_config": dict(eval_config or {}),
        "eval_id": str(uuid.uuid4()),
        "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": _finite(clean),
        "eval_result_details": details or [],
        "sae_cfg_dict": dict(sae_cfg or {}),
        "eval_result_unstructured": None,
    }


def _finite(value: Any) -> Any:
    """NaN / inf -> None (JSON null), recursively: SAEBench files hold no NaN."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_core_eval(path: str | Path, metrics_by_category: Mapping[str, Any], **kw: Any) -> Path:
    """Write eval_core.json (to `path`, or into it when it is a directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / CORE_FILE
    path.write_text(json.dumps(core_eval_json(metrics_by_category, **kw), indent=2) + "\n")
    return path
