"""Where activations meet models: hook points, capture with early stop, SAE splicing."""

from sae_hooks.hooks.capture import ActivationBatch, capture, capture_batch
from sae_hooks.hooks.points import HookLocation, list_hook_points, resolve_point
from sae_hooks.hooks.splice import (
    AddToLatents,
    ClampLatents,
    LatentEdit,
    ScaleLatents,
    Splice,
    ZeroLatents,
    splice,
    splice_transcoder,
)

__all__ = [
    "ActivationBatch",
    "AddToLatents",
    "ClampLatents",
    "HookLocation",
    "LatentEdit",
    "ScaleLatents",
    "Splice",
    "ZeroLatents",
    "capture",
    "capture_batch",
    "list_hook_points",
    "resolve_point",
    "splice",
    "splice_transcoder",
]
