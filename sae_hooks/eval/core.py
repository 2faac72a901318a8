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
- reconstruction_quality: SAEBench 0.6's own definitions under its names (per batch b of
  N_b rows, B batches, d dimensions; S_b = mean_b ||x||^2, R_b = mean_b ||x - x_hat||^2):
  explained_variance = 1 - mean_b R_b / (mean_b S_b - (mean_b S_b / d)^2) (its formula
  squares the mean of squares where the squared mean belongs), explained_variance_legacy =
  E_rows [1 - ||x - x_hat||^2 / ||x - mean_b x||^2], mse = E_rows ||x - x_hat||^2 / N_b;
  ours beside them: explained_variance_sae_hooks = 1 - sum ||x - x_hat||^2 / sum ||x -
  mean x||^2 (around the mean of the whole set; = 1 - FVU of sae_hooks.metrics),
  mse_sae_hooks = mean over rows and dimensions of (x - x_hat)^2; cossim = E cos(x, x_hat).
- shrinkage: l2_norm_in = E ||x||, l2_norm_out = E ||x_hat||, l2_ratio = E ||x_hat|| / ||x||,
  relative_reconstruction_bias = mean over batches of E_b ||x_hat||^2 / E_b <x, x_hat>
  (SAEBench's; 1: unbiased), relative_reconstruction_bias_sae_hooks: the same over the set.
- sparsity: l0 = E #{z_i != 0}, l1 = E sum |z_i|.
- misc_metrics: frac_alive (latents that fired at least once), freq_over_1_percent /
  _10_percent (share of latents firing on more than 1% / 10% of rows), normalized_...
  (the share of all firings those latents account for), average_max_encoder_cosine_sim /
  _decoder_ (mean over latents of the largest cosine with another latent's row).
- token_stats: total_tokens_eval_reconstruction (tokens KL / CE were measured on; 0 where
  none were), total_tokens_eval_sparsity_variance (rows measured).

Every key is always there; a value that is not defined here (KL / CE of an encoder) is
None in memory and -1 in eval_core.json (SAEBench's schema wants a number; -1 is its own
code's stand-in for NaN), with the dotted key listed in
`eval_result_unstructured["sae_hooks"]["no_value"]`; `read_core_eval` gives the None back.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sae_hooks import metrics
from sae_hooks.devices import sae_device_dtype
from sae_hooks.eval.core_latents import LatentStats, latent_details, max_cosine
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
NO_VALUE = -1
"""What eval_core.json holds where a metric has no value (SAEBench's stand-in for NaN)."""

CATEGORY_KEYS = {
    "model_behavior_preservation": ("kl_div_score", "kl_div_with_ablation", "kl_div_with_sae"),
    "model_performance_preservation": (
        "ce_loss_score",
        "ce_loss_with_ablation",
        "ce_loss_with_sae",
        "ce_loss_without_sae",
    ),
}
"""The downstream categories' keys (SAEBench requires every one)."""


class CoreMetrics(dict):
    """The metric categories (a plain dict of dicts, as SAEBench lays them out) with what
    eval_core.json holds beside them: the per-latent `details` and the `config` the pass
    ran with (SAEBench's CoreEvalConfig keys)."""

    def __init__(
        self,
        categories: Mapping[str, Any],
        details: list[dict[str, Any]] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(categories)
        self.details = list(details or [])
        self.config = dict(config or {})


class ShapeStats:
    """Running sums of SAEBench's per-row means (cosine, norms, shrinkage, L1) beyond what
    `RowStats` holds (FVU, MSE, firing), and of its per-batch terms (its MSE, explained
    variances and reconstruction bias are defined per batch)."""

    outputs = frozenset()

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.batch_sums: dict[str, float] = {}
        self.rows = 0
        self.batches = 0
        self.dims = 0

    def update(self, batch: Batch) -> None:
        x, x_hat = batch.y.double().cpu(), batch.out.x_hat.float().double().cpu()
        z = batch.out.z.float().cpu()
        n_in, n_out = x.norm(dim=-1), x_hat.norm(dim=-1)
        resid = (x - x_hat).pow(2).sum(-1)
        dot = (x * x_hat).sum(-1)
        parts = {
            "cossim": torch.nn.functional.cosine_similarity(x, x_hat, dim=-1),
            "l2_norm_in": n_in,
            "l2_norm_out": n_out,
            "l2_ratio": n_out / n_in.clamp_min(1e-12),
            "out_sq": n_out.pow(2),
            "dot": dot,
            "l1": z.abs().sum(-1).double(),
            "saebench_mse": resid / x.shape[0],
            "saebench_ev_legacy": 1 - resid / (x - x.mean(0)).pow(2).sum(-1),
        }
        for key, values in parts.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(values.sum())
        per_batch = {
            "x_sq": float(n_in.pow(2).mean()),
            "resid": float(resid.mean()),
            "rrb": float(n_out.pow(2).mean() / dot.mean()) if float(dot.mean()) else math.nan,
        }
        for key, value in per_batch.items():
            self.batch_sums[key] = self.batch_sums.get(key, 0.0) + value
        self.rows += x.shape[0]
        self.batches += 1
        self.dims = x.shape[-1]

    def saebench_explained_variance(self) -> float:
        """SAEBench 0.6's `explained_variance`: 1 - mean_b R_b / (mean_b S_b - (mean_b S_b /
        d)^2), S_b = E_b ||x||^2, R_b = E_b ||x - x_hat||^2 (its `mean_act_per_dimension` is
        the mean of x^2, so the subtracted term is the squared mean of squares)."""
        b = max(self.batches, 1)
        s, r = self.batch_sums["x_sq"] / b, self.batch_sums["resid"] / b
        total = s - (s / max(self.dims, 1)) ** 2
        return 1 - r / total if total else math.nan


def row_categories(sae: nn.Module, rows: RowStats, shape: ShapeStats) -> dict[str, dict]:
    """The reconstruction / shrinkage / sparsity / misc categories of one subject."""
    n = max(shape.rows, 1)
    mean = {k: v / n for k, v in shape.sums.items()}
    density = rows.firing.density.cpu()
    total = float(density.sum()) or math.nan
    ours_rrb = mean["out_sq"] / mean["dot"] if mean["dot"] else math.nan
    return {
        "reconstruction_quality": {
            "explained_variance": shape.saebench_explained_variance(),
            "explained_variance_legacy": mean["saebench_ev_legacy"],
            "mse": mean["saebench_mse"],
            "cossim": mean["cossim"],
            "explained_variance_sae_hooks": metrics.explained_variance(rows.sos.fvu),
            "mse_sae_hooks": rows.sos.mse / max(shape.dims, 1),
        },
        "shrinkage": {
            "l2_norm_in": mean["l2_norm_in"],
            "l2_norm_out": mean["l2_norm_out"],
            "l2_ratio": mean["l2_ratio"],
            "relative_reconstruction_bias": shape.batch_sums["rrb"] / max(shape.batches, 1),
            "relative_reconstruction_bias_sae_hooks": ours_rrb,
        },
        "sparsity": {"l0": rows.firing.l0, "l1": mean["l1"]},
        "misc_metrics": {
            "freq_over_1_percent": float((density > 0.01).float().mean()),
            "freq_over_10_percent": float((density > 0.1).float().mean()),
            "normalized_freq_over_1_percent": float(density[density > 0.01].sum()) / total,
            "normalized_freq_over_10_percent": float(density[density > 0.1].sum()) / total,
            "average_max_encoder_cosine_sim": _mean_max_cosine(_encoder_weight(sae)),
            "average_max_decoder_cosine_sim": _mean_max_cosine(_decoder_weight(sae)),
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
    return float(max_cosine(rows).mean())


def token_stats(shape: ShapeStats, down: Downstream | None) -> dict[str, dict[str, int]]:
    """SAEBench's token_stats: tokens KL / CE were measured on, rows measured."""
    downstream = 0 if down is None else int(down.counts.get("kl_spliced", 0))
    return {
        "token_stats": {
            "total_tokens_eval_reconstruction": downstream,
            "total_tokens_eval_sparsity_variance": shape.rows,
        }
    }


def run_config(kind: str, n_batches: int, drop_bos: bool) -> dict[str, Any]:
    """SAEBench's CoreEvalConfig keys that say what this pass measured."""
    return {
        "n_eval_reconstruction_batches": n_batches if kind != "encoder" else 0,
        "n_eval_sparsity_variance_batches": n_batches,
        "compute_kl": kind != "encoder",
        "compute_ce_loss": kind == "lm",
        "compute_l2_norms": True,
        "compute_sparsity_metrics": True,
        "compute_variance_metrics": True,
        "compute_featurewise_density_statistics": True,
        "compute_featurewise_weight_based_metrics": True,
        "exclude_special_tokens_from_reconstruction": drop_bos,
    }


@torch.no_grad()
def core_metrics_from_rows(sae: nn.Module, batches: Iterable[Tensor]) -> CoreMetrics:
    """The reconstruction / shrinkage / sparsity / misc categories on held-out rows
    (no model: for stores and synthetic data; KL / CE None). The SAE runs in eval mode.
    SAEBench's per-batch metrics take each given batch as one of its batches."""
    device, dtype = sae_device_dtype(sae)
    rows, shape, latents = RowStats(sae), ShapeStats(), LatentStats()
    with eval_mode(sae):
        for x in batches:
            x = x.reshape(-1, x.shape[-1]).to(device)
            batch = Batch({}, x, x, sae(x.to(dtype=dtype)))
            for acc in (rows, shape, latents):
                acc.update(batch)
    if rows.n_rows == 0:
        raise ValueError("core_metrics_from_rows: the held-out data yielded no rows")
    categories = {**_no_logits(), **row_categories(sae, rows, shape), **token_stats(shape, None)}
    config = run_config("encoder", shape.batches, False)
    return CoreMetrics(categories, latent_details(sae, latents), config)


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
        performance = _nulls(*CATEGORY_KEYS["model_performance_preservation"])
        return {
            "model_behavior_preservation": behaviour,
            "model_performance_preservation": performance,
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
) -> CoreMetrics:
    """SAEBench core metrics of `sae` spliced at `point` over held-out `data` (batches of
    model inputs). KL and CE need a model with logits; an encoder (no logits) gets None
    there, as do CE scores of a classifier. The SAE runs in eval mode."""
    kind = model_kind(model)
    logits = () if kind == "encoder" else (SPLICED, ZERO)
    rows, shape, down = RowStats(sae), ShapeStats(), Downstream(kind, logits, logits)
    latents = LatentStats()
    subject = Subject(sae, point, [rows, shape, down, latents])
    opts = dict(max_batches=max_batches, drop_bos=drop_bos, progress=False, caller="evaluate_core")
    n_batches = run_pass(model, [subject], data, **opts)
    if n_batches == 0:
        raise ValueError("evaluate_core: the held-out data yielded no batches")
    return core_categories(sae, rows, shape, down, latents, run_config(kind, n_batches, drop_bos))


def core_categories(
    sae: nn.Module,
    rows: RowStats,
    shape: ShapeStats,
    down: Downstream,
    latents: LatentStats | None = None,
    config: Mapping[str, Any] | None = None,
) -> CoreMetrics:
    """Every SAEBench core category from one subject's accumulators (with the per-latent
    details when `latents` is given)."""
    head = _no_logits() if down.kind == "encoder" else downstream_categories(down)
    categories = {**head, **row_categories(sae, rows, shape), **token_stats(shape, down)}
    details = latent_details(sae, latents) if latents is not None else []
    return CoreMetrics(categories, details, config)


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
) -> tuple[ReconstructionResult, CoreMetrics]:
    """`evaluate_reconstruction` and `evaluate_core` of `sae` spliced at `point` from ONE
    pass over `data`: the same numbers as the two calls, with 4 model forwards per batch
    (clean, spliced, zeroed, mean) instead of 4 + 3."""
    kind = model_kind(model)
    rows, shape, down = RowStats(sae), ShapeStats(), Downstream(kind, kl=(SPLICED, ZERO))
    latents = LatentStats()
    subject = Subject(sae, point, [rows, shape, down, latents])
    caller = "evaluate_reconstruction"
    opts = dict(max_batches=max_batches, drop_bos=drop_bos, progress=progress, caller=caller)
    n_batches = run_pass(model, [subject], data, **opts)
    if n_batches == 0:
        raise ValueError("evaluate_reconstruction: the data source yielded no batches")
    result = reconstruction_result(point, kind, rows, down, dense_above)
    config = run_config(kind, n_batches, drop_bos)
    return result, core_categories(sae, rows, shape, down, latents, config)


def _no_logits() -> dict[str, dict[str, None]]:
    return {category: _nulls(*keys) for category, keys in CATEGORY_KEYS.items()}


def core_eval_json(
    metrics_by_category: Mapping[str, Any],
    *,
    eval_config: Mapping[str, Any] | None = None,
    sae_cfg: Mapping[str, Any] | None = None,
    details: list[dict[str, Any]] | None = None,
    sae_lens_id: str | None = None,
    sae_lens_release_id: str | None = None,
    sae_lens_version: str | None = None,
) -> dict[str, Any]:
    """The SAEBench core-eval output object around the metric categories (SAEBench 0.6's
    eval_output_schema_core.json). `details` and the config default to those a
    `CoreMetrics` carries. No SAEBench ran it: `sae_bench_commit_hash` names sae-hooks."""
    clean = json.loads(
        json.dumps(metrics_by_category, default=float), parse_constant=lambda _: None
    )
    no_value: list[str] = []
    if details is None:
        details = getattr(metrics_by_category, "details", [])
    config = {**getattr(metrics_by_category, "config", {}), **dict(eval_config or {})}
    version = _version()
    return {
        "eval_type_id": EVAL_TYPE_ID_CORE,
        "eval_config": config,
        "eval_id": str(uuid.uuid4()),
        "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": _numbers(clean, no_value),
        "eval_result_details": [_numbers(d, []) for d in details],
        "sae_bench_commit_hash": f"none (written by sae-hooks {version})",
        "sae_lens_id": sae_lens_id,
        "sae_lens_release_id": sae_lens_release_id,
        "sae_lens_version": sae_lens_version,
        "sae_cfg_dict": dict(sae_cfg or {}),
        "eval_result_unstructured": {"sae_hooks": {"version": version, "no_value": no_value}},
    }


def _version() -> str:
    try:
        return metadata.version("sae-hooks")
    except metadata.PackageNotFoundError:
        return "unknown"


def _numbers(value: Any, no_value: list[str], key: str = "") -> Any:
    """None / NaN / inf -> NO_VALUE, recursively, each such dotted key noted in `no_value`:
    SAEBench's schema wants a number for every metric and its files hold no NaN."""
    if isinstance(value, dict):
        return {k: _numbers(v, no_value, f"{key}.{k}" if key else k) for k, v in value.items()}
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        no_value.append(key)
        return NO_VALUE
    return value


def write_core_eval(path: str | Path, metrics_by_category: Mapping[str, Any], **kw: Any) -> Path:
    """Write eval_core.json (to `path`, or into it when it is a directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / CORE_FILE
    path.write_text(json.dumps(core_eval_json(metrics_by_category, **kw), indent=2) + "\n")
    return path


def read_core_eval(path: str | Path) -> CoreMetrics:
    """The metric categories of an eval_core.json (a directory holding one, or the file),
    with None back where sae-hooks wrote -1 for "no value"; details and config with them."""
    path = Path(path)
    data = json.loads((path / CORE_FILE if path.is_dir() else path).read_text())
    categories = data.get("eval_result_metrics", {})
    extra = data.get("eval_result_unstructured") or {}
    for dotted in (extra.get("sae_hooks") or {}).get("no_value", []):
        *parents, leaf = dotted.split(".")
        node = categories
        for part in parents:
            node = node.get(part, {})
        if leaf in node:
            node[leaf] = None
    return CoreMetrics(categories, data.get("eval_result_details"), data.get("eval_config"))
