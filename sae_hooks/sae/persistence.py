"""Reading SAE files back: `load_sae`, and the safetensors readers and checks it uses.

A directory written by `SAE.save` (sae/saving.py) is rebuilt through the registry in
base.py: sizes come from the weights file's header first (nothing allocated before the
file agrees with config.json), then the tensors, refused if NaN or infinite. The
safetensors parser never unpickles; a pickle or torch.save archive is named as such.
This module sits above base.py: base.py never imports it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .base import SAE, SAE_REGISTRY
from .saving import CONFIG_FILE, WEIGHTS_FILE


def load_sae(path: str | os.PathLike, device: str | torch.device = "cpu") -> SAE:
    """Rebuild any registered SAE variant from a directory written by `SAE.save`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no SAE at {path}")
    if not path.is_dir():
        raise ValueError(
            f"{path} is a file{_pickle_hint(path)}; load_sae expects a directory with "
            f"{CONFIG_FILE} and {WEIGHTS_FILE} (written by SAE.save)"
        )
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} has no {CONFIG_FILE}; is it an SAE saved by SAE.save?")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} must hold a JSON object")
    arch = config.get("architecture")
    if arch not in SAE_REGISTRY:
        raise ValueError(
            f"unknown SAE architecture {arch!r} in {config_path}; known: {sorted(SAE_REGISTRY)}"
        )
    weights = path / WEIGHTS_FILE
    # Sizes first, from the header alone: a config.json claiming 10**12 latents must not
    # allocate anything before the weights file contradicts it.
    skeleton = SAE_REGISTRY[arch].from_config(config, device="meta")
    check_header(skeleton, read_safetensors_header(weights), weights)
    sae = SAE_REGISTRY[arch].from_config(config, device=device)
    tensors = read_safetensors(weights, device)
    check_values(tensors, weights)
    sae.load_weights(tensors)
    return sae.eval()  # inference is never silently in train mode (BatchTopK: batch top-k)


def read_safetensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file; pickles and damaged files are clear errors."""
    if not path.is_file():
        raise FileNotFoundError(f"missing weights file {path}")
    try:  # the safetensors parser never unpickles; the pickle hint only explains a failure
        return load_file(path, device=str(device))  # (a header of 128 + 256 k bytes starts 0x80)
    except (SafetensorError, OSError, ValueError) as err:
        raise _unreadable(path, err) from None


def read_safetensors_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, safetensors dtype such as "F32") from the header, reading no tensor."""
    if not path.is_file():
        raise FileNotFoundError(f"missing weights file {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {
                k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype())
                for k in f.keys()  # noqa: SIM118 - safe_open has no __iter__
            }
    except (SafetensorError, OSError, ValueError) as err:
        raise _unreadable(path, err) from None


def _unreadable(path: Path, err: Exception) -> ValueError:
    hint = _pickle_hint(path)
    if hint:
        return ValueError(
            f"{path} is not a safetensors file{hint}; sae-hooks only reads safetensors "
            "and never unpickles"
        )
    return ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}")


FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
"""The safetensors dtypes an SAE's floating tensors may be stored in."""


def check_header(skeleton: SAE, header: dict[str, tuple[tuple[int, ...], str]], path: Path) -> None:
    """The file's tensor names, shapes and dtypes must be those `skeleton` (on the meta
    device: nothing allocated) expects; floating tensors must be stored as floats."""
    try:
        skeleton._match_layout(header)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    wrong = []
    for name, tensor in skeleton.state_dict().items():
        shape = header[name][0]
        if tuple(tensor.shape) != shape:
            wrong.append(f"{name} is {list(shape)} in the file, {list(tensor.shape)} by the config")
    if wrong:
        raise ValueError(
            f"the weights do not fit the config: {path} does not match "
            f"{path.parent / CONFIG_FILE}: {'; '.join(wrong)}"
        )
    floats = [n for n, t in skeleton.state_dict().items() if t.is_floating_point()]
    check_float_dtypes(header, floats, path)


def check_float_dtypes(
    header: dict[str, tuple[tuple[int, ...], str]], names: Iterable[str], path: Path
) -> None:
    """The tensors `names` must be stored as floating point (an int32 or bool weight is a
    damaged or foreign file, never cast silently)."""
    not_float = [f"{n} ({header[n][1]})" for n in names if header[n][1] not in FLOAT_DTYPES]
    if not_float:
        raise ValueError(
            f"{path} stores {', '.join(not_float)}; SAE weights must be floating point "
            f"(one of {', '.join(FLOAT_DTYPES)})"
        )


def check_values(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """What every SAE loader checks in the tensors it read, whatever the format: no NaN or
    infinity anywhere, and an `input_scale` (if any) above zero."""
    check_finite(tensors, path)
    scale = tensors.get("input_scale")
    if scale is not None and scale.is_floating_point() and not bool((scale > 0).all()):
        raise ValueError(
            f"{path}: input_scale is {scale.flatten()[:4].tolist()}; it must be a positive "
            "number (the SAE multiplies its input by it and divides its output by it)"
        )


def check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse NaN / inf weights, buffers and thresholds (one pass at load, never per step)."""
    bad = [
        f"{name} ({int((~torch.isfinite(t)).sum())} of {t.numel()})"
        for name, t in tensors.items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise ValueError(
            f"{path} holds NaN or infinite values in {', '.join(bad)}; the SAE is damaged "
            "(a diverged training?) and cannot be used"
        )


def _pickle_hint(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80":
        return " (it looks like a pickle)"
    if head == b"PK\x03\x04":
        return " (it looks like a torch.save zip archive, which holds a pickle)"
    return ""
