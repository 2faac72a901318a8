"""What the dashboard shows (`Dashboard`, computed by report/dashboard.py) and how it is
rendered into its folder: Jinja2 pages (autoescaped) plus JS data files.

Layout (opens from file://, no server): index.html, latent.html (one page for every
latent: `latent.html?id=N`), ablation.html, assets/ (CSS + JS), data/index.js (one
row per latent for the index), data/tokens.js (token id -> text), data/latents/<c>.js
(CHUNK latents each, loaded by a script tag when a latent page opens: browsers
block fetch() of file:// URLs but not script tags), thumbs/<image>.png.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from sae_hooks.metrics import DENSE_FRACTION
from sae_hooks.report import graphics
from sae_hooks.report.circuit import circuit_links

if TYPE_CHECKING:
    import torch

    from sae_hooks.report.contexts import Example
    from sae_hooks.report.features import FeatureStats
    from sae_hooks.report.summary import RunInfo
    from sae_hooks.report.tokens import TokenText

CHUNK = 64
"""Latents per lazily loaded data file."""
SPARK_BINS = 16


def environment() -> Environment:
    return Environment(
        loader=PackageLoader("sae_hooks.report", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def js_assign(name: str, value: Any) -> str:
    """`SAE.name = <json>;` with '<' escaped, so no text can close or open a tag."""
    return f"{PREFIX}SAE.{name}={_json(value)};\n"


PREFIX = "window.SAE=window.SAE||{};"


def _json(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c")


def _r(x: float) -> float | int:
    """3 significant digits (whole numbers as ints): data files stay small."""
    v = float(f"{x:.3g}") if math.isfinite(x) else 0.0
    return int(v) if v.is_integer() and abs(v) < 1e15 else v


def _spark(counts: np.ndarray) -> str:
    """The histogram squeezed to SPARK_BINS digits 0-z (base 36), one char per bin."""
    used = np.nonzero(counts)[0]
    if used.size == 0:
        return ""
    c = counts[: used[-1] + 1].astype(float)
    edges = np.linspace(0, len(c), SPARK_BINS + 1).astype(int)
    s = np.add.reduceat(c, edges[:-1]) * (np.diff(edges) > 0)
    digits = np.ceil(s / s.max() * 35).astype(int)
    return "".join(np.base_repr(d, 36).lower() for d in digits)


@dataclass
class Dashboard:
    """Everything the report shows, computed; `write(folder)` renders it."""

    run: RunInfo
    nb_concepts: int
    latents: list[int]  # the latents that have examples / logit tokens computed
    norms: torch.Tensor
    stats: FeatureStats | None = None
    examples: dict[int, list[Example]] = field(default_factory=dict)
    vision: bool = False
    tokens: TokenText | None = None
    logits: dict[int, tuple[list[tuple[int, float]], list[tuple[int, float]]]] = field(
        default_factory=dict
    )
    cosine: tuple[torch.Tensor, torch.Tensor] | None = None
    cofire: tuple[torch.Tensor, torch.Tensor] | None = None
    ablations: list[dict[str, Any]] = field(default_factory=list)
    images: Any = None
    training_png: str | os.PathLike | None = None
    sweep: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"SAE report: {self.run.name}"

    def write(self, out: str | os.PathLike, index_name: str = "index.html") -> Path:
        """Write the folder (index, latent page, data chunks, thumbnails); return the index."""
        return write_site(self, Path(out), index_name)


def _index_data(d: Dashboard) -> dict[str, Any]:
    s = d.stats
    out: dict[str, Any] = {
        "n": d.nb_concepts,
        "run": d.run.name,
        "chunk": CHUNK,
        "vision": d.vision,
        "norm": [_r(v) for v in d.norms.tolist()],
        "top": [[] for _ in range(d.nb_concepts)],
        "ablated": {},
        "dense_above": DENSE_FRACTION,
    }
    for n, a in enumerate(d.ablations):
        for i in a["latents"]:
            out["ablated"].setdefault(int(i), []).append(concept_name(a, n))
    if s is not None:
        out |= {
            "rows": s.n_rows,
            "fires": s.fire_count.tolist(),
            "density": [float(f"{v:.4g}") for v in s.density.tolist()],
            "max": [_r(v) for v in s.max_act.tolist()],
            "mean": [_r(v) for v in s.mean_act.tolist()],
            "spark": [_spark(c) for c in s.hist_counts.numpy()],
        }
    if not d.vision:
        for i, exs in d.examples.items():
            tops = [int(ex.token_ids[ex.center]) for ex in exs if ex.group == "top"]
            out["top"][i] = [t for t, _ in _most_common(tops, 3)]
    return out


def _most_common(ids: list[int], k: int) -> list[tuple[int, int]]:
    counts: dict[int, int] = {}
    for t in ids:
        counts[t] = counts.get(t, 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])[:k]


def _latent_data(d: Dashboard, i: int, thumbs: set[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    s = d.stats
    if s is not None and s.fire_count[i] > 0:
        counts = s.hist_counts[i].numpy()
        width = float(s.hist_range[i]) / len(counts)
        used = min(len(counts), max(1, math.ceil(float(s.max_act[i]) / width)))
        out["hist"], out["hist_max"] = counts[:used].tolist(), _r(used * width)
    if i in d.logits:
        up, down = d.logits[i]
        out["up"] = [[t, _r(v)] for t, v in up]
        out["down"] = [[t, _r(v)] for t, v in down]
    if d.cosine is not None:
        out["cos"] = [[j, _r(c)] for j, c in zip(*(x[i].tolist() for x in d.cosine))]
    if d.cofire is not None:
        out["co"] = [[j, _r(c)] for j, c in zip(*(x[i].tolist() for x in d.cofire)) if c > 0]
    examples = []
    for ex in d.examples.get(i, []):
        e = {"g": ex.group, "d": ex.doc, "v": _r(ex.value), "c": ex.center}
        e["a"] = [_r(a) for a in ex.acts.tolist()]
        if d.vision:
            e["p"] = ex.positions.tolist()
            if ex.doc in thumbs:
                e["img"] = f"thumbs/{ex.doc}.png"
        else:
            e["t"] = ex.token_ids.tolist()
        examples.append(e)
    if examples:
        out["ex"] = examples
    return out


def concept_name(a: dict[str, Any], n: int) -> str:
    """What an ablation experiment is called: its concept, else (records written before
    concepts had names) its target or its file, else its number."""
    name = a.get("concept") or a.get("target") or a.get("target_name") or a.get("file")
    return str(name or f"experiment {n + 1}")


def _latent_rows(a: dict[str, Any], stats: FeatureStats | None) -> list[dict[str, Any]]:
    """The ablated latents: score, density on the concept's examples (the ablation's own
    count) and on the dashboard's rows, and whether either is dense."""
    latents = [int(i) for i in a["latents"]]
    scores = a.get("scores") or [None] * len(latents)
    on_examples = a.get("density") or [None] * len(latents)
    above = float(a.get("dense_above", DENSE_FRACTION))
    rows = []
    for i, score, ex in zip(latents, scores, on_examples, strict=False):
        scanned = float(stats.density[i]) if stats is not None else None
        dense = (ex is not None and ex > above) or (
            scanned is not None and scanned > DENSE_FRACTION
        )
        rows.append(
            {"id": i, "score": score, "examples": _pct(ex), "rows": _pct(scanned), "dense": dense}
        )
    return rows


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.3g}%"


