"""The sweep frontier: one row of metrics per SAE of a sweep, and the L0 / fidelity plot.

`sweep_rows(sweep_dir)` reads run_dir/sweep.json (written by train_many) and, per
SAE, its eval.json when one exists (written by `evaluate_sweep`), else its last
validation metrics. L0 and FVU come from the eval when there is one, so every
point of a frontier is measured the same way. `plot_frontier` draws FVU against
L0, and loss recovered and KL against L0 when the SAEs were evaluated spliced.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sae_hooks.rundir import RunDir
from sae_hooks.train.many import SWEEP_FILE, read_sweep
from sae_hooks.train.variant_settings import flat_settings

PANELS = (("fvu", "FVU"), ("recovered", None), ("kl", "KL(clean || spliced)"))
# What "recovered" is, per model kind: the eval's downstream key.
RECOVERED = ("loss_recovered", "cosine_recovered", "top1_agreement")
_CONFIG_COLUMNS = ("point", "architecture", "nb_concepts", "k_per_token", "target_l0", "lr")


def is_sweep(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / SWEEP_FILE).is_file()


def sweep_rows(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """[{"name", "point", ..., "seed", "step", "l0", "fvu", "recovered", "kl", ...}].

    "recovered" is the eval's loss_recovered (LMs), cosine_recovered (encoders) or
    top1_agreement (classifiers), named by "recovered_is"."""
    root = Path(sweep_dir)
    rows = []
    for entry in read_sweep(root):
        cfg, metrics = flat_settings(entry.get("config", {})), entry.get("metrics", {})
        row: dict[str, Any] = {"name": entry["name"]}
        row.update({k: cfg.get(k) for k in _CONFIG_COLUMNS})
        row.update(seed=cfg.get("seed"), step=entry.get("step"))
        row["l0"] = metrics.get("val/l0", metrics.get("l0"))
        row["fvu"] = metrics.get("val/fvu", metrics.get("fvu"))
        row["dead_fraction"] = metrics.get("val/dead_fraction", metrics.get("dead_fraction"))
        row.update(recovered=None, recovered_is=None, kl=None, measured="validation")
        eval_file = root / entry["name"] / RunDir.EVAL
        if eval_file.is_file():
            ev = json.loads(eval_file.read_text())
            down = ev.get("downstream", {})
            row.update(l0=ev.get("l0"), fvu=ev.get("fvu"), dead_fraction=ev.get("dead_fraction"))
            key = next((k for k in RECOVERED if k in down), None)
            row.update(recovered=down.get(key), recovered_is=key)
            row["kl"] = down.get("kl_clean_spliced")
            row["measured"] = "eval"
        rows.append({k: _round(v) for k, v in row.items()})
    return rows


def _round(value: Any) -> Any:
    return round(value, 5) if isinstance(value, float) else value


MARKERS = "osD^vP*X"


def _groups(rows: Sequence[dict[str, Any]]) -> dict[tuple[Any, Any], list[dict[str, Any]]]:
    """Rows by (architecture, point): one colour and marker each; the point only
    splits groups when the sweep has several."""
    several = len({r.get("point") for r in rows}) > 1
    out: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r.get("architecture"), r.get("point") if several else None), []).append(r)
    return out


def _legend_label(architecture: Any, point: Any) -> str:
    return " @ ".join(str(x) for x in (architecture or "SAE", point) if x is not None)


def _readable_log_axis(ax: Any) -> None:
    """Log x axis with plain-number ticks at 1, 2, 5 x 10^k and no minor labels: the
    default labels every minor tick (2x10^1, 3x10^1, ...) over a narrow range, overlapping."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_frontier(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path | None:
    """L0 vs FVU (and vs loss / cosine recovered and KL where measured), one labelled point per
    SAE, one colour and marker per architecture (and hook point, when several), with a
    legend. None when no row has both L0 and FVU."""
    from matplotlib.figure import Figure

    panels = [
        (key, label)
        for key, label in PANELS
        if any(r.get("l0") is not None and r.get(key) is not None for r in rows)
    ]
    if not panels or panels[0][0] != "fvu":
        return None
    named = next((r["recovered_is"] for r in rows if r.get("recovered_is")), "recovered")
    panels = [(key, label or named.replace("_", " ")) for key, label in panels]
    fig = Figure(figsize=(5.6 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    groups = _groups(rows)
    for ax, (key, label) in zip(axes, panels, strict=True):
        for g, ((arch, point), members) in enumerate(groups.items()):
            mine = [r for r in members if r.get("l0") is not None and r.get(key) is not None]
            ax.plot(
                [r["l0"] for r in mine], [r[key] for r in mine], MARKERS[g % len(MARKERS)],
                color=f"C{g % 10}", label=_legend_label(arch, point),
            )  # fmt: skip
        _label_points(ax, rows, key)
        ax.set_xlabel("L0 (active latents per token)")
        ax.set_ylabel(label)
        _readable_log_axis(ax)
        ax.grid(alpha=0.3, which="both")
    several = any(point is not None for _, point in groups)
    axes[0].legend(fontsize=8, title="architecture @ point" if several else "architecture")
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def _label_points(ax: Any, rows: Sequence[dict[str, Any]], key: str) -> None:
    """Each point's short name beside it, inside the axes: room is made at both ends of x
    (log) and y, and labels in the right half of the axis sit to the point's left."""
    shown = [r for r in rows if r.get("l0") is not None and r.get(key) is not None]
    if not shown:
        return
    xs = [float(r["l0"]) for r in shown]
    lo, hi = min(xs), max(xs)
    span = max(hi / lo, 1.05) if lo > 0 else 2.0
    ax.set_xlim(lo / span**0.35, hi * span**0.35)
    ax.margins(y=0.12)
    for r in shown:
        right_half = lo > 0 and math.log(float(r["l0"]) / lo) > 0.55 * math.log(span)
        ax.annotate(
            _short(r), (r["l0"], r[key]), xytext=(-5 if right_half else 5, 4),
            textcoords="offset points", ha="right" if right_half else "left",
            fontsize=7, alpha=0.85,
        )  # fmt: skip


def _short(row: dict[str, Any]) -> str:
    """The label of a point: its name without the point and architecture, which the
    legend already shows."""
    name = str(row.get("name", ""))
    for part in (row.get("point"), row.get("architecture")):
        prefix = f"{part}-"
        if part and name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def sweep_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of every SAE's metrics (the columns any row has)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = ["–" if r.get(c) is None else str(r[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sweep_for_report(
    sweep_dir: str | os.PathLike, name: str | None, out: str | None, store: Any
) -> tuple[Path, list[dict[str, Any]], str, Any]:
    """What `sae-hooks report` needs for a sweep: the SAE directory whose dashboard to
    build (`name`, default the first), the rows, the output folder (default
    SWEEP/report; `build_report` writes sweep.md, the table, into it) and the store
    (default the one sweep.json records for that SAE: sweeps merged into one
    directory may have read different stores)."""
    root = Path(sweep_dir)
    rows = sweep_rows(root)
    names = [r["name"] for r in rows]
    name = name or names[0]
    if name not in names:
        raise ValueError(f"--sae {name!r} is not an SAE of the sweep {root}; it has {names}")
    out = out or str(root / RunDir.REPORT)
    if store is None:
        index = json.loads((root / SWEEP_FILE).read_text())
        entry = next((e for e in index.get("saes", []) if e.get("name") == name), {})
        store = entry.get("store") or index.get("store")
    return root / name, rows, out, store
