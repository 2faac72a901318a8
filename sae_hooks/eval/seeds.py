"""Seed noise: how much of a difference between SAEs is just the random seed.

Given SAEs trained alike but for the seed (a `sae-hooks sweep` over seeds, or any
list of run directories), `seed_report` gives

- every numeric metric as mean +- std over the seeds (sample std, n - 1);
- decoder reproducibility: for each ordered pair of seeds (A, B), the mean over
  A's atoms of the best cosine with any of B's atoms (matched max-cosine), averaged
  over pairs; next to it the same figure for random unit dictionaries of the same
  shape (the null: what chance alone gives in d dimensions with that many atoms).
  An SAE family whose reproducibility is near the null learns a different
  dictionary every seed; one near 1 learns the same one.

A difference between two configurations smaller than about two seed stds is not
evidence of anything.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sae_hooks.eval.core import CORE_FILE, read_core_eval
from sae_hooks.sae import load_sae


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """{"mean", "std", "n"}: std is the sample std (n - 1), 0 for a single value."""
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    mean = sum(finite) / n
    var = sum((v - mean) ** 2 for v in finite) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "std": math.sqrt(var), "n": n}


def aggregate_metrics(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """mean +- std over seeds of every numeric key (nested dicts flattened with '/')."""
    flat = [_flatten(m) for m in per_seed]
    keys = sorted({k for m in flat for k in m})
    return {k: mean_std([m[k] for m in flat if k in m]) for k in keys}


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def _unit_atoms(sae: nn.Module | Tensor) -> Tensor:
    atoms = sae if isinstance(sae, Tensor) else sae.get_dictionary()
    return torch.nn.functional.normalize(atoms.detach().float().cpu(), dim=-1)


def matched_max_cosine(a: nn.Module | Tensor, b: nn.Module | Tensor) -> float:
    """Mean over a's atoms of the best cosine with any of b's atoms (not symmetric)."""
    return float((_unit_atoms(a) @ _unit_atoms(b).T).max(dim=1).values.mean())


def random_dictionary_null(
    nb_concepts: int, d: int, *, pairs: int = 3, seed: int = 0
) -> dict[str, float]:
    """matched_max_cosine between independent random unit dictionaries of this shape."""
    gen = torch.Generator().manual_seed(seed)
    values = [
        matched_max_cosine(
            torch.randn(nb_concepts, d, generator=gen), torch.randn(nb_concepts, d, generator=gen)
        )
        for _ in range(pairs)
    ]
    return mean_std(values)


def decoder_reproducibility(saes: Sequence[nn.Module | Tensor]) -> dict[str, Any]:
    """matched max-cosine over every ordered pair of seeds, and its random null."""
    if len(saes) < 2:
        raise ValueError(f"decoder reproducibility needs at least 2 SAEs, got {len(saes)}")
    atoms = [_unit_atoms(s) for s in saes]
    shapes = {tuple(a.shape) for a in atoms}
    if len(shapes) != 1:
        raise ValueError(f"the SAEs' dictionaries differ in shape: {sorted(shapes)}")
    values = [
        matched_max_cosine(atoms[i], atoms[j])
        for i in range(len(atoms))
        for j in range(len(atoms))
        if i != j
    ]
    n, d = atoms[0].shape
    return {"matched_max_cosine": mean_std(values), "null": random_dictionary_null(n, d)}


def _run_metrics(run: Path) -> dict[str, Any]:
    """What a run directory records: eval_core.json / eval.json metrics, and the log's
    last value of each numeric key (training and held-out)."""
    out: dict[str, Any] = {}
    for candidate in (run, run.parent):
        log = candidate / "log.jsonl"
        if log.is_file():
            from sae_hooks.train.runlog import read_log

            for record in read_log(log):
                out.update({k: v for k, v in record.items() if k not in ("step", "warnings")})
            break
    for name in ("eval.json", "eval_core.json"):
        for candidate in (run, run.parent):
            path = candidate / name
            if path.is_file():
                data = json.loads(path.read_text())
                if name == CORE_FILE:  # None back where the file holds SAEBench's -1
                    data = {"eval_result_metrics": dict(read_core_eval(path))}
                out[name.removesuffix(".json")] = data.get("eval_result_metrics", data)
                break
    return out


def _load(run: nn.Module | str | Path) -> tuple[nn.Module, dict[str, Any]]:
    if isinstance(run, nn.Module):
        return run, {}
    path = Path(run)
    sae_dir = path / "sae" if (path / "sae").is_dir() else path
    if not sae_dir.is_dir():
        raise FileNotFoundError(f"{path}: not a run directory (no sae/ inside) nor an SAE")
    return load_sae(sae_dir), _run_metrics(sae_dir.parent if sae_dir != path else path)


def seed_report(
    runs: Sequence[nn.Module | str | Path],
    metrics: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Seed noise of SAEs trained alike but for the seed: run directories (their logs
    and eval files give the metrics) or SAE modules with `metrics` given alongside."""
    loaded = [_load(r) for r in runs]
    per_seed = list(metrics) if metrics is not None else [m for _, m in loaded]
    if len(per_seed) != len(loaded):
        raise ValueError(f"{len(loaded)} SAEs but {len(per_seed)} metric records")
    return {
        "seeds": len(loaded),
        "metrics": aggregate_metrics(per_seed),
        "decoder_reproducibility": decoder_reproducibility([s for s, _ in loaded]),
    }


def format_seed_report(report: Mapping[str, Any], keys: Sequence[str] | None = None) -> str:
    """Readable lines: metric  mean +- std (n), then the reproducibility against its null."""
    lines = [f"{report['seeds']} seeds"]
    for key, stat in report["metrics"].items():
        if keys is None or key in keys:
            lines.append(f"  {key:<40} {stat['mean']:.4g} +- {stat['std']:.2g} (n={stat['n']})")
    rep = report["decoder_reproducibility"]
    m, null = rep["matched_max_cosine"], rep["null"]
    lines.append(
        f"  decoder matched max-cosine {m['mean']:.3f} +- {m['std']:.3f} "
        f"(random-dictionary null {null['mean']:.3f})"
    )
    return "\n".join(lines)


SEED_REPORT_FILE = "seed_report.json"


def sweep_seed_reports(
    sweep_dir: str | Path, configs: Sequence[Any], names: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """A `seed_report` per group of a sweep's SAEs that differ only in their seed, keyed
    by the group's name (the SAEs' name without "-s<seed>"); groups of one are left
    out. configs / names: the sweep's `Sweep.configs()` and `Sweep.names()`."""
    groups: dict[str, list[str]] = {}
    for config, name in zip(configs, names, strict=True):
        rest = {k: v for k, v in config.to_dict().items() if k != "seed"}
        groups.setdefault(json.dumps(rest, sort_keys=True, default=str), []).append(name)
    reports = {}
    for members in groups.values():
        if len(members) > 1:
            label = re.sub(r"-s\d+$", "", members[0])
            runs = [Path(sweep_dir) / m for m in members]
            reports[label] = {**seed_report(runs), "runs": list(members)}
    return reports


def write_sweep_seed_reports(reports: Mapping[str, Any], sweep_dir: str | Path) -> Path:
    """`seed_report.json` in the sweep directory (JSON: NaN written as null)."""
    path = Path(sweep_dir) / SEED_REPORT_FILE
    path.write_text(json.dumps(_json_safe(reports), indent=2, sort_keys=True) + "\n")
    return path


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
