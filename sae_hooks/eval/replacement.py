"""Whole-model transcoder sets: one transcoder per layer, trained from one pass and
spliced in all at once (the replacement model of Dunefsky et al. 2024 and Ameisen et
al. 2025, whose MLPs are all transcoders).

`transcoder_set_configs` turns one TrainConfig into one config per layer
(``mlp_in.L -> mlp_out.L``); `train_transcoder_set` trains them with `train_many` from
one store holding every layer's MLP input and output (one `capture_to_store` call: every
step reads each pair once and feeds its transcoder). `evaluate_replacement` measures the
model with each layer's MLP replaced alone and with all of them replaced at once,
against the clean model: next-token CE and KL for causal LMs, top-1 agreement and KL for
classifiers, cosine of mean-pooled embeddings for encoders (`eval.downstream`), plus
each transcoder's FVU on its MLP output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sae_hooks.devices import model_device, sae_device_dtype, to_device
from sae_hooks.eval.downstream import Downstream
from sae_hooks.eval.engine import SPLICED, Batch
from sae_hooks.hooks import capture, splice_transcoder
from sae_hooks.hooks.points import n_blocks
from sae_hooks.model_outputs import model_kind, run_model
from sae_hooks.sae.modes import module_mode

_LAYER = re.compile(r"^(?:mlp_in|mlp_out|resid_mid|resid_post|resid_pre)\.(\d+)$")
ALL = "all"


def transcoder_layers(
    transcoders: Mapping[int | str, nn.Module] | Sequence[nn.Module], n_layers: int | None = None
) -> dict[int, nn.Module]:
    """A transcoder set by layer, 0..n-1 with none missing (n = ``n_layers`` when given,
    else the largest layer + 1). Keys: layers (ints) or points naming them ("mlp_out.3").
    Raises ValueError naming the missing layers."""
    if isinstance(transcoders, Mapping):
        layers = {_layer_of(key): tc for key, tc in transcoders.items()}
        if len(layers) != len(transcoders):
            raise ValueError(f"two transcoders name the same layer: {list(transcoders)}")
    else:
        layers = dict(enumerate(transcoders))
    if not layers:
        raise ValueError("the transcoder set is empty")
    n = max(layers) + 1 if n_layers is None else n_layers
    missing = sorted(set(range(n)) - set(layers))
    extra = sorted(set(layers) - set(range(n)))
    if missing or extra:
        raise ValueError(
            f"a transcoder set needs one transcoder per layer 0..{n - 1}; it has layers "
            f"{sorted(layers)}" + (f", missing {missing}" if missing else "")
            + (f", beyond the model's {n} layers: {extra}" if extra else "")
        )  # fmt: skip
    return dict(sorted(layers.items()))


def _layer_of(key: int | str) -> int:
    if isinstance(key, int) and not isinstance(key, bool) and key >= 0:
        return key
    match = _LAYER.match(key) if isinstance(key, str) else None
    if match is None:
        raise ValueError(
            f"a transcoder set is keyed by layer (int >= 0) or a point naming one "
            f"('mlp_out.3'); got {key!r}"
        )
    return int(match.group(1))


def transcoder_set_configs(base: Any, n_layers: int) -> tuple[list[Any], list[str]]:
    """(configs, names): `base` (a TrainConfig of a transcoder variant) once per layer,
    reading ``mlp_in.L`` and predicting ``mlp_out.L``, named ``layer.L``."""
    configs = [
        dataclasses.replace(base, point=f"mlp_in.{layer}", target_point=f"mlp_out.{layer}")
        for layer in range(n_layers)
    ]
    return configs, [f"layer.{layer}" for layer in range(n_layers)]


def train_transcoder_set(
    base: Any, store: Any, run_dir: str | os.PathLike, n_layers: int, **kwargs: Any
) -> dict[int, nn.Module]:
    """Train one transcoder per layer from one pass over `store` (it must hold
    ``mlp_in.L`` and ``mlp_out.L`` for every layer, captured together); each goes to
    run_dir/layer.L/. kwargs go to `train_many` (resume, until_step)."""
    from sae_hooks.train import train_many

    configs, names = transcoder_set_configs(base, n_layers)
    trained = train_many(configs, store, run_dir, names=names, **kwargs)
    return {layer: trained[name] for layer, name in enumerate(names)}


@dataclass
class ReplacementResult:
    """Per layer (that MLP alone replaced) and ``all`` (every MLP replaced at once): the
    downstream metrics of the model kind; per layer also the transcoder's FVU."""

    kind: str
    layers: dict[int, dict[str, float]]
    all_layers: dict[str, float]
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        """A Markdown table: one row per layer, then the all-layer row."""
        keys = list(self.all_layers)
        head = ["replaced", *keys, "fvu"]
        rows = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
        for layer, m in self.layers.items():
            cells = [f"mlp {layer}", *(f"{m[k]:.4f}" for k in keys), f"{m['fvu']:.4f}"]
            rows.append(f"| {' | '.join(cells)} |")
        cells = ["all", *(f"{self.all_layers[k]:.4f}" for k in keys), "–"]
        rows.append(f"| {' | '.join(cells)} |")
        return "\n".join(rows)


