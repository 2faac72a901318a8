"""`sae-hooks inspect`: what a path holds (run directory, store, SAE, training run),
or the hook points of a model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sae_hooks.cli.common import load_model
from sae_hooks.cli.options import Option, add_command, model_options
from sae_hooks.rundir import RunDir

NAME = "inspect"
TABLE = NAME
HELP = (
    "Say what a path holds (run directory, store, SAE, training run, sweep, export) "
    "or list hook points."
)
EXAMPLE = "sae-hooks inspect cache/demo    |    sae-hooks inspect --model gpt2"


def options() -> tuple[Option, ...]:
    return (
        Option(
            ("path",),
            "a run directory, a store (path or URL), an SAE directory, a sweep directory "
            "or an export (SAELens, Hugging Face layout, hf://...)",
            nargs="?",
        ),
        *model_options(),
        Option(("--config",), "run.toml ([model] and [inspect] tables)"),
    )


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return add_command(sub, NAME, HELP, options(), run, example=EXAMPLE)


def run(args: argparse.Namespace) -> None:
    if args.model or args.family:
        from sae_hooks.hooks import list_hook_points

        model, _ = load_model(args)
        print("\n".join(list_hook_points(model)))
    elif args.path:
        print(describe(args.path))
    else:
        raise ValueError("give a PATH to summarise, or --model (or --family F --tiny)")


def describe(path: str) -> str:
    """What lives at `path` (run directory, training run, SAE directory or store), in words."""
    from sae_hooks.interop import describe_pretrained, is_pretrained_location
    from sae_hooks.interop.resolve import METADATA_FILE
    from sae_hooks.runrecord import read_run_record
    from sae_hooks.train.many import SWEEP_FILE

    p = Path(path)
    if is_pretrained_location(path):  # hf://org/repo/..., or a SAELens-layout directory
        return _export_kind(p) + describe_pretrained(path)
    run = RunDir(p)
    if (p / SWEEP_FILE).is_file():
        return _describe_sweep(p)
    if (p / METADATA_FILE).is_file() and (p / "model.safetensors").is_file():
        return _export_kind(p) + describe_pretrained(path)
    if (p / RunDir.TRAIN_CONFIG).is_file() and (p / "model.safetensors").is_file():
        return "SAE directory " + _describe_sae(p)
    if RunDir.is_sae_home(p) and (p / RunDir.TRAIN_CONFIG).is_file():
        return f"training run at {p}\n  SAE " + _describe_sae(p / RunDir.SAE)
    if run.record.is_file() or run.store.is_dir() or run.sae_home().is_dir():
        return _describe_run(run, read_run_record(p))
    if run.summary.is_file():
        return run.summary.read_text()
    if p.exists() and not (p / "zarr.json").is_file() and "://" not in path:
        raise ValueError(
            f"{p} is not a run directory (run.json, store/, train/), a store (zarr.json) "
            "or an SAE directory (config.json + model.safetensors)"
        )
    return "store " + _describe_store(path)


def _export_kind(p: Path) -> str:
    """The first line for an export directory: which tool's layout it is in."""
    from sae_hooks.interop.saelens_config import SAELENS_CONFIG, SAELENS_WEIGHTS

    if not p.is_dir():
        return ""
    if (p / SAELENS_CONFIG).is_file():
        files = f"{SAELENS_CONFIG} + {SAELENS_WEIGHTS}: SAELens's SAE.load_from_disk reads it"
        return f"SAELens export at {p} ({files})\n"
    return f"Hugging Face layout export at {p} (save_pretrained; sae_hooks.load_sae reads it)\n"


def _describe_sweep(p: Path) -> str:
    """A sweep directory (train_many): each SAE with its settings and final metrics."""
    from sae_hooks.train.many import read_sweep

    saes = read_sweep(p)
    lines = [f"sweep directory at {p}: {len(saes)} SAEs (sae-hooks sweep / train_many)"]
    for entry in saes:
        cfg, m = entry.get("config", {}), entry.get("metrics", {})
        variant = cfg.get("variant") or {}
        k = variant.get("k_per_token") or cfg.get("target_l0")
        sparsity = f", k {k}" if k else ""
        fvu, l0 = m.get("val/fvu", m.get("fvu")), m.get("val/l0", m.get("l0"))
        done = f"step {entry.get('step')}/{cfg.get('steps')}"
        got = f", FVU {fvu:.4f}, L0 {l0:.2f}" if fvu is not None and l0 is not None else ""
        lines.append(
            f"  {entry.get('name')}/: {cfg.get('architecture')} at {cfg.get('point')}, "
            f"{cfg.get('nb_concepts')} latents{sparsity}; {done}{got}"
        )
    lines.append(f"  frontier and table: sae-hooks report {p}")
    return "\n".join(lines)


def _describe_sae(p: Path) -> str:
    from sae_hooks.sae import load_sae

    sae = load_sae(p)
    n = sum(t.numel() for t in sae.state_dict().values())
    config = json.dumps(sae.config(), indent=2)
    return f"at {p}: {type(sae).__name__}, {n:,} numbers\n{config}"


def _describe_store(path: str) -> str:
    from sae_hooks.store import open_store

    store = open_store(path)
    lines = [
        f"at {path}: {store.n_rows:,} rows, dtype {store.dtype}",
        f"model: {store.model}",
        f"source: {store.source}",
    ]
    for point in store.points:
        stats = store.stats(point)
        lines.append(
            f"  {point}: d_model {store.d_model(point)}, mean squared norm "
            f"{float(stats.mean_sq_norm):.4g}"
        )
    return "\n".join(lines)


def _describe_run(run: RunDir, record: Any) -> str:
    """A run directory: its record, its store and each SAE trained on it."""
    from sae_hooks.sae import load_sae

    lines = [f"run directory at {run.root}"]
    if record is not None:
        lines += ["  " + line for line in record.summary().splitlines()]
    else:
        lines.append("  (no run.json: made before runs recorded their model; pass --model)")
    if run.store.is_dir():
        lines.append("  store: " + _describe_store(str(run.store)).replace("\n", "\n    "))
    for name in run.sae_names():
        sae = load_sae(run.sae_dir(name))
        lines.append(f"  SAE {name}/: {type(sae).__name__}, {sae.nb_concepts:,} latents")
    if (run.sweep / "sweep.json").is_file():
        lines.append(f"  sweep/: a grid of SAEs (sae-hooks inspect {run.sweep})")
    outputs = (run.eval_file(), run.ablation_file(), run.summary, run.report_dir() / "index.html")
    lines += [f"  {p.relative_to(run.root).as_posix()}" for p in outputs if p.exists()]
    return "\n".join(lines)
