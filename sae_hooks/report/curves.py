"""Training curves from a run's log.jsonl: one PNG to see how a run went.

Tolerant of what a log holds: panels whose metrics never appear are left out,
null (non-finite) values are gaps, validation records ("val/..." keys, no
"tokens") are placed by their step. Uses matplotlib's object API with the Agg
canvas, so it never switches the backend of a notebook or GUI session.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from sae_hooks.train.runlog import LOG_FILE  # noqa: F401 - re-exported for report.build
from sae_hooks.train.runlog import read_log as read_records

# (title, train keys, log-scale y when all positive)
PANELS: list[tuple[str, list[str], bool]] = [
    ("loss", ["loss", "aux_loss"], True),
    ("FVU", ["fvu"], True),
    ("L0 (active latents per token)", ["l0"], False),
    ("latent health", ["dead_fraction", "dense_fraction"], False),
    ("learning rate", ["lr"], False),
]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _tokens_per_step(records: list[dict[str, Any]]) -> float | None:
    for r in records:
        tokens, step = _number(r.get("tokens")), _number(r.get("step"))
        if tokens and step:
            return tokens / step
    return None


def series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float], str]:
    """(x, y, x label) of one metric: x in tokens when the log says how many, else steps."""
    per_step = _tokens_per_step(records)
    xs, ys = [], []
    for r in records:
        y = _number(r.get(key))
        if y is None:
            continue
        x = _number(r.get("tokens"))
        if x is None and (step := _number(r.get("step"))) is not None:
            x = step * per_step if per_step else step
        if x is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys, "tokens" if per_step else "step"


def _require_matplotlib():
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import EngFormatter
    except ImportError as err:
        raise ImportError(
            "training plots need matplotlib: pip install matplotlib "
            "(or pip install 'sae-hooks[plots]')"
        ) from err
    return Figure, EngFormatter


def plot_training(
    run_dir_or_log: str | os.PathLike, out_png: str | os.PathLike, *, dpi: int = 110
) -> Path:
    """Loss, FVU, L0, dead/dense fraction and lr against tokens; validation points overlaid."""
    records = read_records(run_dir_or_log)
    panels = []
    for title, keys, log_y in PANELS:
        lines = []
        for key in keys:
            for name, style in ((key, "-"), (f"val/{key}", "o")):
                xs, ys, x_label = series(records, name)
                if xs:
                    lines.append((name, style, xs, ys, x_label))
        if not lines:
            continue
        if log_y and all(y > 0 for y in lines[0][3]):  # log scale: drop what it cannot show
            lines = [
                (n, st, [x for x, y in zip(xs, ys) if y > 0], [y for y in ys if y > 0], xl)
                for n, st, xs, ys, xl in lines
            ]
            lines = [line for line in lines if line[2]]
        else:
            log_y = False
        panels.append((title, lines, log_y))
    if not panels:
        found = sorted({k for r in records for k in r})
        raise ValueError(
            f"{run_dir_or_log}: the log holds no plottable metric (found keys {found}); "
            f"expected some of {[k for _, keys, _ in PANELS for k in keys]}"
        )
    Figure, EngFormatter = _require_matplotlib()
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten()
    for ax, (title, lines, log_y) in zip(axes, panels):
        for name, style, xs, ys, x_label in lines:
            if style == "o":
                ax.plot(xs, ys, "o", ms=4, label=name, zorder=3)
            else:
                ax.plot(xs, ys, "-", lw=1.2, label=name)
            ax.set_xlabel(x_label)
            ax.xaxis.set_major_formatter(EngFormatter())  # 200k, not 200000
        if log_y:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=8)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png")
    return out
