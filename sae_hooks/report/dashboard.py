"""A static feature dashboard: a small folder that opens without a server or network.

What is computed here, for EVERY latent: density, max/mean activation, decoder
norm, histogram, top and activation-quantile examples, logit-lens tokens,
nearest latents by decoder cosine and by co-firing. `site.write_site` turns it
into index.html (run header, sortable/searchable index of all latents) and one
latent.html whose data loads lazily from data/latents/<chunk>.js. (`Dashboard`, what
is computed, is defined beside the writer that renders it: report/site.py.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sae_hooks.activations import ActivationBatch
from sae_hooks.report.contexts import gather_examples
from sae_hooks.report.features import FeatureStats, collect_features
from sae_hooks.report.neighbours import cofire_neighbours, decoder_neighbours, decoder_norms
from sae_hooks.report.rows import Rows
from sae_hooks.report.site import Dashboard
from sae_hooks.report.summary import RunInfo
from sae_hooks.report.tokens import TokenText

SOURCE_HELP = (
    "source is an ActivationStore or its path/URL (with point=), an ActivationBatch (with "
    "point= if it holds several), a Rows, an (n_rows, d) tensor or array, or a mapping with "
    "'acts' and optionally 'token_ids', 'doc_index', 'position'"
)
_META = ("token_ids", "doc_index", "position")

EXAMPLE_POOL = 4
"""Top rows kept per shown example, so that examples can come from distinct windows."""


def as_rows(source: Any, point: str | None = None, *, max_rows: int | None = None) -> Rows:
    """Rows from any supported source (see SOURCE_HELP)."""
    if isinstance(source, Rows):
        return source
    if isinstance(source, ActivationBatch):
        return Rows.from_batch(source.rows(0, min(max_rows or source.n_rows, source.n_rows)), point)
    if isinstance(source, (torch.Tensor, np.ndarray)):
        return Rows.from_tensors(source[:max_rows] if max_rows else source)
    if isinstance(source, Mapping):  # {"acts": rows, "token_ids": ...}: an ActivationBatch
        if "acts" not in source:
            raise ValueError(f"a mapping source needs an 'acts' entry; {SOURCE_HELP}")
        n = max_rows or len(source["acts"])
        cut = {k: None if source.get(k) is None else source[k][:n] for k in _META}
        return Rows.from_batch(ActivationBatch.of_rows(source["acts"][:n], **cut))
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


def model_unembedding(model: Any) -> torch.Tensor | None:
    """A language model's unembedding: TransformerLens' W_U or the output embeddings
    (lm_head.weight); None for models without one (encoders, image classifiers)."""
    w_u = getattr(model, "W_U", None)
    if isinstance(w_u, torch.Tensor):
        return w_u
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    weight = getattr(head, "weight", None)
    return weight if isinstance(weight, torch.Tensor) else None


def select_latents(
    stats: FeatureStats | None,
    nb_concepts: int,
    n_latents: int | None = None,
    requested: Iterable[int] = (),
) -> list[int]:
    """Latents given examples: all (n_latents None), else the n_latents most often
    firing plus the requested ones, by density."""
    requested = [int(i) for i in requested]
    bad = [i for i in requested if not 0 <= i < nb_concepts]
    if bad:
        raise ValueError(f"latent ids {bad} are out of range: the SAE has {nb_concepts} latents")
    if n_latents is None:
        return list(range(nb_concepts))
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


def _logit_lens(
    sae: nn.Module, unembed: Any, chosen: list[int], k: int = 8, block: int = 1024
) -> tuple[dict, list[int]]:
    """latent -> (promoted, suppressed) (token id, score) lists; all token ids involved."""
    w_u = as_unembed(unembed, sae.input_size)
    logits, ids = {}, []
    for lo in range(0, len(chosen), block):
        part = chosen[lo : lo + block]
        with torch.no_grad():
            scores = sae.get_dictionary()[part].detach().float().cpu() @ w_u
        kk = min(k, scores.shape[1])
        up, down = scores.topk(kk, dim=1), scores.topk(kk, dim=1, largest=False)
        for n, i in enumerate(part):
            logits[i] = (
                list(zip(up.indices[n].tolist(), up.values[n].tolist())),
                list(zip(down.indices[n].tolist(), down.values[n].tolist())),
            )
        ids += torch.cat([up.indices, down.indices]).flatten().tolist()
    return logits, ids


def _run_info(sae: nn.Module, run: RunInfo | None, title: str | None, point: str | None) -> RunInfo:
    """The header's facts: the run's own (from its files) completed from the SAE's config."""
    config = sae.config() if hasattr(sae, "config") else {}
    run = run or RunInfo(name=title or "SAE", architecture=config.get("architecture", ""))
    run.architecture = run.architecture or config.get("architecture", type(sae).__name__)
    run.nb_concepts, run.d_model = sae.nb_concepts, sae.input_size
    run.point = run.point or point or ""
    if run.k_per_token is None and config.get("top_k") and getattr(sae, "budget_per_row", False):
        run.k_per_token = float(config["top_k"])  # TopK's k is per token already
    return run