def _ablation_view(a: dict[str, Any], n: int, stats: FeatureStats | None) -> dict[str, Any]:
    def num(x: Any) -> str:
        return "–" if x is None else f"{float(x):.4f}"

    def mean(xs: list[float]) -> float | None:
        return float(np.mean(xs)) if len(xs) else None

    m = a.get("m", len(a["latents"]))
    rand_pos = list(a.get("random_positive", []))
    clean = a.get("clean_positive")
    effect = a.get("effect")
    if effect is None and clean is not None and a.get("concept_positive") is not None:
        effect = a["concept_positive"] - clean
    rand = [r - clean for r in rand_pos] if clean is not None else []
    return {
        "concept": concept_name(a, n),
        "target": a.get("target") or a.get("target_name") or "not recorded",
        "file": a.get("file"),
        "point": a.get("point"),
        "m": m,
        "latents": [int(i) for i in a["latents"]],
        "rows": [
            ("clean (SAE + error term)", num(clean), num(a.get("clean_negative"))),
            (
                f"ablate top {m} concept latents",
                num(a.get("concept_positive")),
                num(a.get("concept_negative")),
            ),
            (
                f"ablate {m} random latents (mean of {len(rand_pos)})",
                num(mean(rand_pos)),
                num(mean(list(a.get("random_negative", [])))),
            ),
        ],
        "effect": effect,
        "random_effect": mean(rand),
        "random_std": float(np.std(rand, ddof=1)) if len(rand) > 1 else 0.0,
        "scored": _latent_rows(a, stats),
        "dense_above": f"{float(a.get('dense_above', DENSE_FRACTION)):.0%}",
        "dense_left_out": [] if a.get("keep_dense") else [int(i) for i in a.get("dense") or []],
    }


