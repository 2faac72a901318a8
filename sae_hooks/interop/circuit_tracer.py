"""circuit-tracer's transcoder-set format: a trained set of per-layer transcoders as the
replacement model of an attribution graph (Ameisen et al. 2025; circuit-tracer 0.5).

A directory with ``config.yaml`` (``model_kind: transcoder_set``, the hooks the features
read from and write to, relative to ``blocks.L``: ``mlp.hook_in`` / ``mlp.hook_out`` of
circuit-tracer's TransformerLens replacement MLP, i.e. our ``mlp_in.L`` -> ``mlp_out.L``)
and one ``layer_L.safetensors`` per layer, L = 0..n-1 with none missing, holding

    W_enc (d_transcoder, d_model), b_enc (d_transcoder,), W_dec (d_transcoder, d_model),
    b_dec (d_model,), W_skip (d_model, d_model) for a skip transcoder,
    activation_function.threshold (d_transcoder,) for a JumpReLU one,

such that circuit-tracer computes, on raw activations, ``z = act(x @ W_enc.T + b_enc)``
and ``y = z @ W_dec + b_dec + x @ W_skip.T``. Our transcoders keep an input scale s and
an output scale r (sae/transcoder.py: y = (D z + W_skip x s + b_dec) / (s r)); they are
folded into the weights here, so both compute the same function of the raw rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from sae_hooks.atomic import OutputKind, rebuilt_dir
from sae_hooks.eval.replacement import transcoder_layers

MLP_IN_HOOK = "mlp.hook_in"
MLP_OUT_HOOK = "mlp.hook_out"
CONFIG = "config.yaml"


def circuit_tracer_tensors(transcoder: nn.Module) -> dict[str, torch.Tensor]:
    """One transcoder's tensors in circuit-tracer's names and raw-activation scale."""
    for attr in ("encoder", "dictionary", "input_scale", "output_size", "input_size"):
        if not hasattr(transcoder, attr):
            raise TypeError(
                f"circuit-tracer export takes transcoders (sae_hooks.sae.Transcoder or "
                f"SkipTranscoder); {type(transcoder).__name__} lacks {attr!r}"
            )
    d_in, d_out = transcoder.input_size, transcoder.output_size
    if d_in != d_out:
        raise ValueError(
            f"circuit-tracer's transcoders map d_model -> d_model; this one maps {d_in} -> {d_out}"
        )
    with torch.no_grad():
        s = transcoder.input_scale.detach().double()
        r = getattr(transcoder, "output_scale", torch.ones(())).detach().double()
        weight = transcoder.encoder.weight.detach().double()
        n = weight.shape[0]
        b_enc = transcoder.encoder.bias
        b_dec = transcoder.dictionary.bias
        atoms = transcoder.get_dictionary().detach().double()
        out = {
            "W_enc": weight * s,
            "b_enc": torch.zeros(n, dtype=torch.float64) if b_enc is None else b_enc.double(),
            "W_dec": atoms / (s * r),
            "b_dec": torch.zeros(d_out, dtype=torch.float64)
            if b_dec is None
            else b_dec.double() / (s * r),
        }
        skip = getattr(transcoder, "W_skip", None)
        if skip is not None:
            out["W_skip"] = skip.detach().double() / r
        threshold = getattr(transcoder, "threshold", None)
        if isinstance(threshold, torch.Tensor):
            out["activation_function.threshold"] = threshold.detach().double().expand(n)
    return {k: v.float().contiguous().cpu() for k, v in out.items()}


def export_circuit_tracer(
    transcoders: Mapping[int | str, nn.Module] | Sequence[nn.Module],
    path: str | os.PathLike,
    *,
    model_name: str | None = None,
    feature_input_hook: str = MLP_IN_HOOK,
    feature_output_hook: str = MLP_OUT_HOOK,
    repo_id: str | None = None,
) -> Path:
    """Write a transcoder set (layer -> transcoder) as circuit-tracer 0.5 loads it.

    transcoders: a list (index = layer) or a mapping whose keys are layers (ints) or
    points naming them (``"mlp_out.3"``); layers must run 0..n-1 with none missing.
    ``config.yaml`` lists the layer files by absolute path, so
    ``circuit_tracer.utils.hf_utils.load_transcoders(yaml.safe_load(...))`` loads the
    directory as it is; with ``repo_id`` it lists ``hf://repo_id/layer_L.safetensors``
    instead, for a Hub repository holding the directory. Returns the directory.
    """
    layers = transcoder_layers(transcoders)
    tensors = {layer: circuit_tracer_tensors(tc) for layer, tc in layers.items()}
    _check_uniform(tensors)
    out = Path(path).expanduser().resolve()
    files = [f"layer_{layer}.safetensors" for layer in tensors]
    with rebuilt_dir(out, EXPORT_KIND) as folder:
        for (layer, state), name in zip(tensors.items(), files, strict=True):
            save_file(state, str(folder / name), metadata={"layer": str(layer), "format": "pt"})
        config = {
            "model_kind": "transcoder_set",
            "model_name": model_name,
            "feature_input_hook": feature_input_hook,
            "feature_output_hook": feature_output_hook,
            "scan": repo_id or model_name or out.name,
            "exported_by": "sae-hooks",
            "transcoders": [f"hf://{repo_id}/{n}" if repo_id else str(out / n) for n in files],
        }
        (folder / CONFIG).write_text(_yaml(config))
    return out


def _is_export(folder: Path) -> bool:
    config = folder / CONFIG
    return config.is_file() and 'exported_by: "sae-hooks"' in config.read_text()


EXPORT_KIND = OutputKind(
    "circuit-tracer export",
    frozenset({CONFIG} | {f"layer_{layer}.safetensors" for layer in range(1024)}),
    _is_export,
)
"""What an export folder holds (config.yaml, layer_L.safetensors): an existing `path`
holding anything else is refused, never overwritten."""


def find_transcoder_set(folder: str | os.PathLike) -> dict[int, Path]:
    """The trained transcoders directly under `folder` (a run, or a `train_many` /
    `train_transcoder_set` directory), by layer: each ``<name>/sae`` whose
    ``<name>/config.json`` reads ``mlp_in.L`` and predicts ``mlp_out.L``. Raises
    FileNotFoundError when there is none, ValueError when two claim one layer."""
    found: dict[int, Path] = {}
    for config in sorted(Path(folder).glob("*/config.json")):
        try:
            trained = json.loads(config.read_text())
        except (OSError, ValueError):
            continue
        point, target = trained.get("point"), trained.get("target_point")
        layer = _mlp_layer(point, "mlp_in")
        if layer is None or layer != _mlp_layer(target, "mlp_out"):
            continue
        if not (config.parent / "sae").is_dir():
            continue
        if layer in found:
            raise ValueError(
                f"two transcoders for layer {layer} in {folder}: {found[layer].parent.name} "
                f"and {config.parent.name}; export from a folder with one per layer"
            )
        found[layer] = config.parent / "sae"
    if not found:
        raise FileNotFoundError(
            f"no trained transcoder (mlp_in.L -> mlp_out.L) under {folder}: train one per "
            "layer (sae_hooks.eval.train_transcoder_set, or `sae-hooks train --point "
            "mlp_in.L --target-point mlp_out.L --name layer.L`)"
        )
    return dict(sorted(found.items()))


def _mlp_layer(point: object, kind: str) -> int | None:
    if not isinstance(point, str) or not point.startswith(f"{kind}."):
        return None
    tail = point[len(kind) + 1 :]
    return int(tail) if tail.isdigit() else None


def _check_uniform(tensors: Mapping[int, Mapping[str, torch.Tensor]]) -> None:
    """circuit-tracer reads d_transcoder and whether there is a skip from layer 0."""
    first = tensors[min(tensors)]
    for layer, state in tensors.items():
        if state["W_enc"].shape != first["W_enc"].shape:
            raise ValueError(
                f"circuit-tracer needs one shape for every layer: layer {layer} has W_enc "
                f"{tuple(state['W_enc'].shape)}, layer 0 {tuple(first['W_enc'].shape)}"
            )
        if set(state) != set(first):
            raise ValueError(
                f"circuit-tracer needs the same kind of transcoder at every layer: layer "
                f"{layer} has {sorted(state)}, layer 0 {sorted(first)}"
            )


def _yaml(config: Mapping[str, object]) -> str:
    """A flat YAML file (JSON scalars are YAML scalars), without a YAML dependency."""
    lines = []
    for key, value in config.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines += [f"  - {json.dumps(v)}" for v in value]
        elif value is not None:
            lines.append(f"{key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"