def _checked_sizes(
    n_latents: int | None, n_examples: int, context: tuple[int, int]
) -> tuple[int, int]:
    """(tokens before, tokens after) of an example, once the sizes asked for are valid."""
    if (n_latents is not None and n_latents < 0) or n_examples < 1:
        raise ValueError(f"need n_latents >= 0 and n_examples >= 1, got {n_latents}, {n_examples}")
    left, right = context
    if left < 0 or right < 0:
        raise ValueError(f"context is (tokens before, tokens after), both >= 0, got {context}")
    return left, right


def _pass_over_rows(
    sae: nn.Module,
    source: Any,
    point: str | None,
    max_rows: int | None,
    n_examples: int,
    run: RunInfo,
    notes: list[str],
    progress: bool,
) -> tuple[Any, Any]:
    """(rows, their feature statistics) from one streaming pass; (None, None) without rows."""
    if source is None:
        notes.append("No activations given: no densities, histograms or examples.")
        return None, None
    rows = as_rows(source, point, max_rows=max_rows)
    stats = collect_features(sae, rows, k=EXAMPLE_POOL * n_examples, progress=progress)
    if hasattr(source, "model") and not run.model:
        run.model = source.model
    return rows, stats


def _prefetched_logits(
    sae: nn.Module,
    unembed: Any,
    chosen: list[int],
    examples: dict,
    tokens: TokenText | None,
    notes: list[str],
) -> dict:
    """Logit-lens tokens of the chosen latents, with every token shown decoded in one batch."""
    if tokens is not None and examples:
        tokens.prefetch(int(t) for exs in examples.values() for ex in exs for t in ex.token_ids)
    if unembed is None or not chosen:
        return {}
    logits, ids = _logit_lens(sae, unembed, chosen)
    if tokens is not None:
        tokens.prefetch(ids)
    else:
        notes.append("unembed was given for an image store; logit tokens shown as ids.")
    return logits


def make_dashboard(
    sae: nn.Module,
    source: Any = None,
    *,
    point: str | None = None,
    tokenizer: Any = None,
    unembed: Any = None,
    ablations: Any = None,
    latents: Iterable[int] = (),
    n_latents: int | None = None,
    n_examples: int = 8,
    n_bins: int = 3,
    per_bin: int = 3,
    context: tuple[int, int] = (12, 4),
    images: Any = None,
    max_rows: int | None = None,
    training_png: str | os.PathLike | None = None,
    run: RunInfo | None = None,
    sweep: Sequence[Mapping[str, Any]] | None = None,
    title: str | None = None,
    progress: bool = True,
) -> Dashboard:
    """Compute what the report shows. See `build_dashboard` for the arguments."""
    left, right = _checked_sizes(n_latents, n_examples, context)
    abl = _ablation_dicts(ablations)
    requested = [*latents, *(int(i) for a in abl for i in a["latents"])]
    run = _run_info(sae, run, title, point)
    notes: list[str] = []
    rows, stats = _pass_over_rows(sae, source, point, max_rows, n_examples, run, notes, progress)
    chosen = select_latents(stats, sae.nb_concepts, n_latents, requested)
    vision, examples = rows is not None and rows.is_vision, {}
    if rows is not None and chosen:
        examples = gather_examples(
            sae, rows, stats, chosen, n_examples=n_examples, left=left, right=right,
            n_bins=n_bins, per_bin=per_bin,
        )  # fmt: skip
    tokens = None if vision else TokenText(tokenizer)
    logits = _prefetched_logits(sae, unembed, chosen, examples, tokens, notes)
    cofire = None
    if stats is not None and stats.cofire is not None:
        cofire = cofire_neighbours(*stats.cofire, sae.nb_concepts)
    return Dashboard(
        run=run,
        nb_concepts=sae.nb_concepts,
        latents=chosen,
        norms=decoder_norms(sae),
        stats=stats,
        examples=examples,
        vision=vision,
        tokens=tokens,
        logits=logits,
        cosine=decoder_neighbours(sae),
        cofire=cofire,
        ablations=abl,
        images=images,
        training_png=training_png,
        sweep=[dict(s) for s in sweep or []],
        notes=notes,
    )


def build_dashboard(
    sae: nn.Module, source: Any = None, out: str | os.PathLike = "dashboard", **kw: Any
) -> Path:
    """Write the dashboard for `sae` over the rows of `source`; return its index page.

    out: a folder (index.html inside) or the index page's path (its siblings go next to
    it: latent.html, ablation.html, assets/, data/, thumbs/).
    source: an ActivationStore or its location (with point=), an ActivationBatch (rows
    in memory with their metadata; point= if several), a Rows, an (n_rows, d) tensor, or
    a mapping with "acts" plus optional "token_ids", "doc_index", "position".
    tokenizer: decodes token ids (HF tokenizer, local dir, mapping or callable).
    unembed: W_U as (d_model, vocab) or lm_head.weight (vocab, d_model).
    ablations: AblationResult(s) or their to_dict() (with "concept"/"target" names).
    latents / n_latents: examples for every latent by default; n_latents=N limits them to
    the N most often firing plus `latents` (the index always lists all).
    images: the pixels of an image store by document index (tensor (N, C, H, W), list
    of images, ImageBatches or a folder); thumbnails are drawn under the patch grids.
    context: tokens shown (before, after) each text example's row.
    run: a RunInfo for the header; sweep: [{"name", "l0", "fvu", ...}] for the frontier.
    """
    path = Path(out)
    folder, name = (path.parent, path.name) if path.suffix == ".html" else (path, "index.html")
    return make_dashboard(sae, source, **kw).write(folder, name)
