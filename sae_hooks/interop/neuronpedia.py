"""A Neuronpedia-style export: each latent's top activating contexts as JSON, and the
inputs an automatic explainer needs, one latent per line.

Layout written to `out/`:

    sae.json                 {"format": "sae-hooks-neuronpedia/1", "modelId", "saeId",
                              "hookName", "point", "architecture", "d_in", "d_sae",
                              "n_rows", "featuresPerBatch", "batches": [...],
                              "identity": where the activations came from (RunIdentity:
                              model id or path, revision, backend, context, BOS,
                              dataset, normalisation; null where not recorded)}
    features/batch-0000.json a list of latents, Neuronpedia's feature-upload shape:
                             {"index", "density" (fraction of rows where it fires),
                              "maxActApprox", "meanAct" (over firing rows),
                              "activations": [{"tokens": [str], "tokenIds": [int],
                                "values": [float], "maxValue", "maxValueTokenIndex",
                                "group": "top" or "a..b" (an activation-quantile bin)}]}
    explanations.jsonl       one line per latent: {"index", "modelId", "saeId",
                              "explanation": null, "examples": [{"text" (the window
                              with the peak token in <<...>>), "maxValue"}]}, ready
                              for an explainer to fill "explanation"

Only latents that fire are written (dead ones have nothing to show).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .identity import RunIdentity, identity_from_store

FORMAT = "sae-hooks-neuronpedia/1"
FEATURES_PER_BATCH = 128


def export_neuronpedia(
    sae: nn.Module,
    store: Any,
    out: str | os.PathLike,
    *,
    point: str | None = None,
    tokenizer: Any = None,
    model_id: str = "",
    sae_id: str = "",
    latents: Sequence[int] | None = None,
    n_examples: int = 16,
    left: int = 24,
    right: int = 8,
    max_rows: int | None = None,
    progress: bool = True,
    identity: RunIdentity | None = None,
) -> Path:
    """Write `out/` (see the module docstring) from `sae` run over the rows of `store`.

    identity (default: what the store records, `identity_from_store`) is written as
    recorded; modelId is `model_id` (Neuronpedia's name for the model) or its model_name."""
    from sae_hooks.report.features import collect_features
    from sae_hooks.report.rows import Rows
    from sae_hooks.report.tokens import TokenText
    from sae_hooks.store import open_store

    store = open_store(store) if isinstance(store, (str, os.PathLike)) else store
    point, identity = _where(store, point, identity)
    model_id = model_id or identity.model_name or ""
    rows = Rows.from_store(store, point, max_rows=max_rows)
    stats = collect_features(sae, rows, k=n_examples, progress=progress)
    firing = [int(i) for i in (stats.fire_count > 0).nonzero().flatten()]
    chosen = firing if latents is None else [int(i) for i in latents if int(i) in set(firing)]
    out = Path(out)
    (out / "features").mkdir(parents=True, exist_ok=True)
    text = TokenText(tokenizer)
    ids = {"modelId": model_id, "saeId": sae_id}
    gather = {"n_examples": n_examples, "left": left, "right": right}
    batches: list[str] = []
    with (out / "explanations.jsonl").open("w", encoding="utf-8") as explain:
        for b, start in enumerate(range(0, len(chosen), FEATURES_PER_BATCH)):
            part = chosen[start : start + FEATURES_PER_BATCH]
            batches.append(_write_batch(out, b, part, sae, rows, stats, text, explain, ids, gather))
    header = {
        "format": FORMAT,
        "modelId": model_id,
        "saeId": sae_id,
        "hookName": identity.hook_name,
        "point": point,
        "architecture": type(sae).__name__,
        "d_in": int(sae.input_size),
        "d_sae": int(sae.nb_concepts),
        "n_rows": rows.n_rows,
        "featuresPerBatch": FEATURES_PER_BATCH,
        "batches": batches,
        "identity": identity.to_dict(),
    }
    (out / "sae.json").write_text(json.dumps(header, indent=2) + "\n")
    return out


def _where(store: Any, point: str | None, identity: RunIdentity | None) -> tuple[str, RunIdentity]:
    """The hook point exported (the store's only one by default) and the identity."""
    if point is None:
        if len(store.points) != 1:
            raise ValueError(f"the store holds points {store.points}; name one with point=")
        point = store.points[0]
    return point, (identity or identity_from_store(store)).with_values(point=point)


def _write_batch(
    out: Path,
    b: int,
    part: list[int],
    sae: nn.Module,
    rows: Any,
    stats: Any,
    text: Any,
    explain: Any,
    ids: dict[str, str],
    gather: dict[str, int],
) -> str:
    """Write one ``features/batch-NNNN.json`` and its lines of explanations.jsonl; batches
    bound how many latents' examples are gathered (and held in memory) at once.
    Returns the batch file's name relative to `out`."""
    from sae_hooks.report.contexts import gather_examples

    examples = gather_examples(sae, rows, stats, part, **gather)
    features = []
    for latent in part:
        acts = [_activation(e, text) for e in examples[latent]]
        features.append(
            {
                "index": latent,
                "density": float(stats.density[latent]),
                "maxActApprox": float(stats.max_act[latent]),
                "meanAct": float(stats.mean_act[latent]),
                "activations": acts,
            }
        )
        record = {
            "index": latent,
            **ids,
            "explanation": None,
            "examples": [
                {"text": _marked(a), "maxValue": a["maxValue"]} for a in acts if a["group"] == "top"
            ],
        }
        explain.write(json.dumps(record) + "\n")
    name = f"features/batch-{b:04d}.json"
    (out / name).write_text(json.dumps(features))
    return name


def _activation(example: Any, text: Any) -> dict[str, Any]:
    ids = [int(i) for i in example.token_ids]
    values = [round(float(v), 5) for v in example.acts]
    return {
        "tokens": [text[i] for i in ids],
        "tokenIds": ids,
        "values": values,
        "maxValue": round(float(example.value), 5),
        "maxValueTokenIndex": example.center,
        "group": example.group,
    }


def _marked(activation: dict[str, Any]) -> str:
    """The window as text with the peak token between << and >>."""
    peak = activation["maxValueTokenIndex"]
    return "".join(f"<<{t}>>" if i == peak else t for i, t in enumerate(activation["tokens"]))
