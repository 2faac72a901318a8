"""Where tensors go: a model's device, input dicts moved there, an SAE's device and dtype.

The one copy of these for capture, splice, evaluation, ablation and the report. It
imports nothing from the package, so any layer (hooks included) can use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn


def model_device(model: Any) -> torch.device:
    """Where the model's inputs go: the device of its first parameter (the CPU if it has none)."""
    parameters = getattr(model, "parameters", None)
    param = next(parameters(), None) if callable(parameters) else None
    return param.device if param is not None else torch.device("cpu")


def to_device(inputs: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """A copy of an input dict with its tensors on `device` (other values as they are)."""
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in inputs.items()}


def sae_device_dtype(sae: Any, like: Tensor | None = None) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) the SAE computes in, to move activations to before encoding: those
    of its first floating parameter or buffer. An SAE that holds none (or is no
    nn.Module) computes where `like` is, in its dtype; without `like`, float32 on the CPU."""
    if isinstance(sae, nn.Module):
        for t in (*sae.parameters(), *sae.buffers()):
            if t.is_floating_point():
                return t.device, t.dtype
    if like is not None:
        return like.device, like.dtype
    return torch.device("cpu"), torch.float32


class DeviceUnavailableError(ValueError):
    """A device this torch build or this machine cannot run on."""


def available_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device, refused up front when this torch cannot use it
    (CUDA on a CPU-only build or a machine without a GPU, a GPU index past the last)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceUnavailableError(
            f"{device!r} is not a torch device ({err}); use e.g. 'cpu', 'cuda', 'cuda:1', 'mps'"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "is built without CUDA" if torch.version.cuda is None else "sees no GPU"
            raise DeviceUnavailableError(
                f"device {str(device)!r} is not available: this torch {torch.__version__} {why}; "
                "use --device cpu (device='cpu')"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceUnavailableError(
                f"device {str(device)!r} is not available: this machine has {count} GPU(s), "
                f"cuda:0..cuda:{count - 1}"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailableError(
            f"device {str(device)!r} is not available on this machine; use 'cpu'"
        )
    return dev
