"""The variants' settings as TrainConfig takes them: nested in `variant`, or flat.

TrainConfig.variant holds an instance of the SAE class's `config_class` (sae/settings.py).
Earlier versions held those settings as TrainConfig fields, so configs, config files
and checkpoints spell them flat (top_k=..., `[train] kernel = ...`); this module moves
a flat spelling into `variant` (`nest_flat_settings`), lists the flat keys with their
types (`variant_setting_types`) and reads a saved config of either layout flat
(`flat_settings`), without naming any variant or setting itself.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Collection
from typing import Any

from sae_hooks.sae import DEFAULT_ARCHITECTURE, SAE_REGISTRY
from sae_hooks.sae.settings import VariantConfig


def variant_setting_types() -> dict[str, Any]:
    """Every registered variant's settings (the flat spellings TrainConfig takes) -> type."""
    return _setting_types(frozenset(sae.config_class for sae in SAE_REGISTRY.values()))


@functools.lru_cache(maxsize=8)
def _setting_types(classes: frozenset[type[VariantConfig]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cls in sorted(classes, key=lambda c: c.__qualname__):
        hints = typing.get_type_hints(cls)
        out.update({name: hints[name] for name in cls.field_names()})
    return out


def flat_settings(data: dict[str, Any]) -> dict[str, Any]:
    """A saved config (to_dict's nested layout, or an earlier version's flat one) with the
    variant's settings at the top level, as readers of config.json files look them up."""
    nested = data.get("variant")
    flat = {k: v for k, v in data.items() if k != "variant"}
    return {**flat, **nested} if isinstance(nested, dict) else flat


def nest_flat_settings(kwargs: dict[str, Any], own: Collection[str]) -> dict[str, Any]:
    """kwargs with flat variant settings (top_k=..., kernel=...) moved into `variant`;
    `own`: TrainConfig's fields, which stay where they are.

    Beside a nested dict (a config file's [train.variant]) the nested value wins; beside
    an instance (dataclasses.replace(c, top_k=...)) the flat one, the change, does.
    A setting that the architecture's config does not take is dropped when it is None
    or merely another variant's (a flat config of an earlier version holds them all),
    and refused when it is a top-k budget (`refused_elsewhere`) given to a variant
    without one. A `variant` of another architecture's class (dataclasses.replace
    with a new architecture) keeps the settings it changed that the new one takes.
    """
    keys = variant_setting_types()
    flat = {k: kwargs.pop(k) for k in list(kwargs) if k in keys and k not in own}
    arch = kwargs.get("architecture", DEFAULT_ARCHITECTURE)
    given = kwargs.get("variant")
    if arch not in SAE_REGISTRY or not (flat or isinstance(given, VariantConfig)):
        return kwargs  # an unknown architecture is reported by the validation
    if given is not None and not isinstance(given, (dict, VariantConfig)):
        return kwargs  # TrainConfig reports what `variant` must be
    cls = SAE_REGISTRY[arch].config_class
    if isinstance(given, VariantConfig) and type(given) is not cls:
        defaults = type(given)()
        changed = {k: v for k, v in given.to_dict().items() if getattr(defaults, k) != v}
        flat, given = {**changed, **flat}, None
    if not flat:
        return kwargs
    taken = {k: v for k, v in flat.items() if k in cls.field_names()}
    for key, value in flat.items():
        if key not in taken and value is not None:
            _check_other_setting(key, value, arch)
    if isinstance(given, VariantConfig):  # replace(c, top_k=...): the flat value is the change
        return {**kwargs, "variant": {**given.to_dict(), **taken}}
    return {**kwargs, "variant": {**taken, **(given or {})}}  # a nested table is the specific one


def _check_other_setting(key: str, value: Any, arch: str) -> None:
    """Another variant's setting, given flat to `arch`: checked by the variant that owns
    it and ignored, as the flat field was; refused if the owner says so (a budget)."""
    owners = [c.config_class for _, c in sorted(SAE_REGISTRY.items())]
    owners = [c for c in owners if key in c.field_names()]
    names = next((c.refused_elsewhere for c in owners if key in c.refused_elsewhere), None)
    if names is None:
        owners[0](**{key: value})  # a bad value fails as it would for its variant
        return
    takers = sorted(a for a, c in SAE_REGISTRY.items() if key in c.config_class.field_names())
    penalty = SAE_REGISTRY[arch].penalty_field
    raise ValueError(
        f"{' / '.join(names)} apply to {takers}, not {arch!r}"
        + (f"; use {penalty} or target_l0 for {arch!r}" if penalty else "")
    )


def as_variant(cls: type[VariantConfig], value: Any) -> VariantConfig:
    """The variant settings as an instance of `cls`, from None (its defaults) or a dict."""
    if value is None:
        return cls()
    if isinstance(value, dict):
        return cls.from_dict(value)
    if type(value) is not cls:
        raise TypeError(
            f"variant must be a {cls.__name__} (or a dict of its fields), got {value!r}"
        )
    return value
