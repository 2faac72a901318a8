"""The whole path in one call: capture -> store -> train -> splice/eval -> ablation -> report.

Recipes and the CLI are thin layers over `run_pipeline`. Every step resumes: a
finished store is not captured again, a finished training run is not trained
again, so re-running a recipe after an interruption continues where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sae_hooks.eval import (
    AblationResult,
    ReconstructionResult,
    concept_ablation,
    evaluate_reconstruction,
)
from sae_hooks.eval.ablation import Target
from sae_hooks.sae import load_sae
from sae_hooks.store import capture_to_store
from sae_hooks.train import TrainConfig, train

Batches = Iterable[Mapping[str, torch.Tensor]]


def cache_dir() -> Path:
    """Where runs live by default: $SAE_HOOKS_CACHE, else ./cache."""
    return Path(os.environ.get("SAE_HOOKS_CACHE", "cache"))


def run_dir_for(name: str, root: str | os.PathLike | None = None) -> Path:
    """cache/<name>, refusing names that would escape the cache directory."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(
            f"run name {name!r} must be a plain directory name (no '/', not starting with '.')"
        )
    return Path(root) / name if root is not None else cache_dir() / name


@dataclass
class Concept:
    """A concept given by examples, and what its ablation should move."""

    name: str
    positive: Sequence[Mapping[str, torch.Tensor]]
    negative: Sequence[Mapping[str, torch.Tensor]]
    target: Target
    target_name: str
    m: int = 8
    n_random: int = 8


@dataclass
class PipelineResult:
    run_dir: Path
    rows: int
    config: TrainConfig
    eval: ReconstructionResult
    ablation: AblationResult | None = None
    concept: str | None = None
    target_name: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    report: Path | None = None

    def summary(self) -> str:
        """The readable end-of-run summary the recipes print."""
        e = self.eval
        k = f", k={self.config.k_per_token}/token" if self.config.k_per_token else ""
        rows = [
            ("run directory", str(self.run_dir)),
            ("rows captured", f"{self.rows:,} at {e.point}"),
            ("SAE", f"{self.config.architecture}, {self.config.nb_concepts:,} latents{k}"),
            ("FVU", f"{e.fvu:.4f}  (explained variance {e.explained_variance:.2%})"),
            ("L0", f"{e.l0:.1f}"),
            ("dead latents", f"{e.dead_fraction:.2%}  (dense: {e.dense_fraction:.2%})"),
        ]
        labels = {
            "cosine": "embedding cosine, spliced vs clean",
            "cosine_zero_ablated": "embedding cosine, layer zeroed",
            "cosine_recovered": "embedding cosine recovered",
            "ce_clean": "CE clean",
            "ce_spliced": "CE spliced",
            "loss_recovered": "loss recovered (vs zero-ablation)",
            "kl_clean_spliced": "KL(clean || spliced)",
            "top1_agreement": "top-1 agreement with clean",
        }
        rows += [
            (label, f"{e.downstream[key]:.4f}")
            for key, label in labels.items()
            if key in e.downstream
        ]
        rows.append(("time", ", ".join(f"{k} {v:.0f}s" for k, v in self.timings.items())))
        width = max(len(label) for label, _ in rows) + 2
        lines = [f"{label:<{width}}{value}" for label, value in rows]
        if self.ablation is not None:
            lines += [
                "",
                f"Concept ablation: {self.concept!r}; target: {self.target_name}",
                self.ablation.table(),
            ]
        if self.report is not None:
            lines += ["", f"dashboard: {self.report}"]
        return "\n".join(lines)


def run_pipeline(
    model: nn.Module,
    point: str,
    data: Batches,
    eval_data: Sequence[Mapping[str, torch.Tensor]],
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    concept: Concept | None = None,
    store_dtype: str = "float32",
    max_rows: int | None = None,
    model_name: str | None = None,
    source: str | None = None,
    vit_tokens: str = "all",
    drop_bos: bool = False,
    report: bool = True,
    tokenizer: Any = None,
    unembed: torch.Tensor | None = None,
    progress: bool = True,
) -> PipelineResult:
    """Capture `point` over `data`, train an SAE on it, evaluate it spliced, ablate a concept."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    store = capture_to_store(
        model,
        [point],
        data,
        str(run_dir / "store"),
        dtype=store_dtype,
        max_rows=max_rows,
        model_name=model_name,
        source=source,
        vit_tokens=vit_tokens,
        drop_bos=drop_bos,
        progress=progress,
    )
    timings["capture"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    config = TrainConfig.from_dict({**config.to_dict(), "point": point, "progress": progress})
    sae = train(config, store, run_dir / "train")
    timings["train"] = time.perf_counter() - t0
    sae = load_sae(run_dir / "train" / "sae").eval()
    resolved = TrainConfig.from_json(run_dir / "train" / "config.json")

    t0 = time.perf_counter()
    result = evaluate_reconstruction(
        model, point, sae, eval_data, drop_bos=drop_bos, progress=progress
    )
    (run_dir / "eval.json").write_text(result.to_json())
    timings["eval"] = time.perf_counter() - t0

    ablation = None
    if concept is not None:
        t0 = time.perf_counter()
        ablation = concept_ablation(
            model,
            point,
            sae,
            concept.positive,
            concept.negative,
            concept.target,
            m=concept.m,
            n_random=concept.n_random,
        )
        record = {"concept": concept.name, "target": concept.target_name, **ablation.to_dict()}
        (run_dir / "ablation.json").write_text(json.dumps(record, indent=2))
        with contextlib.suppress(ImportError):  # the plot needs matplotlib (extra "plots")
            ablation.plot(run_dir / "ablation.png")
        timings["ablation"] = time.perf_counter() - t0

    out = PipelineResult(
        run_dir=run_dir,
        rows=store.n_rows,
        config=resolved,
        eval=result,
        ablation=ablation,
        concept=concept.name if concept else None,
        target_name=concept.target_name if concept else None,
        timings=timings,
    )
    if report:
        out.report = _build_report(
            run_dir, store, point, tokenizer, unembed, ablation, concept, progress
        )
    (run_dir / "summary.txt").write_text(out.summary() + "\n")
    return out


def _build_report(
    run_dir, store, point, tokenizer, unembed, ablation, concept, progress
) -> Path | None:
    """The HTML dashboard, when the report package can build one."""
    try:
        from sae_hooks.report import build_report
    except ImportError:
        return None
    ablations = None
    if ablation is not None:
        ablations = [{"concept": concept.name, **ablation.to_dict()}]
    return build_report(
        run_dir / "train",
        store=store,
        point=point,
        tokenizer=tokenizer,
        unembed=unembed,
        ablations=ablations,
        out=run_dir / "report",
        progress=progress,
    )


def text_examples(
    texts: Sequence[str],
    tokenizer: Any,
    *,
    context_length: int,
    batch_size: int = 16,
    prepend_bos: bool = False,
) -> list[Mapping[str, torch.Tensor]]:
    """Concept examples: one truncated context per text, in padded batches."""
    from sae_hooks.data import text_batches

    if not texts:
        raise ValueError("a concept needs at least one positive and one negative example")
    return list(
        text_batches(
            list(texts),
            tokenizer,
            context_length=context_length,
            batch_size=batch_size,
            mode="truncate",
            prepend_bos=prepend_bos,
        )
    )
