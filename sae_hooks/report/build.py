"""build_report: a run directory in, run_dir/report/ (index.html, latent.html, ...) out."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sae_hooks.atomic import OutputKind, rebuilt_dir
from sae_hooks.report.circuit import CIRCUITS, circuit_pages
from sae_hooks.report.curves import LOG_FILE, plot_training
from sae_hooks.report.dashboard import build_dashboard
from sae_hooks.report.frontier import sweep_table
from sae_hooks.report.summary import read_run, run_ablations, train_dir_of
from sae_hooks.rundir import RunDir

SWEEP_TABLE = "sweep.md"


def _is_report(folder: Path) -> bool:
    index = folder / "data" / "index.js"
    return (folder / "index.html").is_file() and index.is_file() and _starts_as_ours(index)


def _starts_as_ours(index: Path) -> bool:
    from sae_hooks.report.site import PREFIX

    with index.open("rb") as f:
        return f.read(len(PREFIX)) == PREFIX.encode()


REPORT_KIND = OutputKind(
    "report",
    frozenset(
        {"index.html", "latent.html", "ablation.html", "assets", "data", "thumbs", CIRCUITS}
        | {"training.png", "sweep.png", SWEEP_TABLE}
    ),
    _is_report,
)
"""What a report folder holds: `--out` into anything else is refused, not overwritten."""


def build_report(
    run_dir: str | os.PathLike,
    *,
    store: Any = None,
    point: str | None = None,
    tokenizer: Any = None,
    unembed: Any = None,
    ablations: Any = None,
    images: Any = None,
    sweep: Sequence[Mapping[str, Any]] | None = None,
    out: str | os.PathLike | None = None,
    **dashboard: Any,
) -> Path:
    """Write the training curves and the feature dashboard of a run; return index.html.

    run_dir: a `train` run directory (log.jsonl, config.json, sae/) or a pipeline run
    directory (train/ next to eval.json, ablation.json, store/). The header names the
    run, reads eval.json and the log's warnings. store: the activations to show
    (ActivationStore or its location; default: the pipeline run's store/); point
    defaults to the run's own. images: the pixels of an image store (see
    `build_dashboard`). ablations default to the run's ablation.json. Without
    matplotlib the curves are skipped with a warning. Other keywords go to
    `build_dashboard` (latents, n_latents, n_examples, context, max_rows, progress).
    With `sweep`, the folder also gets sweep.md (the table of the sweep's SAEs).

    The report is built in a sibling folder and swapped in at the end (sae_hooks.atomic):
    an interrupted build leaves the previous report whole. An existing `out` that is not
    a report is refused (FileExistsError), never overwritten.
    """
    run = Path(run_dir)
    train = train_dir_of(run)
    top = RunDir.outputs_of(train)
    target = Path(out) if out is not None else top / RunDir.REPORT
    with rebuilt_dir(target, REPORT_KIND) as report:
        index = _write_report(
            train,
            top,
            report,
            store,
            sweep,
            ablations,
            point=point,
            tokenizer=tokenizer,
            unembed=unembed,
            images=images,
            **dashboard,
        )
    return target / index.name


def _write_report(
    train: Path, top: Path, report: Path, store: Any, sweep: Any, ablations: Any, **kw: Any
) -> Path:
    """Fill the (new, empty) folder `report`; return its index page."""
    from sae_hooks.sae import load_sae

    if sweep:
        (report / SWEEP_TABLE).write_text(sweep_table(sweep))
    png = None
    if (train / LOG_FILE).is_file():
        try:
            png = plot_training(train, report / "training.png")
        except (ImportError, ValueError) as err:
            warnings.warn(f"skipping the training curves: {err}", stacklevel=2)
    sae = load_sae(train / RunDir.SAE)
    info = read_run(train, sae.config() if hasattr(sae, "config") else None)
    if store is None and RunDir(top).store.is_dir():
        store = RunDir(top).store
    if ablations is None:
        ablations = run_ablations(top)
    point = kw.pop("point", None)
    circuit_pages(top, report)  # before the index, which links them
    return build_dashboard(
        sae,
        store,
        report / "index.html",
        point=point or info.point or None,
        ablations=ablations,
        sweep=sweep,
        training_png=png,
        run=info,
        **kw,
    )
