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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sae_hooks.atomic import write_text_atomic
from sae_hooks.concepts import Concept, text_examples
from sae_hooks.eval import AblationResult, ReconstructionResult, concept_ablation
from sae_hooks.eval.core import evaluate_reconstruction_and_core, write_core_eval
from sae_hooks.rundir import RunDir, cache_dir
from sae_hooks.runrecord import RunRecord, infer_model_record, tokenizer_record, write_run_record
from sae_hooks.sae import load_sae
from sae_hooks.store import capture_to_store
from sae_hooks.train import TrainConfig, train
from sae_hooks.train.diagnostics import logged_warnings

Batches = Iterable[Mapping[str, torch.Tensor]]
__all__ = [
    "Concept",
    "PipelineResult",
    "cache_dir",
    "run_dir_for",
    "run_pipeline",
    "text_examples",  # kept here for callers from before sae_hooks.concepts
]


def run_dir_for(name: str, root: str | os.PathLike | None = None) -> Path:
    """cache/<name>, refusing names that would escape the cache directory."""
    return RunDir.named(name, root).root


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
        lines += [f"warning: {w}" for w in logged_warnings(RunDir(self.run_dir).sae_home())]
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
    record: RunRecord | None = None,
    corpus: Mapping[str, Any] | None = None,
    images: Any = None,
) -> PipelineResult:
    """Capture `point` over `data`, train an SAE on it, evaluate it spliced, ablate a concept.

    run_dir/run.json records the model, tokenizer, point and corpus (`record`, else
    inferred from the model and tokenizer objects, with `corpus` such as {"data": "pydoc",
    "context_length": 128, "split": ...}) so the CLI's eval/ablate/report need only run_dir.
    images: the pixels of an image `data` by document index (its ImageBatches), drawn
    under the dashboard's patch grids.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_record(
        run_dir,
        record or _inferred_record(model, tokenizer, point, model_name, source, corpus, drop_bos),
    )
    timings: dict[str, float] = {}
    with _timed(timings, "capture"):
        store = capture_to_store(
            model,
            [point],
            data,
            str(RunDir(run_dir).store),
            dtype=store_dtype,
            max_rows=max_rows,
            model_name=model_name,
            source=source,
            vit_tokens=vit_tokens,
            drop_bos=drop_bos,
            progress=progress,
        )
    with _timed(timings, "train"):
        sae, resolved = _train_step(config, store, point, run_dir, progress)
    with _timed(timings, "eval"):
        result = _eval_step(model, point, sae, resolved, eval_data, run_dir, drop_bos, progress)
    ablation = _maybe_ablate(model, point, sae, concept, run_dir, progress, timings)
    out = PipelineResult(run_dir, store.n_rows, resolved, result, ablation, timings=timings)
    shown = {"tokenizer": tokenizer, "unembed": unembed, "images": images}
    return _finish(out, store, point, concept, report, shown, progress)


def _finish(
    out: PipelineResult,
    store: Any,
    point: str,
    concept: Concept | None,
    report: bool,
    shown: Mapping[str, Any],
    progress: bool,
) -> PipelineResult:
    """Name the ablated concept, build the dashboard (if `report`), then write
    run_dir/summary.txt last, so the summary on disk matches the one returned."""
    if concept is not None:
        out.concept, out.target_name = concept.name, concept.target_name
    if report:
        out.report = _build_report(
            out.run_dir, store, point, shown, out.ablation, concept, progress
        )
    RunDir(out.run_dir).summary.write_text(out.summary() + "\n")
    return out


def _maybe_ablate(
    model: nn.Module,
    point: str,
    sae: nn.Module,
    concept: Concept | None,
    run_dir: Path,
    progress: bool,
    timings: dict[str, float],
) -> AblationResult | None:
    """The ablation step, timed, only when a concept is given: the timings then list
    only the steps that ran."""
    if concept is None:
        return None
    with _timed(timings, "ablation"):
        return _ablation_step(model, point, sae, concept, run_dir, progress)


def _eval_step(model, point, sae, resolved, eval_data, run_dir, drop_bos, progress):
    """Both evaluations of the spliced SAE from one pass over eval_data, written to run_dir
    (eval.json and the core eval) so the CLI's report can read them without rerunning
    the model."""
    result, core = evaluate_reconstruction_and_core(
        model, point, sae, eval_data, drop_bos=drop_bos, progress=progress
    )
    write_text_atomic(RunDir(run_dir).eval_file(), result.to_json())
    write_core_eval(run_dir, core, sae_cfg=resolved.to_dict())
    return result


@contextlib.contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    """Record the wall-clock seconds of one step under `step` (only when it finishes)."""
    t0 = time.perf_counter()
    yield
    timings[step] = time.perf_counter() - t0


def _train_step(
    config: TrainConfig, store: Any, point: str, run_dir: Path, progress: bool
) -> tuple[nn.Module, TrainConfig]:
    """Train (or resume, or skip when finished), then load the saved SAE and its resolved config.

    The SAE comes back from disk, so a run that was already trained evaluates the same
    weights as one trained just now.
    """
    config = TrainConfig.from_dict({**config.to_dict(), "point": point, "progress": progress})
    run = RunDir(run_dir)
    train(config, store, run.sae_home())
    sae = load_sae(run.sae_dir()).eval()
    return sae, TrainConfig.from_json(run.train_config())


def _inferred_record(model, tokenizer, point, model_name, source, corpus, drop_bos) -> RunRecord:
    """What run.json can say about a run made from objects rather than names."""
    mrec = infer_model_record(model, tokenizer, model_name)
    info = {"source": source, **dict(corpus or {})}
    info.setdefault("prepend_bos", drop_bos)
    return RunRecord(
        model=mrec,
        tokenizer=tokenizer_record(tokenizer, mrec.get("model_dir")),
        points=[point],
        corpus=info,
        created_by="sae_hooks.pipeline.run_pipeline",
    )


def _ablation_step(
    model: nn.Module,
    point: str,
    sae: nn.Module,
    concept: Concept,
    run_dir: Path,
    progress: bool = False,
) -> AblationResult:
    """Ablate the concept's latents; write ablation.json (and ablation.png with matplotlib)."""
    ablation = concept_ablation(
        model,
        point,
        sae,
        concept.positive,
        concept.negative,
        concept.target,
        m=concept.m,
        n_random=concept.n_random,
        progress=progress,
    )
    record = {"concept": concept.name, "target": concept.target_name, **ablation.to_dict()}
    write_text_atomic(RunDir(run_dir).ablation_file(), json.dumps(record, indent=2))
    with contextlib.suppress(ImportError):  # the plot needs matplotlib (extra "plots")
        ablation.plot(RunDir(run_dir).ablation_plot())
    return ablation


def _build_report(run_dir, store, point, shown, ablation, concept, progress) -> Path | None:
    """The HTML dashboard, when the report package can build one; `shown`: its tokenizer,
    unembed and images."""
    try:
        from sae_hooks.report import build_report
    except ImportError:
        return None
    ablations = None
    if ablation is not None:
        record = {"concept": concept.name, "target": concept.target_name, **ablation.to_dict()}
        ablations = [{**record, "file": RunDir.ABLATION}]
    return build_report(
        RunDir(run_dir).sae_home(),
        store=store,
        point=point,
        ablations=ablations,
        out=RunDir(run_dir).report_dir(),
        progress=progress,
        **shown,
    )
