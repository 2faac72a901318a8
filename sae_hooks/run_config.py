"""run.toml: one config file for a whole run, its values type-checked.

Tables: [model] and [data] (shared by every subcommand that takes those flags),
[capture], [train], [eval], [ablate], [inspect], [report] (one per subcommand) and
[sweep] (read by `sae-hooks sweep` together with [train]). Keys are flag names
(dashes or underscores); [train] also takes any TrainConfig field.

The schema is derived, not written twice: each command of `sae_hooks.cli` declares
its options (`cli.common.Option`), and a table's keys and types are that command's
options (type=int -> int, store_true -> bool, append -> list) as a `RunSchema`, plus
TrainConfig's field annotations for [train]. Choice: this small typed layer over
the standard library's tomllib rather than a config library (pydantic, OmegaConf,
Hydra), which would add a dependency and a second description of the same fields.
A wrong value fails with one line naming file, table, key, expected type and value.
"""

from __future__ import annotations

import argparse
import inspect
import types
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SHARED_TABLES = ("model", "data")
SWEEP_TABLE = "sweep"


@dataclass(frozen=True)
class Key:
    """One key of a run.toml table: its type, its valid values, and the shared table
    ("model" or "data") that may also set it."""

    kind: Any
    choices: tuple | None = None
    group: str | None = None


@dataclass(frozen=True)
class RunSchema:
    """The keys of every command's table, in the commands' order: table -> key -> Key."""

    commands: Mapping[str, Mapping[str, Key]]

    @property
    def tables(self) -> tuple[str, ...]:
        return (*SHARED_TABLES, *self.commands, SWEEP_TABLE)


def read_toml(path: str | Path, tables: Collection[str]) -> dict[str, dict[str, Any]]:
    """The tables of a run.toml; a table not in `tables` or a bare key is an error."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except UnicodeDecodeError:
        raise ValueError(f"config file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config file {path} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - set(tables))
    if unknown:
        raise ValueError(
            f"config file {path}: unknown tables {unknown}; valid tables: {list(tables)}"
        )
    for name, table in data.items():
        if not isinstance(table, dict):
            raise ValueError(f"config file {path}: [{name}] must be a table of key = value")
    return data


# ------------------------------------------------------------------------- types


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind))


def check_value(where: str, key: str, value: Any, kind: Any) -> Any:
    """`value` as `kind` (int, float, str, bool, list[...], tuple[...], dict, Optional);
    ValueError naming where, key, the expected type and the value otherwise."""
    ok, converted = _convert(value, kind)
    if not ok:
        raise ValueError(
            f"{where} {key}: expected {_describe(kind)}, got {value!r} ({type(value).__name__})"
        )
    return converted


def _describe(kind: Any) -> str:
    origin, params = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(p) for p in params if p is not type(None))
    if origin in (list, tuple):
        return f"{_type_name(origin)} of {_describe(params[0]) if params else 'values'}"
    if kind is Any:
        return "any value"
    return _type_name(origin or kind)


def _convert(value: Any, kind: Any) -> tuple[bool, Any]:
    origin, params = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for p in params:
            if p is type(None):
                continue  # TOML has no null: an optional key is simply left out
            ok, out = _convert(value, p)
            if ok:
                return True, out
        return False, None
    if origin in (list, tuple):
        if not isinstance(value, list):
            return False, None
        inner = params[0] if params else Any
        pairs = [_convert(v, inner) for v in value]
        if origin is tuple and params and params[-1] is not Ellipsis and len(value) != len(params):
            return False, None
        if not all(ok for ok, _ in pairs):
            return False, None
        return True, origin(v for _, v in pairs)
    if origin is dict or kind is dict:
        return isinstance(value, dict), value
    if kind is bool:
        return isinstance(value, bool), value
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else None
    if kind is str:
        return isinstance(value, str), value
    if callable(kind):  # an argparse type= function such as a parser of "3,17"
        if not isinstance(value, str):
            return False, None
        try:
            return True, kind(value)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            return False, None
    return False, None


def train_field_types() -> dict[str, Any]:
    """TrainConfig's keys (its fields, the variants' flat settings) and their types."""
    from sae_hooks.train import TrainConfig

    return TrainConfig.field_types()


def sae_extra_keys(architecture: str) -> set[str] | None:
    """Keyword arguments the architecture's constructor takes (None: it takes any)."""
    from sae_hooks.sae import SAE_REGISTRY

    cls = SAE_REGISTRY.get(architecture)
    if cls is None:
        return None
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {
            p.name for p in params if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD
        }
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names - {"self"}
    return None


