"""build_report: a run directory in, run_dir/report/{index.html, training.png} out."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from sae_hooks.report.curves import LOG_FILE, plot_training
from sae_hooks.report.dashboard import build_dashboard


def _run_point(run_dir: Path) -> str | None:
    """The hook point the run trained on, from its config.json (None if unknown)."""
    config = run_dir / "config.json"
    if not config.is_file():
        return None
    point = json.loads(config.read_text()).get("point")
    return point if isinstance(point, str) else None


def build_report(
    run_dir: str | os.PathLike,
    *,
    store: Any = None,
    point: str | None = None,
    tokenizer: Any = None,
    unembed: Any = None,
    ablations: Any = None,
    out: str | os.PathLike | None = None,
    **dashboard: Any,
) -> Path:
    """Write the training curves and the feature dashboard of a run; return index.html.

    run_dir holds log.jsonl and the trained SAE in sae/ (as `train` leaves them).
    store: the activations to show (ActivationStore or its location); point defaults
    to the run's own. Without matplotlib the curves are skipped with a warning.
    Other keywords go to `build_dashboard` (latents, n_latents, n_examples, context,
    images, max_rows, progress).
    """
    from sae_hooks.sae import load_sae

    run = Path(run_dir)
    if not (run / "sae").is_dir():
        raise FileNotFoundError(
            f"{run} has no trained SAE in sae/: pass the run directory that train() wrote"
        )
    report = Path(out) if out is not None else run / "report"
    report.mkdir(parents=True, exist_ok=True)
    png = None
    if (run / LOG_FILE).is_file():
        try:
            png = plot_training(run, report / "training.png")
        except ImportError as err:
            warnings.warn(f"skipping the training curves: {err}", stacklevel=2)
    point = point or _run_point(run)
    return build_dashboard(
        load_sae(run / "sae"),
        store,
        report / "index.html",
        point=point,
        tokenizer=tokenizer,
        unembed=unembed,
        ablations=ablations,
        training_png=png,
        title=f"SAE report: {run.resolve().name}",
        **dashboard,
    )
