"""A variant's own training settings: the base dataclass and the value checks they share.

Each variant declares its settings as a subclass of `VariantConfig` in its own file
(`TopKConfig` in topk.py, `BatchTopKConfig` in batchtopk.py, `JumpReLUConfig` in
jump.py, ...) and names it in `config_class`; `sae_hooks.train.TrainConfig.variant`
holds one. The subclass's field defaults are the only defaults of those settings;
`resolved` fills what depends on the data (JumpReLU's bandwidth, a top-k budget).
This module imports nothing from the rest of the package (TrainConfig's own checks
use the two checkers below, so a bad value reads the same wherever it is set).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass
class VariantConfig:
    """The settings of a variant that has none of its own (a ReLU SAE, a transcoder).

    A subclass adds dataclass fields with their defaults, checks them in
    `__post_init__`, fills data-dependent defaults in `resolved` and maps them onto
    constructor arguments in `sae_kwargs`.
    """

    refused_elsewhere: ClassVar[tuple[str, ...]] = ()
    """Fields that a variant which does not take them refuses when given (not None),
    rather than ignores: a sparsity budget handed to a penalised SAE is a mistake."""

    def resolved(self, *, d_model: int, nb_concepts: int, rows: int | None) -> VariantConfig:
        """A copy with every None default filled in, for rows of width d_model, a
        dictionary of nb_concepts and `rows` rows per top-k budget (None: no budget)."""
        return self

    def check_budget(self, rows: int | None, architecture: str) -> None:
        """Settings that must agree with `rows` rows per top-k budget (None: no budget)."""

    def sae_kwargs(self) -> dict[str, Any]:
        """The variant's constructor arguments these settings give."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariantConfig:
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__} expects a dict, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} keys {unknown}; valid keys: {cls.field_names()}"
            )
        return cls(**data)


def check_int(name: str, value: object, *, minimum: int, optional: bool = False) -> None:
    """An int (not a bool) >= minimum; None too when optional."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = f"an int >= {minimum}" + (" or None" if optional else "")
        raise ValueError(f"{name} must be {what}, got {value!r}")


def check_float(
    name: str,
    value: object,
    lo: float,
    hi: float,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    optional: bool = False,
) -> None:
    """A finite number (not a bool) in the interval; None too when optional."""
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open or hi == math.inf else ']'}"
        raise ValueError(
            f"{name} must be a number in {interval}"
            + (" or None" if optional else "")
            + f", got {value!r}"
        )
