"""A sweep: shared TrainConfig settings times axes whose product is the grid of SAEs.

    Sweep(TrainConfig(steps=..., batch_size=...),
          {"point": ["resid_post.3", "resid_post.5"], "nb_concepts": [3072, 6144],
           "k_per_token": [16, 32], "seed": [0]})

expands to one TrainConfig per combination, in the axes' order. A sparsity axis
that does not apply to an architecture of the grid (k_per_token / top_k for a
penalised SAE, target_l0 for a top-k one) is dropped for that SAE and repeats
are removed, so ["batchtopk", "jumprelu"] x k_per_token x target_l0 gives each
architecture its own budgets. An axis over `seed` keeps one `data_seed` (the
shared one, default the base seed): the SAEs then differ in their init only and
share their batches (see train/many.py).

Names say what differs: "<point>-<architecture>-n<width>-k<k>-s<seed>" (width
"x<expansion>" when only an expansion factor is given; "t<top_k>" for a raw
top_k, "l0<target>" for a target L0), plus "<field><value>" for any other axis.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sae_hooks.sae import SAE_REGISTRY

from .config import TrainConfig
from .variant_settings import flat_settings

_FIELDS = [k for k in TrainConfig.field_types() if k != "variant"]
"""What an axis may vary: TrainConfig's fields and the variants' settings (top_k, kernel)."""
_NAMED = ("point", "architecture", "nb_concepts", "expansion_factor", "top_k", "k_per_token")
_NAMED += ("target_l0", "seed")


@dataclass
class Sweep:
    """Shared settings (`base`) and the axes whose product is the grid of SAEs."""

    base: TrainConfig
    axes: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.base, Mapping):
            self.base = TrainConfig.from_dict(dict(self.base))
        if not isinstance(self.base, TrainConfig):
            raise TypeError(f"Sweep.base must be a TrainConfig, got {type(self.base).__name__}")
        unknown = sorted(set(self.axes) - set(_FIELDS))
        if unknown:
            raise ValueError(f"unknown sweep axes {unknown}; an axis is a TrainConfig field")
        for name, values in self.axes.items():
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
                raise ValueError(f"sweep axis {name!r} must be a non-empty list, got {values!r}")
        self.axes = {k: list(v) for k, v in self.axes.items()}

    def configs(self) -> list[TrainConfig]:
        """One TrainConfig per combination of the axes (inapplicable sparsity fields dropped)."""
        out: list[TrainConfig] = []
        seen: set[str] = set()
        keys = list(self.axes)
        for values in itertools.product(*(self.axes[k] for k in keys)):
            changes = _applicable(self.base, dict(zip(keys, values, strict=True)))
            if "seed" in self.axes and self.base.data_seed is None:
                changes["data_seed"] = self.base.seed
            try:
                cfg = dataclasses.replace(self.base, **changes)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"sweep point {changes} is not a valid TrainConfig: {err}"
                ) from err
            text = cfg.to_json()
            if text not in seen:
                seen.add(text)
                out.append(cfg)
        return out

    def names(self) -> list[str]:
        """A directory name per config of `configs()`."""
        return sweep_names(self.configs(), extra=[k for k in self.axes if k not in _NAMED])

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base.to_dict(), "axes": self.axes}


def _applicable(base: TrainConfig, changes: dict[str, Any]) -> dict[str, Any]:
    """Drop the sparsity settings that the combination's architecture does not take."""
    arch = changes.get("architecture", base.architecture)
    if arch not in SAE_REGISTRY:
        raise ValueError(f"sweep architecture {arch!r} is not one of {sorted(SAE_REGISTRY)}")
    variant = SAE_REGISTRY[arch]
    out = dict(changes)
    if variant.rows_per_budget(1) is None:
        out.update(top_k=None, k_per_token=None)
    else:
        if "k_per_token" in changes:
            out["top_k"] = None
        elif "top_k" in changes:
            out["k_per_token"] = None
    if variant.penalty_field is None:
        out["target_l0"] = None
    return out


def sweep_name(cfg: TrainConfig, extra: Sequence[str] = ()) -> str:
    """ "<point>-<architecture>-n<width>-k<k>-s<seed>" plus "<field><value>" per extra field."""
    parts = [] if cfg.point is None else [cfg.point.replace("/", "_")]
    parts.append(cfg.architecture)
    if cfg.nb_concepts is not None:
        parts.append(f"n{cfg.nb_concepts}")
    elif cfg.expansion_factor is not None:
        parts.append(f"x{cfg.expansion_factor}")
    settings = flat_settings(cfg.to_dict())
    if settings.get("k_per_token") is not None:
        parts.append(f"k{settings['k_per_token']}")
    elif settings.get("top_k") is not None:
        parts.append(f"t{settings['top_k']}")
    if cfg.target_l0 is not None:
        parts.append(f"l0{cfg.target_l0:g}")
    for name in (n for n in extra if n in settings):  # a setting of the config's variant
        value = settings[name]
        parts.append(f"{name}{value:g}" if isinstance(value, float) else f"{name}{value}")
    parts.append(f"s{cfg.seed}")
    return "-".join(parts)


def sweep_names(configs: Sequence[TrainConfig], extra: Sequence[str] | None = None) -> list[str]:
    """Names for configs: the standard parts, plus every other field that differs."""
    if extra is None:
        dicts = [flat_settings(c.to_dict()) for c in configs]
        extra = [
            k
            for k in _FIELDS
            if k not in _NAMED
            and k != "data_seed"
            and len({repr(d[k]) for d in dicts if k in d}) > 1
        ]
    names = [sweep_name(c, extra) for c in configs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"sweep configs share the names {repeated}; pass names=[...]")
    return names
