"""The circuit page: a `sae_hooks.eval.Circuit` drawn as one static HTML file.

Nodes stand in one column per point (forward order, left to right), largest
|attribution| first; each shows its latent (or "error"), its attribution and the tokens
where it fired most. Edges are SVG lines between consecutive columns, their width
proportional to |weight| and coloured by sign (blue raises the metric, red lowers it).
No script and no external file: the page opens from file:// and renders the same in
any browser (headless Chromium included).

A run's circuits live in ``<run>/circuits/<name>.json`` (what `sae-hooks circuit` writes);
`circuit_pages` draws each into the report's ``circuits/<name>.html`` and
`circuit_links` lists them for the index.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from sae_hooks.atomic import write_text_atomic

CIRCUITS = "circuits"
"""The folder of circuits in a run directory and of circuit pages in a report."""
COLUMN, ROW, BOX_W, BOX_H, TOP = 380, 92, 250, 78, 40


def write_circuit_page(circuit: Any, path: str | os.PathLike, *, index: str | None = None) -> Path:
    """Draw `circuit` (an eval `Circuit`, its JSON dict, or a circuit.json path) into the
    HTML file `path`; ``index``: a link back to the report's index page."""
    from sae_hooks.eval.circuits import Circuit

    if isinstance(circuit, (str, os.PathLike)):
        circuit = Circuit.load(circuit)
    elif isinstance(circuit, dict):
        circuit = Circuit.from_json(circuit)
    env = Environment(
        loader=PackageLoader("sae_hooks.report", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    html = env.get_template("circuit.html").render(layout(circuit), index=index)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, html)


def layout(circuit: Any) -> dict[str, Any]:
    """Where every box and line goes, and what it says."""
    columns: dict[str, list[Any]] = {p: [] for p in circuit.points}
    for n in circuit.nodes:
        columns.setdefault(n.point, []).append(n)
    boxes, where = [], {}
    for c, nodes in enumerate(columns.values()):
        nodes = sorted(nodes, key=lambda n: (n.latent is None, -abs(n.attribution)))
        for r, n in enumerate(nodes):
            x, y = 20 + c * COLUMN, TOP + r * ROW
            where[n.id] = (x, y)
            tokens = " · ".join(t.get("text") or f"#{t['token']}" for t in n.top_tokens)
            boxes.append(
                {
                    "x": x, "y": y, "id": n.id, "error": n.latent is None,
                    "label": "error" if n.latent is None else f"latent {n.latent}",
                    "attribution": n.attribution, "tokens": tokens.replace("\n", "⏎"),
                    "fill": _tint(n.attribution, circuit),
                }
            )  # fmt: skip
    biggest = max((abs(e.weight) for e in circuit.edges), default=1.0) or 1.0
    lines = []
    for e in circuit.edges:
        if e.source in where and e.target in where:
            (x1, y1), (x2, y2) = where[e.source], where[e.target]
            lines.append(
                {
                    "x1": x1 + BOX_W, "y1": y1 + BOX_H / 2, "x2": x2, "y2": y2 + BOX_H / 2,
                    "width": round(0.5 + 7.5 * abs(e.weight) / biggest, 2),
                    "colour": "#1a73e8" if e.weight > 0 else "#d93025",
                    "title": f"{e.source} -> {e.target}: {e.weight:+.4g}",
                }
            )  # fmt: skip
    rows = max((len(v) for v in columns.values()), default=1)
    return {
        "c": circuit,
        "columns": list(columns),
        "boxes": boxes,
        "lines": lines,
        "width": 40 + COLUMN * max(len(columns) - 1, 0) + BOX_W,
        "height": TOP + rows * ROW,
        "column_x": [20 + c * COLUMN for c in range(len(columns))],
        "box_w": BOX_W,
        "box_h": BOX_H,
    }


def _tint(attribution: float, circuit: Any) -> str:
    top = max((abs(n.attribution) for n in circuit.nodes), default=1.0) or 1.0
    a = min(abs(attribution) / top, 1.0) * 0.45 + 0.05
    return f"rgba(26,115,232,{a:.2f})" if attribution > 0 else f"rgba(217,48,37,{a:.2f})"


def circuit_pages(run: str | os.PathLike, report: str | os.PathLike) -> list[Path]:
    """Draw every ``run/circuits/*.json`` into ``report/circuits/<name>.html``."""
    found = sorted((Path(run) / CIRCUITS).glob("*.json"))
    out = Path(report) / CIRCUITS
    return [write_circuit_page(f, out / f"{f.stem}.html", index="../index.html") for f in found]


def circuit_links(report: str | os.PathLike) -> list[dict[str, str]]:
    """The circuit pages of a report folder, as index links {"href", "name"}."""
    pages = sorted((Path(report) / CIRCUITS).glob("*.html"))
    return [{"href": f"{CIRCUITS}/{p.name}", "name": p.stem} for p in pages]
