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
A kill mid-write leaves a `.checkpoint-*` temporary; the next training in that run
directory removes it (`remove_temporaries`, under the run lock). A failed write (a
full disk) is one OSError naming the run directory, with the previous checkpoint
intact. Reading checks every file: a pickle, a torn safetensors file or a garbled
state.json is an error naming the file.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from sae_hooks.distributed import ProcessRank
from sae_hooks.jsonio import loads
from sae_hooks.sae.persistence import read_safetensors

CHECKPOINT = "checkpoint"
_OLD = "checkpoint.old"
_TMP_PREFIX = ".checkpoint-"
STATE_FILE = "state.json"


def find(run_dir: Path) -> Path | None:
    """The complete checkpoint in run_dir, if any."""
    for name in (CHECKPOINT, _OLD):
        path = run_dir / name
        if (path / STATE_FILE).is_file():
            return path
    return None


def remove_temporaries(run_dir: Path) -> list[Path]:
    """Delete the `.checkpoint-*` directories a killed write left behind; return them.

    Call it only while holding the run lock: a live training's temporary looks the same.
    """
    stale = sorted(run_dir.glob(_TMP_PREFIX + "*")) if run_dir.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


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
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=run_dir))
    try:
        _write(run_dir, tmp, sae=sae, optimizer=optimizer, tensors=tensors, state=state)
    except (OSError, SafetensorError) as err:
        code = _errno(err)
        previous = find(run_dir)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no checkpoint yet"
        detail = err if isinstance(err, OSError) else f"{os.strerror(code)} ({err})"
        raise OSError(
            code,
            f"cannot write a checkpoint in {run_dir}: {detail}; {kept}. Free space (or fix "
            "the location) and run the same training again to resume",
        ) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return run_dir / CHECKPOINT


def _write(
    run_dir: Path,
    tmp: Path,
    *,
    sae: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> None:
    """Fill tmp, fsync it, swap it in as run_dir/checkpoint."""
    opt_tensors, opt_state = _split_optimizer(optimizer.state_dict())
    _save_tensors(tmp / "sae.safetensors", sae.state_dict())
    _save_tensors(tmp / "optimizer.safetensors", opt_tensors)
    _save_tensors(tmp / "tensors.safetensors", {**tensors, **_torch_rng()})
    full = {**state, "optimizer": opt_state, "rng": _host_rng()}
    _write_synced(tmp / STATE_FILE, json.dumps(full, indent=1).encode())
    _fsync_dir(tmp)
    final, old = run_dir / CHECKPOINT, run_dir / _OLD
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(run_dir)
    shutil.rmtree(old, ignore_errors=True)


def _errno(err: BaseException) -> int:
    """The errno of an OSError, or the one safetensors' Rust IoError message carries."""
    if isinstance(err, OSError) and err.errno:
        return err.errno
    found = re.search(r"code: (\d+)", str(err))
    return int(found.group(1)) if found else errno.EIO


def read_state(path: Path) -> dict[str, Any]:
    """state.json of the checkpoint at `path`, checked to be a JSON object with a step."""
    file = path / STATE_FILE
    try:
        state = loads(file.read_text(), str(file))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{file} is not valid JSON ({err}); the checkpoint is damaged: delete {path} to "
            "restart the training from scratch"
        ) from None
    required = {"step": int, "config": dict, "loader": dict, "optimizer": dict, "rng": dict}
    if not isinstance(state, dict) or any(
        not isinstance(state.get(k), t) or isinstance(state.get(k), bool)
        for k, t in required.items()
    ):
        raise ValueError(
            f"{file} is not a checkpoint state: it must be a JSON object with "
            f"{', '.join(f'{k} ({t.__name__})' for k, t in required.items())}"
        )
    return state


def load(
    path: Path, *, sae: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore the SAE, optimiser and RNGs in place; return (trainer tensors, state)."""
    state = read_state(path)
    weights = read_safetensors(path / "sae.safetensors", device)
    try:
        sae.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(
            f"{path / 'sae.safetensors'} does not fit the configured SAE: {err}"
        ) from None
    opt_tensors = read_safetensors(path / "optimizer.safetensors", device)
    optimizer.load_state_dict(_join_optimizer(opt_tensors, state.pop("optimizer")))
    tensors = read_safetensors(path / "tensors.safetensors")
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
