"""A static, self-contained HTML feature dashboard: one file, no server, no network.

For each shown latent (the most often firing ones plus any requested): its
firing density, activation histogram, top-activating contexts with every token
shaded by activation (or, for images, the patch grid over the image), and, for
LMs given the unembedding, the tokens its decoder direction promotes and
suppresses. An index table (sortable, searchable by id) links to every card;
concept-ablation experiments link to the latents they ablated.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sae_hooks.report import graphics
from sae_hooks.report.contexts import Example, gather_examples
from sae_hooks.report.features import FeatureStats, collect_features
from sae_hooks.report.page import CSS, JS
from sae_hooks.report.rows import Rows
from sae_hooks.report.tokens import TokenText

SOURCE_HELP = (
    "source is an ActivationStore or its path/URL (with point=), a Rows, an (n_rows, d) "
    "tensor or array, or a mapping with 'acts' and optionally 'token_ids', 'doc_index', "
    "'position'"
)
_META = ("token_ids", "doc_index", "position")

EXAMPLE_POOL = 4
"""Top rows kept per shown example, so that examples can come from distinct windows."""


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def as_rows(source: Any, point: str | None = None, *, max_rows: int | None = None) -> Rows:
    """Rows from any supported source (see SOURCE_HELP)."""
    if isinstance(source, Rows):
        return source
    if isinstance(source, (torch.Tensor, np.ndarray)):
        return Rows.from_tensors(source[:max_rows] if max_rows else source)
    if isinstance(source, Mapping):
        if "acts" not in source:
            raise ValueError(f"a mapping source needs an 'acts' entry; {SOURCE_HELP}")
        n = max_rows or len(source["acts"])
        cut = {k: None if source.get(k) is None else source[k][:n] for k in _META}
        return Rows.from_tensors(source["acts"][:n], **cut)
    if isinstance(source, (str, os.PathLike)):
        from sae_hooks.store import open_store

        source = open_store(source)
    if hasattr(source, "points") and hasattr(source, "read"):
        if point is None:
            if len(source.points) != 1:
                raise ValueError(
                    f"the store holds points {source.points}: pass point= to choose one"
                )
            point = source.points[0]
        return Rows.from_store(source, point, max_rows=max_rows)
    raise TypeError(f"cannot read activations from {type(source).__name__}; {SOURCE_HELP}")


def as_unembed(unembed: Any, d_model: int) -> torch.Tensor:
    """W_U as (d_model, vocab) float32; (vocab, d_model), as in lm_head.weight, is transposed."""
    w = unembed.weight if isinstance(unembed, nn.Module) else unembed
    w = torch.as_tensor(w).detach().float().cpu()
    if w.dim() != 2 or d_model not in w.shape:
        raise ValueError(
            f"unembed must be (d_model={d_model}, vocab) or (vocab, d_model), got {tuple(w.shape)}"
        )
    return w if w.shape[0] == d_model else w.T


def select_latents(
    stats: FeatureStats | None, nb_concepts: int, n_latents: int, requested: Iterable[int] = ()
) -> list[int]:
    """The n_latents most often firing latents plus the requested ones, by density."""
    requested = [int(i) for i in requested]
    bad = [i for i in requested if not 0 <= i < nb_concepts]
    if bad:
        raise ValueError(f"latent ids {bad} are out of range: the SAE has {nb_concepts} latents")
    if stats is None:
        return sorted(set(requested))
    live = int((stats.fire_count > 0).sum())
    top = torch.argsort(stats.fire_count, descending=True, stable=True)[: min(n_latents, live)]
    chosen = set(top.tolist()) | set(requested)
    return sorted(chosen, key=lambda i: (-int(stats.fire_count[i]), i))


def _ablation_dicts(ablations: Any) -> list[dict[str, Any]]:
    if ablations is None:
        return []
    if isinstance(ablations, Mapping) or hasattr(ablations, "to_dict"):
        ablations = [ablations]
    out = []
    for a in ablations:
        d = a.to_dict() if hasattr(a, "to_dict") else a
        if not isinstance(d, Mapping) or "latents" not in d:
            raise TypeError(
                f"an ablation is an AblationResult or its to_dict(), got {type(a).__name__}"
            )
        out.append(dict(d))
    return out


@dataclass
class Dashboard:
    """Everything one page shows, computed; `html()` renders it."""

    title: str
    sae_info: dict[str, Any]
    latents: list[int]
    stats: FeatureStats | None = None
    examples: dict[int, list[Example]] = field(default_factory=dict)
    vision: bool = False
    tokens: TokenText | None = None
    logits: dict[int, tuple[list[tuple[int, float]], list[tuple[int, float]]]] = field(
        default_factory=dict
    )
    ablations: list[dict[str, Any]] = field(default_factory=list)
    images: Any = None
    training_png: bytes | None = None
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ pieces

    def _token(self, token_id: int) -> str:
        text = self.tokens[token_id] if self.tokens is not None else f"#{token_id}"
        return esc(text.replace("\n", "↵").replace("\t", "→")) or "∅"

    def _context(self, ex: Example, peak: float) -> str:
        spans = []
        center = ex.center
        for j, (tid, a) in enumerate(zip(ex.token_ids.tolist(), ex.acts.tolist())):
            text = self._token(tid)
            if a > 0 or j == center:
                cls = ' class="max"' if j == center else ""
                alpha = min(a / peak, 1.0) if peak > 0 else 0.0
                spans.append(f'<span style="--a:{alpha:.2f}" title="{a:.3g}"{cls}>{text}</span>')
            else:
                spans.append(text)
        return f'<div class="ctx"><span class="v">{ex.value:.3g}</span>{"".join(spans)}</div>'

    def _image_uri(self, doc: int) -> str | None:
        if self.images is None:
            return None
        try:
            image = self.images[doc]
        except (IndexError, KeyError):
            return None
        thumb = graphics.thumbnail(graphics.to_rgb_uint8(image), 128)
        return graphics.data_uri(graphics.png_bytes(thumb))

    def _patches(self, ex: Example, peak: float) -> str:
        grid = graphics.patch_grid_svg(
            ex.positions, ex.acts, peak, center=ex.center, image_uri=self._image_uri(ex.doc)
        )
        return grid.replace("</figcaption>", f" · image {ex.doc} · {ex.value:.3g}</figcaption>")

    def _logit_list(self, pairs: list[tuple[int, float]], cls: str) -> str:
        return "".join(
            f'<span class="{cls}" title="{v:+.3f}">{self._token(t)}</span>' for t, v in pairs
        )

    def _card(self, i: int) -> str:
        parts = [f'<section class="card" id="latent-{i}"><h3><a href="#latent-{i}">Latent {i}</a>']
        parts += [
            f'<span class="badge">ablated in experiment {n + 1}</span>'
            for n, a in enumerate(self.ablations)
            if i in a["latents"]
        ]
        parts.append("</h3>")
        s = self.stats
        if s is not None:
            peak = float(s.max_act[i])
            parts.append(
                '<div class="stats"><div>'
                f"<b>density</b> {float(s.density[i]):.3%} ({int(s.fire_count[i])} of {s.n_rows} rows)<br>"
                f"<b>max</b> {peak:.4g} · <b>mean when firing</b> {float(s.mean_act[i]):.4g}"
                "</div>"
                + graphics.activation_histogram_svg(s.hist_counts[i], float(s.hist_range[i]), peak)
                + "</div>"
            )
            examples = self.examples.get(i, [])
            if not examples:
                parts.append('<p class="muted">Never fires on these rows.</p>')
            elif self.vision:
                body = "".join(self._patches(ex, peak) for ex in examples)
                parts.append(f'<div class="patches">{body}</div>')
            else:
                parts.append("".join(self._context(ex, peak) for ex in examples))
        if i in self.logits:
            up, down = self.logits[i]
            parts.append(
                '<p class="logits"><b>promotes</b> '
                + self._logit_list(up, "up")
                + "<br><b>suppresses</b> "
                + self._logit_list(down, "down")
                + "</p>"
            )
        parts.append("</section>")
        return "".join(parts)

    def _index(self) -> str:
        s = self.stats
        head = (
            '<tr><th data-key="id">latent</th><th data-key="density">density</th>'
            '<th data-key="max">max</th><th data-key="mean">mean</th><th>top token</th></tr>'
        )
        rows = []
        for i in self.latents:
            density = float(s.density[i]) if s is not None else 0.0
            top_max = float(s.max_act[i]) if s is not None else 0.0
            mean = float(s.mean_act[i]) if s is not None else 0.0
            ex = self.examples.get(i)
            top = "" if not ex or self.vision else self._token(int(ex[0].token_ids[ex[0].center]))
            rows.append(
                f'<tr data-id="{i}" data-density="{density:.6g}" data-max="{top_max:.6g}" '
                f'data-mean="{mean:.6g}"><td><a href="#latent-{i}">{i}</a></td>'
                f"<td>{density:.3%}</td><td>{top_max:.3g}</td><td>{mean:.3g}</td>"
                f'<td class="text">{top}</td></tr>'
            )
        return (
            '<input id="search" type="search" placeholder="latent id, Enter to jump" '
            'aria-label="search latents by id"> <span id="shown-count" class="muted"></span>'
            f'<div id="index-wrap"><table id="index"><thead>{head}</thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>"
        )

    def _ablation(self, n: int, a: dict[str, Any]) -> str:
        def mean(xs: Sequence[float]) -> float:
            return float(np.mean(xs)) if len(xs) else float("nan")

        m = a.get("m", len(a["latents"]))
        rows = [
            ("clean (SAE + error term)", a.get("clean_positive"), a.get("clean_negative")),
            (
                f"ablate top {m} concept latents",
                a.get("concept_positive"),
                a.get("concept_negative"),
            ),
            (
                f"ablate {m} random latents (mean of {len(a.get('random_positive', []))})",
                mean(a.get("random_positive", [])),
                mean(a.get("random_negative", [])),
            ),
        ]

        def num(x: Any) -> str:
            return "–" if x is None else f"{float(x):.4f}"

        table = "".join(
            f"<tr><td>{esc(c)}</td><td>{num(p)}</td><td>{num(q)}</td></tr>" for c, p, q in rows
        )
        scores = a.get("scores") or [None] * len(a["latents"])
        links = ", ".join(
            f'<a href="#latent-{int(i)}">{int(i)}</a>'
            + ("" if sc is None else f' <span class="muted">({float(sc):+.3g})</span>')
            for i, sc in zip(a["latents"], scores)
        )
        effect = a.get("effect")
        rand = a.get("random_effect_mean")
        summary = ""
        if effect is not None:
            summary = f"<p>Effect on positives: concept <b>{effect:+.4f}</b>"
            if rand is not None:
                summary += f", random {rand:+.4f} ± {a.get('random_effect_std', 0.0):.4f}"
            summary += "</p>"
        return (
            f'<section class="ablation" id="ablation-{n + 1}"><h3>Experiment {n + 1}: '
            f"ablating {m} latents at <code>{esc(a.get('point', '?'))}</code></h3>"
            "<table><thead><tr><th>condition</th><th>target on positives</th>"
            f"<th>target on negatives</th></tr></thead><tbody>{table}</tbody></table>"
            f"{summary}<p>Ablated latents (score = mean activation on positives minus "
            f"negatives): {links}</p></section>"
        )

    def html(self) -> str:
        info = " · ".join(f"{esc(k)}: <b>{esc(v)}</b>" for k, v in self.sae_info.items())
        body = [f"<h1>{esc(self.title)}</h1><p class='meta'>{info}</p>"]
        body += [f'<p class="muted">{esc(note)}</p>' for note in self.notes]
        if self.training_png is not None:
            uri = graphics.data_uri(self.training_png)
            body.append(f'<h2>Training</h2><img class="curves" alt="training curves" src="{uri}">')
        if self.stats is not None:
            dead = int((self.stats.fire_count == 0).sum())
            body.append(
                "<h2>Firing density</h2>"
                f"<p>{dead} of {self.stats.nb_concepts} latents never fire on these "
                f"{self.stats.n_rows} rows.</p>"
                + graphics.density_histogram_svg(self.stats.density)
            )
        if self.ablations:
            body.append("<h2>Concept ablations</h2>")
            body += [self._ablation(n, a) for n, a in enumerate(self.ablations)]
        if self.latents:
            body.append(f"<h2>Latents</h2>{self._index()}")
            body += [self._card(i) for i in self.latents]
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(self.title)}</title><style>{CSS}</style></head><body>"
            + "\n".join(body)
            + f"<script>{JS}</script></body></html>"
        )


def _sae_info(sae: nn.Module) -> dict[str, Any]:
    config = sae.config() if hasattr(sae, "config") else {}
    info = {"architecture": config.get("architecture", type(sae).__name__)}
    info["latents"] = sae.nb_concepts
    info["d_model"] = sae.input_size
    if config.get("top_k") is not None:
        info["top_k"] = config["top_k"]
    return info


def make_dashboard(
    sae: nn.Module,
    source: Any = None,
    *,
    point: str | None = None,
    tokenizer: Any = None,
    unembed: Any = None,
    ablations: Any = None,
    latents: Iterable[int] = (),
    n_latents: int = 48,
    n_examples: int = 8,
    context: tuple[int, int] = (12, 4),
    images: Any = None,
    max_rows: int | None = None,
    training_png: bytes | str | os.PathLike | None = None,
    title: str = "SAE feature dashboard",
    progress: bool = True,
) -> Dashboard:
    """Compute what the page shows. See `build_dashboard` for the arguments."""
    if n_latents < 0 or n_examples < 1:
        raise ValueError(f"need n_latents >= 0 and n_examples >= 1, got {n_latents}, {n_examples}")
    left, right = context
    if left < 0 or right < 0:
        raise ValueError(f"context is (tokens before, tokens after), both >= 0, got {context}")
    abl = _ablation_dicts(ablations)
    requested = [*latents, *(int(i) for a in abl for i in a["latents"])]
    info = _sae_info(sae)
    notes = []
    stats, examples, vision, rows = None, {}, False, None
    if source is not None:
        rows = as_rows(source, point, max_rows=max_rows)
        stats = collect_features(sae, rows, k=EXAMPLE_POOL * n_examples, progress=progress)
        vision = rows.is_vision
        info["rows scanned"] = rows.n_rows
    else:
        notes.append("No activations given: no densities, histograms or contexts.")
    if point is not None:
        info["point"] = point
    chosen = select_latents(stats, sae.nb_concepts, n_latents, requested)
    if rows is not None and chosen:
        examples = gather_examples(
            sae, rows, stats, chosen, n_examples=n_examples, left=left, right=right
        )
    tokens = None if vision else TokenText(tokenizer)
    if tokens is not None and examples:
        tokens.prefetch(int(t) for exs in examples.values() for ex in exs for t in ex.token_ids)
    logits = {}
    if unembed is not None and chosen:
        w_u = as_unembed(unembed, sae.input_size)
        with torch.no_grad():
            directions = sae.get_dictionary()[chosen].detach().float().cpu()
        scores = directions @ w_u
        k = min(8, scores.shape[1])
        up, down = scores.topk(k, dim=1), scores.topk(k, dim=1, largest=False)
        for n, i in enumerate(chosen):
            logits[i] = (
                list(zip(up.indices[n].tolist(), up.values[n].tolist())),
                list(zip(down.indices[n].tolist(), down.values[n].tolist())),
            )
        if tokens is not None:
            tokens.prefetch(torch.cat([up.indices, down.indices]).flatten().tolist())
        elif vision:
            notes.append("unembed was given for an image store; logit tokens shown as ids.")
    if isinstance(training_png, (str, os.PathLike)):
        training_png = Path(training_png).read_bytes()
    info["built"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return Dashboard(
        title=title,
        sae_info=info,
        latents=chosen,
        stats=stats,
        examples=examples,
        vision=vision,
        tokens=tokens,
        logits=logits,
        ablations=abl,
        images=images,
        training_png=training_png,
        notes=notes,
    )


def build_dashboard(
    sae: nn.Module, source: Any = None, out: str | os.PathLike = "dashboard.html", **kw: Any
) -> Path:
    """Write the dashboard for `sae` over the rows of `source` to one HTML file.

    source: an ActivationStore or its location (with point=), a Rows, an (n_rows, d)
    tensor, or a mapping with "acts" plus optional "token_ids", "doc_index", "position".
    tokenizer: decodes token ids (HF tokenizer, local dir, mapping or callable).
    unembed: W_U as (d_model, vocab) or lm_head.weight (vocab, d_model).
    ablations: AblationResult(s) or their to_dict(); their latents get cards too.
    latents: ids shown besides the n_latents most often firing ones.
    images: indexable by document index (tensor (n, C, H, W), arrays, PIL images),
    drawn under the patch grids of an image store.
    context: tokens shown (before, after) the max token of each text example.
    """
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(make_dashboard(sae, source, **kw).html(), encoding="utf-8")
    return path