def check_table(
    where: str,
    table: dict[str, Any],
    flags: Mapping[str, Key],
    fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A table's values checked against flag types (and TrainConfig fields); dest -> value."""
    fields = fields or {}
    out: dict[str, Any] = {}
    for key, value in table.items():
        dest = key.replace("-", "_")
        if dest in fields:
            out[dest] = check_value(where, key, value, fields[dest])
        elif dest in flags:
            kind, choices = flags[dest].kind, flags[dest].choices
            out[dest] = check_value(where, key, value, kind)
            if choices and out[dest] not in choices:
                raise ValueError(f"{where} {key}: expected one of {list(choices)}, got {value!r}")
        else:
            valid = sorted({*flags, *fields})
            raise ValueError(f"{where}: unknown key {key!r}; valid keys: {valid}")
    if "extra" in out:
        arch = out.get("architecture") or fields.get("__architecture__") or _default_arch()
        allowed = sae_extra_keys(arch)
        bad = sorted(set(out["extra"]) - allowed) if allowed is not None else []
        if bad:
            raise ValueError(
                f"{where} extra: {arch} SAEs take no argument {bad}; valid: {sorted(allowed)}"
            )
    return out


def _default_arch() -> str:
    from sae_hooks.train.config import DEFAULT_ARCHITECTURE

    return DEFAULT_ARCHITECTURE


def command_values(
    path: str | Path, command: str, schema: RunSchema
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(flag values, TrainConfig values) for `command` from a run.toml.

    Every table of the file is checked (a typo in [eval] fails `capture` too), then
    [model], [data] and the command's own table are merged, later tables winning.
    Keys of a shared table that the command has no flag for are skipped.
    """
    data = read_toml(path, schema.tables)
    fields = train_field_types()
    checked = _checked_tables(path, data, schema, fields)
    values: dict[str, Any] = {}
    mine = schema.commands.get(command, {})
    for name in SHARED_TABLES:  # only into the command's own [model] / [data] flags
        keys = {dest for dest, key in mine.items() if key.group == name}
        values.update({k: v for k, v in checked.get(name, {}).items() if k in keys})
    table = checked.get(command, {})
    train_values: dict[str, Any] = {}
    if command == "train":  # TrainConfig fields go to the config, the rest to flags
        train_values = {k: v for k, v in table.items() if k in fields and k != "point"}
        table = {k: v for k, v in table.items() if k not in train_values}
        for key in train_values:
            values.pop(key, None)
    values.update(table)
    return values, train_values


def _checked_tables(
    path: str | Path, data: dict[str, dict[str, Any]], schema: RunSchema, fields: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Every table of the file checked against its keys (the [sweep] table is the sweep's)."""
    shared: dict[str, Key] = {}
    for keys in schema.commands.values():
        for dest, key in keys.items():
            shared.setdefault(dest, key)
    checked: dict[str, dict[str, Any]] = {}
    for name, table in data.items():
        where = f"{path} [{name}]"
        if name in SHARED_TABLES:
            flags = {d: k for d, k in shared.items() if _in_group(schema, d, name)}
            checked[name] = check_table(where, table, flags)
        elif name in schema.commands:
            train = fields if name == "train" else None
            checked[name] = check_table(where, table, schema.commands[name], train)
    return checked


def _in_group(schema: RunSchema, dest: str, group: str) -> bool:
    """Whether any command files `dest` under the "model" or "data" group."""
    return any(keys.get(dest, Key(None)).group == group for keys in schema.commands.values())


def apply_values(
    args: argparse.Namespace, values: dict[str, Any], defaults: Mapping[str, Any]
) -> None:
    """Fill flags that were not given on the command line (flags win over the file)."""
    for dest, value in values.items():
        if getattr(args, dest, None) in (None, defaults.get(dest)):
            setattr(args, dest, value)
