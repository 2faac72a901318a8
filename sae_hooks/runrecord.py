"""run.json: what made a run directory, so later commands need only the directory.

Every run directory (CLI capture, `run_pipeline`, the recipes, a sweep) holds one
run.json at its root:

    {"format": 1,
     "model": {"name_or_path": "org/model" | "/abs/path" | null, "name": "...",
               "revision": "main" | null, "commit": "<hash>" | null,
               "model_type": "llama", "head": "LlamaForCausalLM", "dtype": "float32",
               "backend": "hf" | "transformer-lens", "prepend_bos": true,
               "family": "gpt2" | null, "model_dir": ..., "hub_id": ..., "tiny": false},
     "tokenizer": "/abs/path" | "pydoc-bpe" | null,
     "points": ["resid_post.3"],
     "corpus": {"data": "pydoc" | "org/dataset" | "/abs/path", "split": null,
                "text_field": "text", "streaming": false, "skip_invalid": false,
                "context_length": 128, "prepend_bos": true,
                "part": "train: all documents but the held-out last tenth", ...},
     "created_by": "sae-hooks capture"}

name_or_path is exactly what the model was loaded from (a hub id as given, a local
directory resolved); null for --tiny models, which are rebuilt from their family.
Records written before --model (no name_or_path) name a family and a model_dir; their
corpus "split" held what "part" holds now.

"pydoc-bpe" is the offline tokenizer of the --tiny models (`models.pydoc_tokenizer`),
which is rebuilt identically on demand. eval, ablate, report and inspect read this file
to load the model, the tokenizer and the held-out part of the corpus by themselves.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sae_hooks.jsonio import loads
from sae_hooks.rundir import RunDir

RUN_RECORD = RunDir.RECORD
PYDOC_TOKENIZER = "pydoc-bpe"
FORMAT = 1
SPLIT_TRAIN = "train: all documents but the held-out last tenth (sae_hooks.data.splits)"
SPLIT_ALL = "all: the whole corpus (no held-out part)"


@dataclass
class RunRecord:
    """The model, tokenizer, hook points and corpus a run directory was made from."""

    model: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    points: list[str] = field(default_factory=list)
    corpus: dict[str, Any] = field(default_factory=dict)
    created_by: str = ""
    format: int = FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = RUN_RECORD) -> RunRecord:
        if not isinstance(data, dict):
            raise ValueError(f"{where} must hold a JSON object")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def summary(self) -> str:
        """Two or three lines for `inspect`."""
        m = self.model
        where = m.get("model_dir") or m.get("hub_id") or ("random init" if m.get("tiny") else "?")
        rev = f" @ {m.get('commit') or m['revision']}" if m.get("revision") else ""
        kind = m.get("family") or m.get("model_type") or m.get("name") or "?"
        lines = [f"model: {kind} ({where}{rev})"]
        lines.append(f"tokenizer: {self.tokenizer or 'none recorded'}")
        lines.append(f"hook points: {', '.join(self.points) or 'none'}")
        c = self.corpus
        if c:
            data = c.get("data") or c.get("source") or "?"
            field_ = (
                f", field {c['text_field']!r}" if c.get("text_field") not in (None, "text") else ""
            )
            split = f", split {c['split']}" if "part" in c and c.get("split") else ""
            part = c.get("part", c.get("split", "part not recorded"))
            lines.append(f"corpus: {data}{split}{field_}; {part}")
        return "\n".join(lines)


def model_record(
    family: str | None,
    model_dir: str | os.PathLike | None = None,
    *,
    tiny: bool = False,
    revision: str | None = None,
    hub_id: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """The "model" entry: a local directory is made absolute so the record survives a cd."""
    if model_dir is None and family is not None and not tiny:
        from sae_hooks.models import MODEL_FAMILIES

        record = MODEL_FAMILIES.get(family)
        if record is not None and record.bundled_dir is not None:
            model_dir = record.bundled_dir()
    local = str(Path(model_dir).expanduser().resolve()) if model_dir is not None else None
    if revision is None and local is not None:
        revision = _snapshot_revision(Path(local))
    return {
        "family": family,
        "model_dir": local,
        "hub_id": hub_id,
        "revision": revision,
        "tiny": bool(tiny),
        "name": name or (f"tiny-{family}" if tiny else (hub_id or family)),
    }


def _snapshot_revision(path: Path) -> str | None:
    """A Hugging Face cache snapshot directory (.../snapshots/<commit>) names its revision."""
    return path.name if path.parent.name == "snapshots" else None


def tokenizer_record(tokenizer: Any, model_dir: str | None = None) -> str | None:
    """Where the tokenizer can be loaded from again: a directory, "pydoc-bpe" or None."""
    if tokenizer is None:
        return None
    where = str(getattr(tokenizer, "name_or_path", "") or "")
    if "sae-hooks-tokenizer-" in where:  # models.pydoc_tokenizer's saved directory
        return PYDOC_TOKENIZER
    if where and Path(where).is_dir():
        return str(Path(where).resolve())
    return model_dir


def find_run_dir(path: str | os.PathLike, levels: int = 3) -> Path | None:
    """The run directory holding `path` (itself, or up to `levels` parents) by its run.json."""
    p = Path(path).expanduser()
    for candidate in [p, *list(p.parents)[:levels]]:
        if RunDir(candidate).record.is_file():
            return candidate
    return None


def read_run_record(path: str | os.PathLike) -> RunRecord | None:
    """The record of the run holding `path` (a run, store, train or SAE directory), or None."""
    run = find_run_dir(path)
    if run is None:
        return None
    where = RunDir(run).record
    try:
        data = loads(where.read_text(encoding="utf-8"), str(where))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{where} is not valid JSON: {err}") from None
    return RunRecord.from_dict(data, str(where))


def write_run_record(run_dir: str | os.PathLike, record: RunRecord) -> Path:
    """Write run_dir/run.json; hook points already recorded there are kept (capture adds)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    where = RunDir(run_dir).record
    if where.is_file():
        try:
            old = RunRecord.from_dict(loads(where.read_text(encoding="utf-8"), str(where)))
        except (ValueError, json.JSONDecodeError, UnicodeDecodeError):
            old = None
        if old is not None:
            record.points = [*old.points, *(p for p in record.points if p not in old.points)]
    where.write_text(json.dumps(record.to_dict(), indent=2) + "\n")
    return where


def load_tokenizer(record: RunRecord) -> Any:
    """The recorded tokenizer (an object or a directory the report can open), or None."""
    if record.tokenizer == PYDOC_TOKENIZER:
        from sae_hooks.models import pydoc_tokenizer

        return pydoc_tokenizer()
    if record.tokenizer and Path(record.tokenizer).is_dir():
        return record.tokenizer
    return None


def infer_model_record(model: Any, tokenizer: Any = None, name: str | None = None) -> dict:
    """A best-effort model entry for a model object (the API pipeline): family from its
    class, local directory from config._name_or_path; random-init when there is none."""
    from sae_hooks.models import family_of_model

    cls = type(model).__name__
    record = family_of_model(model)
    family = record.name if record is not None else None
    where = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    local = where if where and Path(where).is_dir() else None
    hub = where if where and local is None else None
    tiny = not where
    rec = model_record(family, local, tiny=tiny, hub_id=hub, name=name) if family else None
    if rec is None:
        rec = {"family": None, "model_dir": local, "hub_id": hub, "revision": None}
        rec.update(tiny=tiny, name=name or cls)
    rec["class"] = cls
    return rec
