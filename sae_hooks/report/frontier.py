"""The sweep frontier: one row of metrics per SAE of a sweep, and the L0 / fidelity plot.

`sweep_rows(sweep_dir)` reads run_dir/sweep.json (written by train_many) and, per
SAE, its eval.json when one exists (written by `evaluate_sweep`), else its last
validation metrics. L0 and FVU come from the eval when there is one, so every
point of a frontier is measured the same way. `plot_frontier` draws FVU against
L0, and loss recovered and KL against L0 when the SAEs were evaluated spliced.
"""

from __future__ import annotations

import json
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


def plot_frontier(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path | None:
    """L0 vs FVU (and vs loss / cosine recovered and KL where measured), one labelled point per SAE,
    one colour per hook point. None when no row has both L0 and FVU."""
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
    fig = Figure(figsize=(5.2 * len(panels), 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    points = list(dict.fromkeys(r.get("point") for r in rows))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for point in points:
            mine = [
                r for r in rows
                if r.get("point") == point and r.get("l0") is not None and r.get(key) is not None
            ]  # fmt: skip
            ax.plot([r["l0"] for r in mine], [r[key] for r in mine], "o", label=str(point))
            for r in mine:
                ax.annotate(_short(r, point), (r["l0"], r[key]), fontsize=7, alpha=0.8)
        ax.set_xlabel("L0 (active latents per token)")
        ax.set_ylabel(label)
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    if len(points) > 1 or points != [None]:
        axes[0].legend(fontsize=7)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def _short(row: dict[str, Any], point: Any) -> str:
    """The label of a point: its name without the point prefix the colour already shows."""
    name = str(row.get("name", ""))
    prefix = f"{point}-"
    return name[len(prefix) :] if point and name.startswith(prefix) else name


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
    (default the one sweep.json records)."""
    root = Path(sweep_dir)
    rows = sweep_rows(root)
    names = [r["name"] for r in rows]
    name = name or names[0]
    if name not in names:
        raise ValueError(f"--sae {name!r} is not an SAE of the sweep {root}; it has {names}")
    out = out or str(root / RunDir.REPORT)
    if store is None:
        store = json.loads((root / SWEEP_FILE).read_text()).get("store")
    return root / name, rows, out, store
