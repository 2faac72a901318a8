"""A sweep: shared TrainConfig settings times axes whose product is the grid of SAEs.

    Sweep(TrainConfig(steps=..., batch_size=...),
          {"point": ["resid_post.3", "resid_post.5"], "nb_concepts": [3072, 6144],
           "k_per_token": [16, 32], "seed": [0]})

expands to one TrainConfig per combination, in the axes' order: `len(sweep)` SAEs,
every one trained (`plan()` lists them with their settings, `format_plan()` as text;
`train_many` prints it before it starts).

A sparsity axis means the same sparsity for every architecture of the grid: an L0 of
k codes per token. `k_per_token` is a top-k variant's k_per_token and a penalised
variant's (JumpReLU, ReLU, transcoders) `target_l0`; `target_l0` is, the other way
round, a top-k variant's k_per_token (when it is a whole number). A raw `top_k` is
each SAE's own budget (per row for TopK, per batch for BatchTopK), so it is taken
only where every architecture of the grid counts it the same way. A combination that
cannot have the one sparsity (a fractional L0 for a top-k SAE, two sparsity axes that
disagree, top_k for a penalised SAE), or two combinations that would train the same
SAE, are refused before anything trains, naming the combination. Without a sparsity
axis the base config's sparsity (if any) is carried over the same way.

An axis over `seed` keeps one `data_seed` (the shared one, default the base seed): the
SAEs then differ in their init only and share their batches (see train/many.py).

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
        """One TrainConfig per combination of the axes, the sparsity in each
        architecture's own terms; refused (ValueError) where that cannot be done."""
        self._check_top_k_axis()
        out: list[TrainConfig] = []
        seen: dict[str, dict[str, Any]] = {}
        keys = list(self.axes)
        for values in itertools.product(*(self.axes[k] for k in keys)):
            combination = dict(zip(keys, values, strict=True))
            changes = {**combination, **_sparsity(self.base, combination, set(keys))}
            if "seed" in self.axes and self.base.data_seed is None:
                changes["data_seed"] = self.base.seed
            try:
                cfg = dataclasses.replace(self.base, **changes)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"sweep point {combination} is not a valid TrainConfig: {err}"
                ) from err
            text = cfg.to_json()
            if text in seen:
                raise ValueError(
                    f"sweep points {seen[text]} and {combination} give the same SAE; "
                    "remove the repeated value from its axis"
                )
            seen[text] = combination
            out.append(cfg)
        return out

    def __len__(self) -> int:
        return len(self.configs())

    def names(self) -> list[str]:
        """A directory name per config of `configs()`."""
        return sweep_names(self.configs(), extra=[k for k in self.axes if k not in _NAMED])

    def plan(self) -> list[tuple[str, TrainConfig]]:
        """Every SAE the sweep trains: (its name, its config), in training order."""
        configs = self.configs()
        names = sweep_names(configs, extra=[k for k in self.axes if k not in _NAMED])
        return list(zip(names, configs, strict=True))

    def format_plan(self) -> str:
        """The plan as text: the shared settings, then one line per SAE with its own."""
        return format_plan(self.plan(), self.base, list(self.axes))

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base.to_dict(), "axes": self.axes}

    def _check_top_k_axis(self) -> None:
        """A top_k axis is one sparsity only where every architecture counts it alike."""
        if "top_k" not in self.axes:
            return
        batch_sizes = self.axes.get("batch_size", [self.base.batch_size])
        archs = self.axes.get("architecture", [self.base.architecture])
        for arch in archs:
            _variant(arch)
        for size in batch_sizes:
            rows = {a: SAE_REGISTRY[a].rows_per_budget(size) for a in archs}
            if len(set(rows.values())) > 1:
                counts = ", ".join(f"{a}: {_budget_words(r)}" for a, r in rows.items())
                raise ValueError(
                    f"sweep axis top_k counts codes differently per architecture ({counts}): "
                    "the same top_k would be a different sparsity; sweep over k_per_token"
                )


_SPARSITY = ("top_k", "k_per_token", "target_l0")


def _variant(arch: str) -> type:
    if arch not in SAE_REGISTRY:
        raise ValueError(f"sweep architecture {arch!r} is not one of {sorted(SAE_REGISTRY)}")
    return SAE_REGISTRY[arch]


def _budget_words(rows: int | None) -> str:
    return "no top_k" if rows is None else ("per row" if rows == 1 else f"per {rows} rows")


def _sparsity(base: TrainConfig, combination: dict[str, Any], axes: set[str]) -> dict[str, Any]:
    """top_k, k_per_token and target_l0 of one combination, in its architecture's terms.

    The sparsity comes from the combination's sparsity axes, else from the base config;
    k_per_token and target_l0 are one L0 (codes per token), which a top-k variant takes
    as k_per_token and a penalised one as target_l0."""
    arch = combination.get("architecture", base.architecture)
    variant = _variant(arch)
    rows = variant.rows_per_budget(combination.get("batch_size", base.batch_size))
    own = {"top_k": getattr(base.variant, "top_k", None)}
    own["k_per_token"] = getattr(base.variant, "k_per_token", None)
    own["target_l0"] = base.target_l0
    swept = [k for k in _SPARSITY if k in axes]
    given = {k: combination[k] for k in swept} if swept else own
    given = {k: v for k, v in given.items() if v is not None}
    out: dict[str, Any] = dict.fromkeys(_SPARSITY)
    if not given:
        return out
    where = f"sweep point {combination} ({arch!r})"
    if "top_k" in given:
        if rows is None or len(given) > 1:
            why = "takes no top_k" if rows is None else "has top_k beside another sparsity"
            raise ValueError(f"{where} {why}; sweep over k_per_token, one L0 for every SAE")
        return {**out, "top_k": given["top_k"]}
    l0s = {float(v) for v in given.values()}
    if len(l0s) > 1:
        raise ValueError(
            f"{where} asks for two sparsities {given}; sweep over one of "
            "k_per_token / target_l0 (it sets every architecture's L0)"
        )
    l0 = l0s.pop()
    if rows is not None:
        if l0 != int(l0):
            raise ValueError(
                f"{where}: a top-k SAE keeps a whole number of codes per token, not {l0:g}"
            )
        return {**out, "k_per_token": int(l0)}
    if variant.penalty_field is None:
        raise ValueError(f"{where} has neither a top-k budget nor a target L0 to set to {l0:g}")
    return {**out, "target_l0": l0}


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def format_plan(
    plan: Sequence[tuple[str, TrainConfig]],
    base: TrainConfig | None = None,
    axes: Sequence[str] = (),
) -> str:
    """'sweep of N SAEs', the settings they share (those of `base` that differ from the
    defaults), then per SAE its name and its own settings: the axes and its sparsity."""
    lines = [f"sweep of {len(plan)} SAEs"]
    own = [*dict.fromkeys([*axes, "architecture", *_SPARSITY])]
    if base is not None:
        defaults = {f.name: _default(f) for f in dataclasses.fields(TrainConfig)}
        shared = flat_settings(base.to_dict())
        common = {
            k: v for k, v in shared.items() if k not in own and k in defaults and defaults[k] != v
        }
        lines.append("  shared: " + ", ".join(f"{k}={v!r}" for k, v in sorted(common.items())))
    for name, cfg in plan:
        settings = flat_settings(cfg.to_dict())
        mine = {k: settings.get(k) for k in own if settings.get(k) is not None}
        lines.append(f"  {name}: " + ", ".join(f"{k}={v!r}" for k, v in mine.items()))
    return "\n".join(lines)


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
