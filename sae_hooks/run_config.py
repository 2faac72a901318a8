"""run.toml: one config file for a whole run, its values type-checked.

Tables: [model] and [data] (shared by every subcommand that takes those flags),
[capture], [train], [eval], [ablate], [inspect], [report] (one per subcommand) and
[sweep] (read by `sae-hooks sweep` together with [train]). Keys are flag names
(dashes or underscores); [train] also takes any TrainConfig field.

The schema is derived, not written twice: a table's keys and types are those of the
subcommand's argparse flags (type=int -> int, store_true -> bool, append -> list),
and TrainConfig's field annotations for [train]. Choice: this small typed layer over
the standard library's tomllib rather than a config library (pydantic, OmegaConf,
Hydra), which would add a dependency and a second description of the same fields.
A wrong value fails with one line naming file, table, key, expected type and value.
"""

from __future__ import annotations

import argparse
import inspect
import types
import typing
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SHARED_TABLES = ("model", "data")
COMMAND_TABLES = ("capture", "train", "eval", "ablate", "export", "inspect", "report")
TABLES = (*SHARED_TABLES, *COMMAND_TABLES, "sweep")
_NOT_KEYS = {"help", "config", "handler", "parser", "command"}


def read_toml(path: str | Path) -> dict[str, dict[str, Any]]:
    """The tables of a run.toml; an unknown table or a bare key is an error."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except UnicodeDecodeError:
        raise ValueError(f"config file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config file {path} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - set(TABLES))
    if unknown:
        raise ValueError(
            f"config file {path}: unknown tables {unknown}; valid tables: {list(TABLES)}"
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


def flag_types(parser: argparse.ArgumentParser) -> dict[str, tuple[Any, tuple | None]]:
    """dest -> (type, choices) of every option of a parser."""
    out: dict[str, tuple[Any, tuple | None]] = {}
    for action in parser._actions:
        if action.dest in _NOT_KEYS or not action.option_strings:
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            kind: Any = bool
        else:
            kind = action.type or str
            if isinstance(action, argparse._AppendAction):
                kind = kind | list[kind]
        choices = tuple(action.choices) if action.choices else None
        out[action.dest] = (kind, choices)
    return out


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
    flags: dict[str, tuple[Any, tuple | None]],
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
            kind, choices = flags[dest]
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
    path: str | Path,
    command: str,
    parsers: dict[str, argparse.ArgumentParser],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(flag values, TrainConfig values) for `command` from a run.toml.

    Every table of the file is checked (a typo in [eval] fails `capture` too), then
    [model], [data] and the command's own table are merged, later tables winning.
    Keys of a shared table that the command has no flag for are skipped.
    """
    data = read_toml(path)
    fields = train_field_types()
    checked: dict[str, dict[str, Any]] = {}
    shared_flags: dict[str, tuple[Any, tuple | None]] = {}
    for name in COMMAND_TABLES:
        if name in parsers:
            for dest, spec in flag_types(parsers[name]).items():
                shared_flags.setdefault(dest, spec)
    for name, table in data.items():
        where = f"{path} [{name}]"
        if name == "sweep":
            continue  # `sae-hooks sweep` checks its own table
        if name in SHARED_TABLES:
            flags = {d: s for d, s in shared_flags.items() if d in _shared_keys(name, parsers)}
            checked[name] = check_table(where, table, flags)
        elif name in parsers:
            checked[name] = check_table(
                where, table, flag_types(parsers[name]), fields if name == "train" else None
            )
    values: dict[str, Any] = {}
    for name in SHARED_TABLES:  # only into the command's own [model] / [data] flags
        mine = _shared_keys(name, {command: parsers[command]}) if command in parsers else set()
        values.update({k: v for k, v in checked.get(name, {}).items() if k in mine})
    table = checked.get(command, {})
    train_values: dict[str, Any] = {}
    if command == "train":  # TrainConfig fields go to the config, the rest to flags
        train_values = {k: v for k, v in table.items() if k in fields and k != "point"}
        table = {k: v for k, v in table.items() if k not in train_values}
        for key in train_values:
            values.pop(key, None)
    values.update(table)
    return values, train_values


def _shared_keys(table: str, parsers: dict[str, argparse.ArgumentParser]) -> set[str]:
    """The flags of the "model" or "data" argument group of any subcommand."""
    keys: set[str] = set()
    for parser in parsers.values():
        for group in parser._action_groups:
            if group.title == table:
                keys |= {a.dest for a in group._group_actions}
    return keys


def apply_values(
    parser: argparse.ArgumentParser, args: argparse.Namespace, values: dict[str, Any]
) -> None:
    """Fill flags that were not given on the command line (flags win over the file)."""
    for dest, value in values.items():
        if getattr(args, dest, None) in (None, parser.get_default(dest)):
            setattr(args, dest, value)
