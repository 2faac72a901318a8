"""A Trainer's checkpoint dict (nanoGPT's layout) on disk, and the check that it belongs here.

`Trainer.state_dict()` composes the state_dicts of its parts (dead-latent tracking,
sparsity coefficient, log window) under "parts" with the loop's own counters (step,
input scale, AuxK switch), the loader's position and the config. This module maps that
dict onto checkpoint.py's files and back, in the layout earlier versions wrote: the
parts' tensors in tensors.safetensors, every other value in state.json, each under the
part's own key. It knows no Trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from . import checkpoint
from .config import RESUME_FREE_FIELDS, TrainConfig


def check_resumable(config: TrainConfig, path: Path, state: dict[str, Any]) -> None:
    """The checkpoint's config must be this one (bar RESUME_FREE_FIELDS), its step in range.

    A config saved flat by an earlier version (top_k at the top level) is read through
    TrainConfig.from_dict, so it compares equal to the same settings nested."""
    file = path / checkpoint.STATE_FILE
    try:
        saved = TrainConfig.from_dict(state["config"])
    except (ValueError, TypeError) as err:
        raise ValueError(f"{file} holds an invalid training config: {err}") from None
    ours, theirs = config.to_dict(), saved.to_dict()
    diff = sorted(k for k, v in theirs.items() if k not in RESUME_FREE_FIELDS and ours[k] != v)
    if diff:  # before the step check: a lowered `steps` is a changed setting, not damage
        changes = "; ".join(f"{k}: {theirs[k]!r} in the checkpoint, {ours[k]!r} now" for k in diff)
        raise ValueError(
            f"cannot resume {path}: the config differs in {diff} ({changes}). Only "
            f"{sorted(RESUME_FREE_FIELDS)} may change between runs; to resume, pass the "
            "checkpoint's values (a default that changed between versions resolves "
            "differently)"
        )
    if not 0 <= state["step"] <= config.steps:
        raise ValueError(
            f"{file} is at step {state['step']}, outside this run's 0..{config.steps} "
            f"steps; the checkpoint is damaged or from another run: delete {path} to restart"
        )


def save(
    run_dir: Path, *, sae: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> Path:
    """Write a checkpoint of `state` (a Trainer.state_dict()) with the SAE and optimiser."""
    tensors: dict[str, torch.Tensor] = {}
    plain = {k: v for k, v in state.items() if k != "parts"}
    for part in state["parts"].values():
        for key, value in part.items():
            (tensors if isinstance(value, torch.Tensor) else plain)[key] = value
    return checkpoint.save(run_dir, sae=sae, optimizer=optimizer, tensors=tensors, state=plain)


def load(
    path: Path,
    *,
    sae: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    like: dict[str, Any],
) -> dict[str, Any]:
    """Restore the SAE and optimiser from the checkpoint at path (and the RNGs); the
    rest as a state dict shaped like `like` (the resuming Trainer's own state_dict):
    each part gets the keys its state_dict has, where the checkpoint holds them."""
    tensors, plain = checkpoint.load(path, sae=sae, optimizer=optimizer, device=device)
    found = {**plain, **tensors}
    parts = {
        name: {k: found[k] for k in part if k in found} for name, part in like["parts"].items()
    }
    return {**{k: v for k, v in plain.items() if k in like}, "parts": parts}
