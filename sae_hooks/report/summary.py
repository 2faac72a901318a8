"""The run at a glance: what the dashboard's header says, read from the run's files.

A `train` run directory holds config.json, log.jsonl and sae/; a pipeline run
directory holds that in train/ next to eval.json, the ablations (ablation.json,
ablation/<concept>.json) and the store.
Every file is optional: what is missing is left out of the header.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_hooks.report.curves import read_records
from sae_hooks.rundir import RunDir
from sae_hooks.train.variant_settings import flat_settings

EVAL_FIELDS = [
    ("fvu", "FVU"),
    ("explained_variance", "explained variance"),
    ("l0", "L0 (eval, spliced)"),
    ("dead_fraction", "dead latents"),
    ("dense_fraction", "dense latents"),
    ("n_rows", "eval rows"),
]


@dataclass
class RunInfo:
    """Header facts of one run; every field may be unknown."""

    name: str = "SAE"
    model: str = ""
    point: str = ""
    architecture: str = ""
    nb_concepts: int | None = None
    d_model: int | None = None
    k_per_token: float | None = None
    k_note: str = ""
    target_l0: float | None = None
    eval: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    train_dir: Path | None = None

    def facts(self) -> list[tuple[str, str]]:
        """(label, value) pairs for the header, known ones only."""
        rows = [
            ("model", self.model),
            ("point", self.point),
            ("architecture", self.architecture),
            ("latents", f"{self.nb_concepts:,}" if self.nb_concepts else ""),
            ("d_model", str(self.d_model or "")),
            ("k per token", _num(self.k_per_token) + (f" ({self.k_note})" if self.k_note else "")),
            ("target L0", _num(self.target_l0)),
        ]
        return [(k, v) for k, v in rows if v and v != "–"]

    def metrics(self) -> list[tuple[str, str]]:
        """eval.json's numbers, labelled; downstream (loss recovered, KL, task) included."""
        e = self.eval
        out = []
        for key, label in EVAL_FIELDS:
            if key in e and e[key] is not None:
                v = e[key]
                pct = key.endswith("_fraction") or key == "explained_variance"
                out.append((label, f"{v:.2%}" if pct and _finite(v) else _num(v)))
        for key, v in (e.get("downstream") or {}).items():
            out.append((key.replace("_", " "), _num(v)))
        return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _num(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, int):
        return f"{v:,}"
    if _finite(v):
        return f"{v:.4g}"
    return str(v)


def train_dir_of(run_dir: Path) -> Path:
    """The directory holding sae/: run_dir itself, or a pipeline run's train/."""
    home = RunDir.home_of(run_dir)
    if home is not None:
        return home
    raise FileNotFoundError(
        f"{run_dir} has no trained SAE in sae/ (nor train/sae/): pass the run directory "
        "that train() or a recipe wrote"
    )


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def k_per_token(config: Mapping[str, Any]) -> tuple[float | None, str]:
    """k per token and how it was derived (BatchTopK's top_k is a per-BATCH budget)."""
    arch = str(config.get("architecture", "")).lower()
    if config.get("k_per_token"):
        return float(config["k_per_token"]), ""
    if config.get("top_k_per_sample"):
        return float(config["top_k_per_sample"]), ""
    top_k, batch = config.get("top_k"), config.get("batch_size")
    if top_k and "batch" in arch and batch:
        return top_k / batch, f"batch budget {top_k:,} / batch {batch:,}"
    if top_k and "batch" not in arch:
        return float(top_k), ""
    return None, ""


def log_warnings(train_dir: Path) -> list[str]:
    """Warnings a run recorded: log records with "warning"/"warnings", and warnings.json."""
    out: list[str] = []
    if (train_dir / RunDir.LOG).is_file():
        for r in read_records(train_dir):
            w = r.get("warning", r.get("warnings"))
            out += [str(x) for x in (w if isinstance(w, list) else [w] if w else [])]
    for path in (train_dir / "warnings.json", train_dir.parent / "warnings.json"):
        listed = _read_json(path)
        if isinstance(listed, list):
            out += [str(x) for x in listed]
    return list(dict.fromkeys(out))


def read_run(run_dir: Path, sae_config: Mapping[str, Any] | None = None) -> RunInfo:
    """Everything the header shows, from the run's files (config, eval, log)."""
    train = train_dir_of(run_dir)
    top = RunDir.outputs_of(train)  # a pipeline run: name it by its dir
    config = {**(sae_config or {}), **flat_settings(_read_json(train / RunDir.TRAIN_CONFIG) or {})}
    evaluation = _read_json(top / RunDir.EVAL) or _read_json(train / RunDir.EVAL) or {}
    k, note = k_per_token(config)
    return RunInfo(
        name=top.resolve().name,
        point=str(config.get("point") or ""),
        architecture=str(config.get("architecture") or ""),
        nb_concepts=config.get("nb_concepts"),
        k_per_token=k,
        k_note=note,
        target_l0=config.get("target_l0"),
        eval=evaluation if isinstance(evaluation, dict) else {},
        warnings=log_warnings(train),
        train_dir=train,
    )


def run_ablations(run_dir: Path) -> list[dict[str, Any]]:
    """Every ablation result next to train/: ablation.json, then ablation/<concept>.json
    (`sae-hooks ablate`); each record says its "file" (none if absent)."""
    for folder in (run_dir, run_dir.parent):
        found = [read_ablation_record(path, folder) for path in RunDir(folder).ablation_files()]
        records = [r for r in found if "latents" in r]
        if records:
            return records
    return []


def read_ablation_record(path: Path, folder: Path | None = None) -> dict[str, Any]:
    """One ablation file as a dict with its "file" (relative to `folder`); {} if not an
    object. Raises OSError / ValueError for a missing or invalid file."""
    record = json.loads(Path(path).read_text())
    if not isinstance(record, dict):
        return {}
    where = Path(path).relative_to(folder) if folder is not None else Path(path).name
    return {**record, "file": str(where)}
