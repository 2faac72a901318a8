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

from sae_hooks import metrics
from sae_hooks.devices import sae_device_dtype
from sae_hooks.eval.downstream import Downstream
from sae_hooks.eval.engine import SPLICED, ZERO, Batch, Subject, run_pass
from sae_hooks.eval.reconstruction import (
    ReconstructionResult,
    RowStats,
    reconstruction_result,
)
from sae_hooks.model_outputs import model_kind
from sae_hooks.sae.modes import eval_mode

EVAL_TYPE_ID_CORE = "core"
CORE_FILE = "eval_core.json"


class ShapeStats:
    """Running sums of SAEBench's per-row means (cosine, norms, shrinkage, L1) beyond what
    `RowStats` holds (FVU, MSE, firing)."""

    outputs = frozenset()

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.rows = 0
        self.dims = 0

    def update(self, batch: Batch) -> None:
        x, x_hat = batch.y.double().cpu(), batch.out.x_hat.float().double().cpu()
        z = batch.out.z.float().cpu()
        n_in, n_out = x.norm(dim=-1), x_hat.norm(dim=-1)
        parts = {
            "cossim": torch.nn.functional.cosine_similarity(x, x_hat, dim=-1),
            "l2_norm_in": n_in,
            "l2_norm_out": n_out,
            "l2_ratio": n_out / n_in.clamp_min(1e-12),
            "out_sq": n_out.pow(2),
            "dot": (x * x_hat).sum(-1),
            "l1": z.abs().sum(-1).double(),
        }
        for key, values in parts.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(values.sum())
        self.rows += x.shape[0]
        self.dims = x.shape[-1]


def row_categories(sae: nn.Module, rows: RowStats, shape: ShapeStats) -> dict[str, dict]:
    """The reconstruction / shrinkage / sparsity / misc categories of one subject."""
    n = max(shape.rows, 1)
    mean = {k: v / n for k, v in shape.sums.items()}
    density = rows.firing.density.cpu()
    total = float(density.sum()) or math.nan
    enc, dec = _encoder_weight(sae), _decoder_weight(sae)
    return {
        "reconstruction_quality": {
            "explained_variance": metrics.explained_variance(rows.sos.fvu),
            "mse": rows.sos.mse / max(shape.dims, 1),
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
        "sparsity": {"l0": rows.firing.l0, "l1": mean["l1"]},
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
    rows, shape = RowStats(sae), ShapeStats()
    with eval_mode(sae):
        for x in batches:
            x = x.reshape(-1, x.shape[-1]).to(device)
            batch = Batch({}, x, x, sae(x.to(dtype=dtype)))
            rows.update(batch)
            shape.update(batch)
    if rows.n_rows == 0:
        raise ValueError("core_metrics_from_rows: the held-out data yielded no rows")
    return {**_no_logits(), **row_categories(sae, rows, shape)}


def _nulls(*keys: str) -> dict[str, None]:
    return dict.fromkeys(keys)


def downstream_categories(down: Downstream) -> dict[str, dict[str, float | None]]:
    """SAEBench's model_behavior / model_performance categories from a pass's sums: KL with
    the SAE spliced and with the activation zeroed; next-token CE for causal LMs only."""
    kl_sae, kl_zero = down.mean("kl_spliced"), down.mean("kl_zero")
    behaviour = {
        "kl_div_score": (kl_zero - kl_sae) / kl_zero if kl_zero > 0 else math.nan,
        "kl_div_with_ablation": kl_zero,
        "kl_div_with_sae": kl_sae,
    }
    if down.kind != "lm":
        return {
            "model_behavior_preservation": behaviour,
            "model_performance_preservation": _nulls(
                "ce_loss_score",
                "ce_loss_with_ablation",
                "ce_loss_with_sae",
                "ce_loss_without_sae",
            ),
        }
    clean, with_sae = down.mean("ce_clean"), down.mean("ce_spliced")
    zero = down.mean("ce_zero")
    return {
        "model_behavior_preservation": behaviour,
        "model_performance_preservation": {
            "ce_loss_score": metrics.loss_recovered(clean, with_sae, zero),
            "ce_loss_with_ablation": zero,
            "ce_loss_with_sae": with_sae,
            "ce_loss_without_sae": clean,
        },
    }


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
    logits = () if kind == "encoder" else (SPLICED, ZERO)
    rows, shape, down = RowStats(sae), ShapeStats(), Downstream(kind, logits, logits)
    subject = Subject(sae, point, [rows, shape, down])
    opts = dict(max_batches=max_batches, drop_bos=drop_bos, progress=False, caller="evaluate_core")
    if run_pass(model, [subject], data, **opts) == 0:
        raise ValueError("evaluate_core: the held-out data yielded no batches")
    return core_categories(sae, rows, shape, down)


def core_categories(
    sae: nn.Module, rows: RowStats, shape: ShapeStats, down: Downstream
) -> dict[str, dict]:
    """Every SAEBench core category from one subject's accumulators."""
    head = _no_logits() if down.kind == "encoder" else downstream_categories(down)
    return {**head, **row_categories(sae, rows, shape)}


def evaluate_reconstruction_and_core(
    model: nn.Module,
    point: str,
    sae: nn.Module,
    data: Iterable[Mapping[str, Tensor]],
    *,
    max_batches: int | None = None,
    dense_above: float = 0.1,
    drop_bos: bool = False,
    progress: bool = True,
) -> tuple[ReconstructionResult, dict[str, dict]]:
    """`evaluate_reconstruction` and `evaluate_core` of `sae` spliced at `point` from ONE
    pass over `data`: the same numbers as the two calls, with 4 model forwards per batch
    (clean, spliced, zeroed, mean) instead of 4 + 3."""
    kind = model_kind(model)
    rows, shape, down = RowStats(sae), ShapeStats(), Downstream(kind, kl=(SPLICED, ZERO))
    subject = Subject(sae, point, [rows, shape, down])
    caller = "evaluate_reconstruction"
    opts = dict(max_batches=max_batches, drop_bos=drop_bos, progress=progress, caller=caller)
    if run_pass(model, [subject], data, **opts) == 0:
        raise ValueError("evaluate_reconstruction: the data source yielded no batches")
    result = reconstruction_result(point, kind, rows, down, dense_above)
    return result, core_categories(sae, rows, shape, down)


def _no_logits() -> dict[str, dict[str, None]]:
    return {
        "model_behavior_preservation": _nulls("kl_div_score", "kl_div_with_ablation"),
        "model_performance_preservation": _nulls("ce_loss_score", "ce_loss_with_ablation"),
    }


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