def evaluate_replacement(
    model: nn.Module,
    transcoders: Mapping[int | str, nn.Module] | Sequence[nn.Module],
    data: Iterable[Mapping[str, Tensor]],
    *,
    max_batches: int | None = None,
) -> ReplacementResult:
    """The replacement model against the clean one, each layer alone and all at once.

    transcoders: one per layer of the model (``mlp_in.L -> mlp_out.L``), keyed by layer
    or point; a missing layer is a ValueError. Per batch: one clean forward (capturing
    every MLP's input and output for the FVU), one forward per layer with that MLP
    replaced, one with every MLP replaced.
    """
    layers = transcoder_layers(transcoders, n_blocks(model))
    kind = model_kind(model)
    down = {key: _downstream(kind) for key in [*layers, ALL]}
    fvu_sums = {layer: [0.0, 0.0] for layer in layers}
    n = 0
    with contextlib.ExitStack() as modes:
        for tc in {id(t): t for t in layers.values()}.values():
            modes.enter_context(module_mode(tc, training=False))
        for inputs in data:
            if max_batches is not None and n >= max_batches:
                break
            n += 1
            _one_batch(model, layers, to_device(inputs, model_device(model)), down, fvu_sums)
    if n == 0:
        raise ValueError("evaluate_replacement: the data source yielded no batches")
    per_layer = {
        layer: {**_summary(kind, down[layer]), "fvu": num / den if den else float("nan")}
        for layer, (num, den) in fvu_sums.items()
    }
    return ReplacementResult(kind, per_layer, _summary(kind, down[ALL]))


def _downstream(kind: str) -> Downstream:
    return Downstream(kind, outputs=(SPLICED,), kl=() if kind == "encoder" else (SPLICED,))


@torch.no_grad()
def _one_batch(model, layers, inputs, down, fvu_sums) -> None:
    points = [f"{k}.{layer}" for layer in layers for k in ("mlp_in", "mlp_out")]
    with capture(model, points) as acts:
        clean = run_model(model, inputs)
    mask = inputs.get("attention_mask")
    for layer, tc in layers.items():
        x, y = acts[f"mlp_in.{layer}"], acts[f"mlp_out.{layer}"]
        device, dtype = sae_device_dtype(tc, like=x)
        rows = x.reshape(-1, x.shape[-1]).to(device=device, dtype=dtype)
        true = y.reshape(-1, y.shape[-1]).to(device=device, dtype=dtype)
        keep = _real_rows(mask, rows.shape[0], device)
        true, pred = true[keep], tc.predict(rows[keep])
        fvu_sums[layer][0] += float((true - pred).double().pow(2).sum())
        fvu_sums[layer][1] += float((true - true.mean(0)).double().pow(2).sum())
        with splice_transcoder(model, f"mlp_in.{layer}", f"mlp_out.{layer}", tc):
            _update(down[layer], inputs, clean, run_model(model, inputs))
    with contextlib.ExitStack() as stack:
        for layer, tc in layers.items():
            stack.enter_context(splice_transcoder(model, f"mlp_in.{layer}", f"mlp_out.{layer}", tc))
        _update(down[ALL], inputs, clean, run_model(model, inputs))


def _real_rows(mask: Tensor | None, rows: int, device) -> Tensor:
    if mask is None or mask.numel() != rows:
        return torch.ones(rows, dtype=torch.bool, device=device)
    return mask.reshape(-1).to(device=device).bool()


def _update(acc: Downstream, inputs, clean: Tensor, replaced: Tensor) -> None:
    """The accumulator reads only the inputs, the clean and the replaced outputs."""
    acc.update(Batch(inputs, None, None, None, clean=clean, outputs={SPLICED: replaced}))


def _summary(kind: str, acc: Downstream) -> dict[str, float]:
    if kind == "lm":
        clean, replaced = acc.mean("ce_clean"), acc.mean("ce_spliced")
        return {
            "ce_clean": clean,
            "ce_replaced": replaced,
            "delta_ce": replaced - clean,
            "kl": acc.mean("kl_spliced"),
        }
    if kind == "classifier":
        return {"top1_agreement": acc.mean("top1_agreement_spliced"), "kl": acc.mean("kl_spliced")}
    return {"cosine": acc.mean("cosine_spliced")}
