"""Atomic, pickle-free checkpoints of a training run.

Layout of `run_dir/checkpoint/`:

    sae.safetensors         the SAE's state_dict (training scale: input_scale = 1)
    optimizer.safetensors   every tensor of the optimiser state, keyed "<param>.<name>"
    tensors.safetensors     trainer tensors: fire statistics, metric sums, RNG states
    state.json              step, loader position, python/numpy RNG, optimiser scalars,
                            param groups, and the resolved TrainConfig

A checkpoint is written into a fresh temporary directory inside run_dir, every file
fsynced, then swapped in by two renames: checkpoint -> checkpoint.old, tmp ->
checkpoint. A crash at any point leaves either the new or the old checkpoint
complete on disk (`load` falls back to checkpoint.old when checkpoint is missing).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sae_hooks.distributed import ProcessRank

CHECKPOINT = "checkpoint"
_OLD = "checkpoint.old"


def find(run_dir: Path) -> Path | None:
    """The complete checkpoint in run_dir, if any."""
    for name in (CHECKPOINT, _OLD):
        path = run_dir / name
        if (path / "state.json").is_file():
            return path
    return None


def save(
    run_dir: Path,
    *,
    sae: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> Path:
    """Write a checkpoint atomically; `state` must be JSON-able."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=run_dir))
    try:
        opt_tensors, opt_state = _split_optimizer(optimizer.state_dict())
        _save_tensors(tmp / "sae.safetensors", sae.state_dict())
        _save_tensors(tmp / "optimizer.safetensors", opt_tensors)
        _save_tensors(tmp / "tensors.safetensors", {**tensors, **_torch_rng()})
        full = {**state, "optimizer": opt_state, "rng": _host_rng()}
        _write_synced(tmp / "state.json", json.dumps(full, indent=1).encode())
        _fsync_dir(tmp)
        final, old = run_dir / CHECKPOINT, run_dir / _OLD
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(run_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def load(
    path: Path, *, sae: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore the SAE, optimiser and RNGs in place; return (trainer tensors, state)."""
    state = json.loads((path / "state.json").read_text())
    sae.load_state_dict(load_file(path / "sae.safetensors", device=str(device)))
    opt_tensors = load_file(path / "optimizer.safetensors", device=str(device))
    optimizer.load_state_dict(_join_optimizer(opt_tensors, state.pop("optimizer")))
    tensors = load_file(path / "tensors.safetensors")
    _set_rng(tensors, state.pop("rng"))
    return {k: v.to(device) for k, v in tensors.items() if not k.startswith("rng.")}, state


# ------------------------------------------------------------------------- optimiser


def _split_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors go to safetensors; scalars and param groups to JSON."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in sd["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        # Adam keeps its step counter on the CPU unless capturable/fused.
        state.setdefault(int(index), {})[name] = value.cpu() if value.dim() == 0 else value
    for index, entry in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


# ------------------------------------------------------------------------- RNG


def _torch_rng() -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def _host_rng() -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
        "python": [version, list(internal), gauss_next],
    }


def _set_rng(tensors: dict[str, torch.Tensor], host: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    name, keys, pos, has_gauss, gauss = host["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = host["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ------------------------------------------------------------------------- files


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path))
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_every_rank_sees(
    found: Path | None, rank: ProcessRank, device: torch.device, run_dir: Path
) -> None:
    """Every rank must resume from the same checkpoint, or none may."""
    if not rank.distributed:
        return
    seen = rank.all_reduce_sum_(torch.tensor([float(found is not None)], device=device))
    if 0 < int(seen.item()) < rank.world:
        raise RuntimeError(
            f"only {int(seen.item())} of {rank.world} processes see a checkpoint in {run_dir}; "
            "run_dir must be on a filesystem every rank (every node) can read"
        )
