"""Who made an SAE's activations, for the exports that name it (SAELens cfg.json, the Hub
model card, Neuronpedia's sae.json): `RunIdentity`, and the helpers that read it off a
store (`identity_from_store`) or a run directory (`identity_from_run`).

Every field is what the run recorded, or None: an export writes null rather than a
default that may be wrong (SAELens itself assumes prepend_bos=True when the key is
missing; a random-init model has no model id).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_hooks.hooks.points import hook_name_of_point
from sae_hooks.jsonio import loads

#: TrainConfig.normalize_activations=True: the SAE multiplies raw rows by its input_scale
#: (fitted so that E||x||^2 = d on the training rows) and divides x_hat by it.
NORMALISATION_INPUT_SCALE = "input_scale"
NORMALISATION_NONE = "none"
_CLASS_NAME = re.compile(r"[A-Z][A-Za-z0-9_]*")  # what a store records for a model with no id
_SNAPSHOT = re.compile(r"models--(?P<org>[^/\\]+?)--(?P<name>[^/\\]+)$")
_BACKENDS = {
    "HookedTransformer": "transformer_lens.HookedTransformer",
    "TransformerBridge": "transformer_lens.TransformerBridge",
}
_TYPES: dict[str, tuple[type, ...]] = {
    "context_size": (int,),
    "prepend_bos": (bool,),
    "compatibility_mode": (bool,),
}


@dataclass(frozen=True)
class RunIdentity:
    """Where an SAE reads its activations and what they were computed from.

    model_name: the hub id or local path the model was loaded from (None for a
    random-init model); model_revision: the hub commit or tag; backend: what ran the
    model ("transformers", "transformer_lens.HookedTransformer",
    "transformer_lens.TransformerBridge") and, for a bridge, compatibility_mode; point:
    the hook point (ours, e.g. "mlp_in.3"; `hook_name` is TransformerLens's name for it)
    and, for a transcoder, target_point (`hook_name_out`), the output it predicts;
    context_size, prepend_bos: how the documents were cut into contexts; dataset_path,
    dataset_split: the data; normalisation: "input_scale" (the SAE scales raw rows
    itself) or "none".
    """

    model_name: str | None = None
    model_revision: str | None = None
    backend: str | None = None
    compatibility_mode: bool | None = None
    point: str | None = None
    target_point: str | None = None
    context_size: int | None = None
    prepend_bos: bool | None = None
    dataset_path: str | None = None
    dataset_split: str | None = None
    normalisation: str | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kinds = _TYPES.get(f.name, (str,))
            bad_bool = isinstance(value, bool) and bool not in kinds
            if value is not None and (bad_bool or not isinstance(value, kinds)):
                names = " or ".join(k.__name__ for k in kinds)
                raise ValueError(f"RunIdentity.{f.name} must be {names} or None, got {value!r}")
        if self.context_size is not None and self.context_size < 1:
            raise ValueError(f"RunIdentity.context_size must be >= 1, got {self.context_size}")

    @property
    def hook_name(self) -> str | None:
        """TransformerLens's (and SAELens's) name of `point`, or the point itself."""
        return (hook_name_of_point(self.point) or self.point) if self.point else None

    @property
    def hook_name_out(self) -> str | None:
        """TransformerLens's name of `target_point` (a transcoder's output)."""
        target = self.target_point
        return (hook_name_of_point(target) or target) if target else None

    def to_dict(self) -> dict[str, Any]:
        names = {"hook_name": self.hook_name, "hook_name_out": self.hook_name_out}
        return {**dataclasses.asdict(self), **names}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RunIdentity:
        """The identity a file records (an export's, or SAELens's own metadata keys):
        unknown keys are ignored, and a value of the wrong type counts as not recorded."""
        if not isinstance(data, dict):
            return cls()
        values = {}
        for f in dataclasses.fields(cls):
            kind = _TYPES.get(f.name, (str,))[0]
            values[f.name] = _typed(data.get(f.name), kind)
        return cls(**values)

    def with_values(self, **values: Any) -> RunIdentity:
        """This identity with `values` filled in (None leaves a field alone); a value that
        contradicts one already recorded is an error, never a silent replacement."""
        clash = [
            f"{k}={v!r} (recorded: {getattr(self, k)!r})"
            for k, v in values.items()
            if v is not None and getattr(self, k) is not None and getattr(self, k) != v
        ]
        if clash:
            raise ValueError(f"the SAE's recorded identity says otherwise: {', '.join(clash)}")
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})

    def fill(self, other: RunIdentity) -> RunIdentity:
        """Fields still None taken from `other` (a less direct source)."""
        ours = dataclasses.asdict(self)
        theirs = dataclasses.asdict(other)
        return RunIdentity(**{k: v if v is not None else theirs[k] for k, v in ours.items()})


def model_source(where: str | None) -> tuple[str | None, str | None]:
    """(model id or path, revision) from where a model was loaded: a Hugging Face cache
    snapshot (.../models--org--name/snapshots/<commit>) is the hub id at that commit."""
    if not where:
        return None, None
    path = Path(where)
    match = _SNAPSHOT.search(path.parent.parent.name) if path.parent.name == "snapshots" else None
    if match:
        return f"{match['org']}/{match['name']}", path.name
    return where, None


def identity_from_store(store: Any) -> RunIdentity:
    """What an activation store records of its capture: the model (as the capture named
    it; a bare class name, i.e. no id, is None), the hook point if it holds one, the
    context length and whether contexts start with a special token. The data source is
    recorded only as a description, so dataset_path stays None (run.json has it)."""
    from sae_hooks.store import open_store

    if isinstance(store, (str, os.PathLike)):
        store = open_store(store)
    shards = getattr(store, "shards", None)  # a sharded store: every rank captured alike
    attrs = dict(getattr(shards[0] if shards else store, "attrs", None) or {})
    fingerprint = attrs.get("fingerprint") or {}
    named = getattr(store, "model", None) or attrs.get("model")
    model, revision = model_source(None if not named or _CLASS_NAME.fullmatch(named) else named)
    special = fingerprint.get("special_tokens")
    context = fingerprint.get("context_length")
    points = list(getattr(store, "points", []) or [])
    return RunIdentity(
        model_name=model,
        model_revision=revision,
        backend=_BACKENDS.get(fingerprint.get("model_class")),
        point=points[0] if len(points) == 1 else None,
        context_size=context
        if isinstance(context, int) and not isinstance(context, bool)
        else None,
        prepend_bos=bool(special[0]) if isinstance(special, list) and special else None,
    )


def identity_from_run(
    run_dir: str | os.PathLike, name: str = "train", *, point: str | None = None
) -> RunIdentity:
    """The identity of the SAE `name` of a run directory: run.json first (model id or
    path, revision, backend, corpus, context, prepend_bos), then the training config
    (hook point, normalisation), then the store for anything still unknown."""
    run = Path(run_dir)
    record = _read_json(run / "run.json")
    train = _read_json(run / name / "config.json")
    model = record.get("model") if isinstance(record.get("model"), dict) else {}
    corpus = record.get("corpus") if isinstance(record.get("corpus"), dict) else {}
    trained_point = _typed(train.get("point"), str)
    points = record.get("points") if isinstance(record.get("points"), list) else []
    identity = RunIdentity(
        **_model_fields(model),
        point=point or trained_point or (points[0] if len(points) == 1 else None),
        target_point=_typed(train.get("target_point"), str),
        context_size=_typed(corpus.get("context_length"), int),
        prepend_bos=_typed(corpus.get("prepend_bos"), bool),
        dataset_path=_typed(corpus.get("data"), str),
        dataset_split=_typed(corpus.get("dataset_split") or corpus.get("split"), str),
        normalisation=_normalisation(train.get("normalize_activations")),
    )
    if (run / "store" / "zarr.json").is_file():
        stored = identity_from_store(run / "store")
        identity = identity.fill(dataclasses.replace(stored, point=None))
    return identity


def _model_fields(model: dict[str, Any]) -> dict[str, Any]:
    """run.json's "model" entry as identity fields; a tiny random-init model has no id."""
    if model.get("tiny"):
        name, revision = None, None
    else:
        where = model.get("name_or_path") or model.get("hub_id") or model.get("model_dir")
        name, revision = model_source(where if isinstance(where, str) else None)
    return {
        "model_name": name,
        "model_revision": _typed(model.get("revision"), str) or revision,
        "backend": _typed(model.get("backend"), str),
        "compatibility_mode": _typed(model.get("compatibility_mode"), bool),
    }


def _normalisation(flag: Any) -> str | None:
    if isinstance(flag, bool):
        return NORMALISATION_INPUT_SCALE if flag else NORMALISATION_NONE
    return None


def _typed(value: Any, kind: type) -> Any:
    """`value` if it has the type an identity field needs (bool is not an int), else None."""
    if isinstance(value, bool) and kind is not bool:
        return None
    return value if isinstance(value, kind) else None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = loads(path.read_text(encoding="utf-8"), str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    return data if isinstance(data, dict) else {}