def _sweep_png(sweep: list[dict[str, Any]], path: Path) -> str | None:
    """The frontier plot (report/frontier.py); None without matplotlib or L0/FVU values."""
    try:
        from sae_hooks.report.frontier import plot_frontier

        out = plot_frontier(sweep, path)
    except ImportError:
        return None
    return out.name if out is not None else None


def _write_data(d: Dashboard, folder: Path) -> None:
    """Write data/ (index, tokens, per-latent chunks) and any image thumbnails: the pages
    load these lazily, so the HTML stays small however many latents there are. The
    latent chunks are cleared first, so a rerun with fewer latents leaves none stale."""
    data = folder / "data"
    shutil.rmtree(data / "latents", ignore_errors=True)
    (data / "latents").mkdir(parents=True)
    thumbs: set[int] = set()
    if d.vision and d.images is not None:
        from sae_hooks.report.images import write_thumbnails

        docs = [ex.doc for exs in d.examples.values() for ex in exs]
        thumbs = write_thumbnails(d.images, docs, folder / "thumbs")
    (data / "index.js").write_text(js_assign("index", _index_data(d)), encoding="utf-8")
    tokens = {}
    if d.tokens is not None:
        tokens = {str(k): v for k, v in sorted(d.tokens._cache.items())}
    (data / "tokens.js").write_text(js_assign("tokens", tokens), encoding="utf-8")
    for c in range(0, d.nb_concepts, CHUNK):
        chunk = {i: _latent_data(d, i, thumbs) for i in range(c, min(c + CHUNK, d.nb_concepts))}
        text = f"{PREFIX}SAE.chunk({c // CHUNK},{_json(chunk)});\n"
        (data / "latents" / f"{c // CHUNK}.js").write_text(text, encoding="utf-8")


def write_site(d: Dashboard, folder: Path, index_name: str = "index.html") -> Path:
    """Write every file of the report into `folder`; return the index page."""
    folder.mkdir(parents=True, exist_ok=True)
    assets = folder / "assets"
    assets.mkdir(exist_ok=True)
    for f in resources.files("sae_hooks.report").joinpath("assets").iterdir():
        if f.name.endswith((".js", ".css")):
            (assets / f.name).write_text(f.read_text(encoding="utf-8"), encoding="utf-8")
    _write_data(d, folder)
    env = environment()
    abl = [_ablation_view(a, n, d.stats) for n, a in enumerate(d.ablations)]
    s = d.stats
    training = None
    if d.training_png is not None:
        src = Path(d.training_png)
        training = src.name
        if src.resolve() != (folder / src.name).resolve():
            shutil.copyfile(src, folder / src.name)
    columns = list(dict.fromkeys(k for r in d.sweep for k in r))
    context = {
        "run": d.run,
        "ablations": abl,
        "circuits": circuit_links(folder),
        "notes": d.notes,
        "scan": [("rows scanned", f"{s.n_rows:,}")] if s is not None else [],
        "dense_fraction": DENSE_FRACTION,
        "dense_pct": f"{DENSE_FRACTION:.0%}",
        "training_png": training,
        "sweep": d.sweep,
        "sweep_columns": columns,
        "sweep_png": _sweep_png(d.sweep, folder / "sweep.png") if d.sweep else None,
        "n_latents": d.nb_concepts,
        "n_rows": s.n_rows if s is not None else 0,
        "dead": s.dead if s is not None else 0,
        "dense": s.dense if s is not None else 0,
        "density_svg": Markup(graphics.density_histogram_svg(s.density)) if s is not None else "",
    }
    index = folder / index_name
    index.write_text(env.get_template("index.html").render(context), encoding="utf-8")
    (folder / "latent.html").write_text(
        env.get_template("latent.html").render(context), encoding="utf-8"
    )
    if abl:
        (folder / "ablation.html").write_text(
            env.get_template("ablation.html").render(context), encoding="utf-8"
        )
    return index
