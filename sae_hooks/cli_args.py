"""Command-line flags shared by the `sae-hooks` CLI and the recipe scripts.

Flags map one to one onto TrainConfig fields, so a flag, a config-file key and a
Python keyword are the same name (dashes for underscores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sae_hooks.sae import KERNELS, SAE_REGISTRY
from sae_hooks.train import TrainConfig

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

# Flag -> TrainConfig field, for the knobs worth a flag; the rest go through --config.
TRAIN_FLAGS: dict[str, tuple[type, str]] = {
    "architecture": (str, f"SAE variant: {', '.join(sorted(SAE_REGISTRY))}"),
    "nb_concepts": (int, "dictionary size (default: 8 x d_model)"),
    "expansion_factor": (int, "dictionary size as a multiple of d_model"),
    "k_per_token": (int, "TopK/BatchTopK: active latents per token (default 32)"),
    "top_k": (int, "TopK: per row; BatchTopK: per batch (the seed API's meaning)"),
    "kernel": (str, f"JumpReLU pseudo-derivative kernel: {', '.join(KERNELS)}"),
    "bandwidth": (float, "JumpReLU kernel bandwidth (default 0.001*sqrt(d))"),
    "target_l0": (float, "JumpReLU/ReLU: adapt the sparsity coefficient to reach this L0"),
    "l0_coefficient": (float, "JumpReLU: L0 penalty weight"),
    "l1_coefficient": (float, "ReLU: L1 penalty weight"),
    "batch_size": (int, "rows per training step"),
    "steps": (int, "training steps"),
    "total_tokens": (int, "training tokens (instead of --steps)"),
    "lr": (float, "learning rate (default 2e-4/sqrt(nb_concepts/2^14))"),
    "seed": (int, "random seed"),
    "device": (str, "torch device, e.g. cpu, cuda, cuda:1"),
    "log_every": (int, "steps between metric lines in log.jsonl"),
    "checkpoint_every": (int, "steps between checkpoints"),
}


# Sparsity settings that only make sense for the variant a recipe chose.
VARIANT_FIELDS = ("k_per_token", "top_k", "target_l0", "l0_coefficient", "l1_coefficient")


def add_train_args(parser: argparse.ArgumentParser, defaults: dict[str, Any] | None = None) -> None:
    """One flag per TRAIN_FLAGS entry; unset flags fall back to `defaults`, then TrainConfig."""
    group = parser.add_argument_group("training (TrainConfig fields)")
    defaults = defaults or {}
    for name, (kind, text) in TRAIN_FLAGS.items():
        shown = f" [recipe default: {defaults[name]}]" if name in defaults else ""
        group.add_argument(
            "--" + name.replace("_", "-"), type=kind, default=None, help=text + shown
        )


def recipe_parser(
    doc: str, model_dir_help: str, defaults: dict[str, Any]
) -> argparse.ArgumentParser:
    """The flags every recipe shares; a recipe adds its own (point, data, concept)."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model-dir", help=model_dir_help)
    p.add_argument("--tiny", action="store_true", help="random-init small model, for tests")
    p.add_argument("--capture-batch-size", type=int, default=32, help="inputs per forward")
    p.add_argument("--max-rows", type=int, help="stop capturing after this many rows")
    p.add_argument("--eval-batches", type=int, help="held-out batches to evaluate [8]")
    p.add_argument("--run-name", help="run directory name under the cache (default: recipe name)")
    p.add_argument("--cache", help="cache directory (default $SAE_HOOKS_CACHE or ./cache)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML dashboard")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_train_args(p, defaults)
    return p


def train_config(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from recipe defaults, then a config file's [train] table, then flags."""
    values = dict(defaults or {})
    overrides = dict(getattr(args, "_file_train", {}))
    overrides.update(
        {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k, None) is not None}
    )
    if overrides.keys() & {"steps", "total_tokens"}:  # one run length replaces the other
        values.pop("steps", None)
        values.pop("total_tokens", None)
    if overrides.get("architecture", values.get("architecture")) != values.get("architecture"):
        for key in VARIANT_FIELDS:  # a recipe's sparsity knobs belong to its own variant
            values.pop(key, None)
    values.update(overrides)
    return TrainConfig.from_dict(values)


def load_config_file(path: str | Path, sections: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """A TOML file of tables named after the steps; unknown tables are an error."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config file {path} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ValueError(
            f"config file {path}: unknown tables {unknown}; valid tables: {list(sections)}"
        )
    for name, table in data.items():
        if not isinstance(table, dict):
            raise ValueError(f"config file {path}: [{name}] must be a table of key = value")
    return data


def apply_file_section(
    parser: argparse.ArgumentParser, args: argparse.Namespace, table: dict[str, Any], where: str
) -> None:
    """Fill flags that were not given on the command line from a config-file table."""
    dests = {a.dest for a in parser._actions}
    unknown = sorted(k for k in table if k.replace("-", "_") not in dests)
    if unknown:
        valid = sorted(d for d in dests if d not in ("help", "config"))
        raise ValueError(f"{where}: unknown keys {unknown}; valid keys: {valid}")
    actions = {a.dest: a for a in parser._actions}
    for key, value in table.items():
        dest = key.replace("-", "_")
        _check_file_value(actions[dest], key, value, where)
        if getattr(args, dest, None) in (None, parser.get_default(dest)):
            setattr(args, dest, value)


def _check_file_value(action: argparse.Action, key: str, value: Any, where: str) -> None:
    """A config-file value must have the type its flag parses to (TOML has real types)."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        kinds: tuple[type, ...] = (bool,)
    elif action.type in (int, float):
        kinds = (int,) if action.type is int else (int, float)
    else:
        kinds = (str,)
    values = (
        value if isinstance(action, argparse._AppendAction) and isinstance(value, list) else [value]
    )
    bad = [
        v for v in values if not isinstance(v, kinds) or (bool not in kinds and isinstance(v, bool))
    ]
    if bad:
        names = " or ".join(k.__name__ for k in kinds)
        raise ValueError(
            f"{where}: {key} must be a {names} (like --{action.dest.replace('_', '-')}), got {value!r}"
        )
    if action.choices is not None and any(v not in action.choices for v in values):
        raise ValueError(f"{where}: {key} must be one of {list(action.choices)}, got {value!r}")


def fail(message: str) -> None:
    """Exit with a one-line error instead of a traceback for user mistakes."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
