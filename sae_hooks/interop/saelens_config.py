"""An SAELens directory read safely: cfg.json's values and the header of
sae_weights.safetensors checked against each other before any tensor is read or any SAE
allocated (a cfg.json claiming 10**12 latents allocates nothing), with the rules
`sae.persistence` applies to our own files (floating dtypes, no extra tensors, finite
values, a positive input scale).

SAELens settings with no exact equivalent are refused by name: hook_head_index,
reshape_activations, and the per-input normalisations `constant_norm_rescale` and
`layer_norm` (each input row is rescaled by its own norm, or centred and divided by its
own standard deviation, at run time: no fixed scale folds into the weights).
`expected_average_only_in` is run as SAELens's disk loader runs it, with no scale, unless
the directory holds the training's activation_scaler.json, whose factor becomes the SAE's
input_scale (inputs times it, outputs divided by it, as SAELens's ActivationScaler does).
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sae_hooks.jsonio import loads
from sae_hooks.sae.persistence import (
    check_float_dtypes,
    check_values,
    read_safetensors,
    read_safetensors_header,
)

SAELENS_CONFIG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
ACTIVATION_SCALER = "activation_scaler.json"
BATCH_TOPK = ("batchtopk", "matryoshka_batchtopk")  # SAELens training checkpoints
SAELENS_ARCHITECTURES = ("standard", "topk", "jumprelu", *BATCH_TOPK)
_NORMALISATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
_PER_INPUT = {
    "constant_norm_rescale": "rescales each input row to norm sqrt(d_in) by its own factor",
    "layer_norm": "centres each input row and divides it by its own standard deviation",
}
_K_DEFAULT = 100  # SAELens's default k for TopK and BatchTopK


@dataclass(frozen=True)
class SaelensFile:
    """A checked SAELens directory: its cfg.json, architecture, sizes (from the weights
    header, equal to cfg.json's where it gives them), k, Matryoshka group sizes and the
    activation scale SAELens's training used (None: none)."""

    path: Path
    cfg: dict[str, Any]
    arch: str
    d_in: int
    d_sae: int
    k: int | float | None
    group_sizes: list[int] | None
    scaling_factor: float | None

    @property
    def weights(self) -> Path:
        return self.path / SAELENS_WEIGHTS


def read_saelens_config(path: Path) -> tuple[dict[str, Any], str]:
    """cfg.json and its SAELens architecture, with every value this reader uses checked
    for type and range (reads no weights)."""
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory with {SAELENS_CONFIG} and {SAELENS_WEIGHTS}")
    cfg_path = path / SAELENS_CONFIG
    try:
        cfg = loads(cfg_path.read_text(), str(cfg_path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} has no {SAELENS_CONFIG}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{cfg_path} is not valid JSON: {err}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path} must hold a JSON object")
    arch = cfg.get("architecture", "standard")
    if arch not in SAELENS_ARCHITECTURES:
        raise ValueError(
            f"unsupported SAELens architecture {arch!r}; supported: {list(SAELENS_ARCHITECTURES)}"
        )
    _refuse_unrepresentable(cfg, cfg_path)
    normalisation(cfg, cfg_path)
    for key in ("d_in", "d_sae"):
        if key in cfg:
            _positive_int(cfg[key], key, cfg_path)
    return cfg, arch


def open_saelens(path: str | Path) -> SaelensFile:
    """The directory's cfg.json checked, then its weights' names, dtypes and shapes
    checked against it from the header alone."""
    path = Path(path)
    cfg, arch = read_saelens_config(path)
    weights = path / SAELENS_WEIGHTS
    d_in, d_sae = _check_header(read_safetensors_header(weights), arch, weights)
    cfg_path = path / SAELENS_CONFIG
    for key, size in (("d_in", d_in), ("d_sae", d_sae)):
        if key in cfg and cfg[key] != size:
            raise ValueError(f"{cfg_path} says {key}={cfg[key]} but the weights have {size}")
    return SaelensFile(
        path=path,
        cfg=cfg,
        arch=arch,
        d_in=d_in,
        d_sae=d_sae,
        k=_k(cfg, arch, d_sae, cfg_path),
        group_sizes=_group_sizes(cfg, d_sae, cfg_path) if arch == "matryoshka_batchtopk" else None,
        scaling_factor=_scaling_factor(path, cfg, cfg_path),
    )


def read_saelens_tensors(file: SaelensFile, device: str | torch.device) -> dict[str, torch.Tensor]:
    """The weights of a checked directory, refused if any value is NaN or infinite."""
    tensors = read_safetensors(file.weights, device)
    check_values(tensors, file.weights)
    return tensors


def normalisation(cfg: dict[str, Any], where: Path) -> str:
    """cfg.json's normalize_activations ("none" or "expected_average_only_in"; SAELens < 6
    wrote false / true); the per-input normalisations are refused."""
    value = cfg.get("normalize_activations", "none")
    value = {None: "none", False: "none", True: "expected_average_only_in"}.get(value, value)
    if value in _PER_INPUT:
        raise ValueError(
            f"{where}: normalize_activations={value!r} {_PER_INPUT[value]} at run time and "
            "undoes it on the output; no fixed scale folded into the weights can do that, "
            "and sae-hooks SAEs have no per-input normalisation, so this SAE cannot be imported"
        )
    if value not in _NORMALISATIONS:
        raise ValueError(
            f"{where}: normalize_activations={value!r} is not one of {list(_NORMALISATIONS)}"
        )
    return value


def _refuse_unrepresentable(cfg: dict[str, Any], where: Path) -> None:
    """SAELens settings that change what the SAE computes and have no equivalent here."""
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    head = cfg.get("hook_head_index")
    head = meta.get("hook_head_index") if head is None else head
    if head is not None:
        raise ValueError(
            f"{where}: hook_head_index={head!r} (an SAE on one attention head) is not supported; "
            "sae-hooks SAEs read whole hook-point activations"
        )
    reshape = cfg.get("reshape_activations", "none")
    if reshape not in ("none", None):
        raise ValueError(
            f"{where}: reshape_activations={reshape!r} is not supported (only 'none'): the SAE "
            "would read per-head activations reshaped by SAELens"
        )
    for key in ("rescale_acts_by_decoder_norm", "apply_b_dec_to_input"):
        if key in cfg and not isinstance(cfg[key], bool):
            raise ValueError(f"{where}: {key} must be true or false, got {cfg[key]!r}")


def _check_header(
    header: dict[str, tuple[tuple[int, ...], str]], arch: str, weights: Path
) -> tuple[int, int]:
    """(d_in, d_sae) from the header; exactly the tensors the architecture holds, all
    floating point, with shapes that agree with each other."""
    required = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if arch == "jumprelu" else [])
    optional = ["topk_threshold", "threshold"] if arch in BATCH_TOPK else []
    missing = [n for n in required if n not in header]
    if missing:
        raise ValueError(f"SAELens {arch!r} weights lack {missing}; found {sorted(header)}")
    extra = sorted(set(header) - set(required) - set(optional))
    if extra:
        raise ValueError(
            f"{weights} holds tensors an SAELens {arch!r} SAE does not have: {extra} "
            f"(expected {required + optional})"
        )
    check_float_dtypes(header, sorted(header), weights)
    shape = {n: header[n][0] for n in header}
    if len(shape["W_dec"]) != 2:
        raise ValueError(f"{weights}: W_dec must be 2-D (d_sae, d_in), got {list(shape['W_dec'])}")
    nb, d = shape["W_dec"]
    expected = {"W_enc": (d, nb), "b_enc": (nb,), "b_dec": (d,), "threshold": (nb,)}
    bad = [n for n, s in expected.items() if n in shape and shape[n] != s]
    if arch in BATCH_TOPK:  # a running threshold: one value, or one per latent (all equal)
        bad = [n for n in bad if n != "threshold" or shape[n] not in ((), (1,))]
        if "topk_threshold" in shape and shape["topk_threshold"] not in ((), (1,), (nb,)):
            bad.append("topk_threshold")
    if bad or nb < 1 or d < 1:
        found = ", ".join(f"{n} {tuple(shape[n])}" for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
        raise ValueError(f"inconsistent SAELens weights: {found} ({', '.join(bad) or 'empty'})")
    return d, nb


def _positive_int(value: Any, key: str, where: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        kind = f" (a {type(value).__name__})" if not isinstance(value, int) else ""
        raise ValueError(f"{where}: {key} must be a positive integer, got {value!r}{kind}")
    return value


def _k(cfg: dict[str, Any], arch: str, d_sae: int, where: Path) -> int | float | None:
    """k: a positive int for TopK (per row), a positive number for BatchTopK (the average
    per row over a batch); at most d_sae. SAELens's default (100) when absent."""
    if arch not in ("topk", *BATCH_TOPK):
        return None
    k = cfg.get("k", _K_DEFAULT)
    if arch == "topk":
        _positive_int(k, "k", where)
    elif isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < k < math.inf:
        raise ValueError(f"{where}: k must be a positive number, got {k!r}")
    if k > d_sae:
        given = "" if "k" in cfg else " (SAELens's default: cfg.json gives none)"
        raise ValueError(f"{where}: k={k}{given} exceeds d_sae={d_sae}")
    return k


def _group_sizes(cfg: dict[str, Any], d_sae: int, where: Path) -> list[int]:
    """Matryoshka's group sizes from matryoshka_widths (strictly increasing prefix
    widths; d_sae is added as the last one if missing, as SAELens does)."""
    widths = cfg.get("matryoshka_widths")
    if not isinstance(widths, list) or not widths:
        raise ValueError(f"{where}: matryoshka_widths must be a non-empty list, got {widths!r}")
    widths = [_positive_int(w, "matryoshka_widths[]", where) for w in widths]
    if widths[-1] < d_sae:
        widths.append(d_sae)
    if widths[-1] != d_sae or any(a >= b for a, b in itertools.pairwise(widths)):
        raise ValueError(
            f"{where}: matryoshka_widths {widths} must increase strictly up to d_sae={d_sae}"
        )
    return [b - a for a, b in itertools.pairwise([0, *widths])]


def _scaling_factor(path: Path, cfg: dict[str, Any], where: Path) -> float | None:
    """expected_average_only_in's factor from activation_scaler.json (SAELens's training
    writes it beside a checkpoint); None, with a warning, when there is none."""
    if normalisation(cfg, where) != "expected_average_only_in":
        return None
    scaler = path / ACTIVATION_SCALER
    factor = None
    if scaler.is_file():
        try:
            factor = loads(scaler.read_text(), str(scaler)).get("scaling_factor")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
            raise ValueError(f"{scaler} is not a JSON object: {err}") from None
    if factor is None:
        warnings.warn(
            f"{where}: normalize_activations='expected_average_only_in' and no scaling factor "
            f"({ACTIVATION_SCALER}): run without one, as SAELens's disk loader does",
            stacklevel=3,
        )
        return None
    if isinstance(factor, bool) or not isinstance(factor, (int, float)):
        raise ValueError(f"{scaler}: scaling_factor must be a number, got {factor!r}")
    if not 0 < factor < math.inf:
        raise ValueError(f"{scaler}: scaling_factor must be positive and finite, got {factor}")
    return float(factor)
