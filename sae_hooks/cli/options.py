"""How a command declares its options: one `Option` per flag, read by argparse and run.toml.

A command lists its options as data (`options()` in its module); `add_command`
turns them into a subparser, and `schema` into the keys of its run.toml table
(`sae_hooks.run_config.Key`), so the config file's schema never walks argparse.
The option groups every command shares live here too: the run, the model, the data
and which SAE of a run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sae_hooks.run_config import Key
from sae_hooks.rundir import DEFAULT_SAE

DEFAULT_DATA = "pydoc"
DEFAULT_CONTEXT = 128
MODEL = "model"  # the option groups run.toml's [model] and [data] tables may set
DATA = "data"


@dataclass(frozen=True)
class Option:
    """One command-line option (or positional argument) and its run.toml key."""

    flags: tuple[str, ...]
    help: str
    type: Callable[[str], Any] | None = None
    default: Any = None
    choices: tuple | None = None
    action: str | None = None  # "store_true", "store_const", "append"
    const: Any = None
    nargs: str | None = None
    metavar: str | None = None
    group: str | None = None  # the --help section; MODEL and DATA are shared tables

    @property
    def parsed_default(self) -> Any:
        """The value argparse gives when the flag is absent."""
        if self.default is None and self.action == "store_true":
            return False
        return self.default

    @property
    def positional(self) -> bool:
        return not self.flags[0].startswith("-")

    @property
    def dest(self) -> str:
        if self.positional:
            return self.flags[0]
        long = [f for f in self.flags if f.startswith("--")] or list(self.flags)
        return long[0].lstrip("-").replace("-", "_")

    def key(self) -> Key | None:
        """Its run.toml key: the type a value must have (None: no key, a positional)."""
        if self.positional:
            return None
        if self.action in ("store_true", "store_const"):
            return Key(bool, None, self.group)
        kind: Any = self.type or str
        if self.action == "append":
            kind = kind | list[kind]
        elif self.nargs in ("+", "*"):
            kind = list[kind]
        return Key(kind, self.choices, self.group)

    def add_to(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        given = {
            "help": self.help,
            "type": self.type,
            "default": self.default,
            "choices": self.choices,
            "action": self.action,
            "nargs": self.nargs,
            "metavar": self.metavar,
        }
        if self.action == "store_const":
            given["const"] = self.const
        if self.action in ("store_true", "store_const"):
            given.pop("type")
            given.pop("choices")
            given.pop("nargs")
        parser.add_argument(*self.flags, **{k: v for k, v in given.items() if v is not None})


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    text: str,
    options: Iterable[Option],
    handler: Callable[[argparse.Namespace], Any],
    *,
    example: str | None = None,
    description: str | None = None,
    formatter: type[argparse.HelpFormatter] = argparse.RawDescriptionHelpFormatter,
) -> argparse.ArgumentParser:
    """A subcommand's parser, its options added in groups, its handler as a default."""
    p = sub.add_parser(
        name,
        help=text,
        description=description or text,
        epilog=f"example:\n  {example}" if example else None,
        formatter_class=formatter,
    )
    options = tuple(options)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in options:
        if option.group is None:
            option.add_to(p)
        else:
            if option.group not in groups:
                groups[option.group] = p.add_argument_group(option.group)
            option.add_to(groups[option.group])
    p.set_defaults(handler=handler, defaults=defaults(options))
    return p


def schema(options: Iterable[Option]) -> dict[str, Key]:
    """The run.toml keys of a command's options (--config itself is not a key)."""
    keys = {o.dest: o.key() for o in options if o.dest != "config"}
    return {dest: key for dest, key in keys.items() if key is not None}


def defaults(options: Iterable[Option]) -> Mapping[str, Any]:
    return {o.dest: o.parsed_default for o in options}


# --------------------------------------------------------------- shared option groups


def model_options() -> tuple[Option, ...]:
    from sae_hooks.auto_models import BACKENDS, DTYPES
    from sae_hooks.models import FAMILIES

    return (
        Option(
            ("--model",),
            "a Hugging Face hub id (gpt2, EleutherAI/pythia-70m, ...) or a local model "
            "directory; downloaded into the HF cache on first use, read from it after "
            "(and with HF_HUB_OFFLINE=1) [default: the run's own]",
            metavar="NAME_OR_PATH",
            group=MODEL,
        ),
        Option(("--revision",), "hub branch, tag or commit of --model", group=MODEL),
        Option(
            ("--dtype",),
            "model weights' dtype (captures store it too) [default: float32]",
            choices=tuple(DTYPES),
            group=MODEL,
        ),
        Option(
            ("--backend",),
            "hf, or transformer-lens: run the model through TransformerLens [default: hf]",
            choices=BACKENDS,
            group=MODEL,
        ),
        Option(
            ("--family",),
            "deprecated alias: --family F --model-dir DIR is --model DIR; --family minilm is "
            "the bundled MiniLM; with --tiny a random-init model of the family",
            choices=FAMILIES,
            group=MODEL,
        ),
        Option(("--model-dir",), "with --family: local model directory", group=MODEL),
        Option(
            ("--tiny",),
            "with --family: random-init small model (no weights)",
            action="store_true",
            group=MODEL,
        ),
        Option(("--device",), "torch device for the model", default="cpu", group=MODEL),
        Option(
            ("--trust-remote-code",),
            "allow code shipped with the model to run (off by default)",
            action="store_true",
            group=MODEL,
        ),
    )


def data_options() -> tuple[Option, ...]:
    return (
        Option(
            ("--data",),
            "'pydoc' (CPython's docs), a Hugging Face hub dataset id, a .txt/.jsonl/.json/"
            ".parquet/.csv file, a folder of .txt files, a dataset saved with `datasets` "
            "(save_to_disk: a Dataset or DatasetDict), or (vision) a folder of images "
            "[default: the run's corpus, else pydoc]",
            group=DATA,
        ),
        Option(
            ("--split",),
            "the split of a hub dataset or saved DatasetDict [default: train, else its only one]",
            group=DATA,
        ),
        Option(
            ("--text-field",), "field of .jsonl/dataset rows [text]", default="text", group=DATA
        ),
        Option(
            ("--streaming",),
            "read a hub dataset (or .json/.parquet/.csv file) row by row, without preparing it",
            action="store_true",
            group=DATA,
        ),
        Option(
            ("--skip-invalid-rows",),
            "pass over rows whose text is not a string (counted) instead of refusing them",
            action="store_true",
            group=DATA,
        ),
        Option(
            ("--context-length",),
            f"tokens per context [default: {DEFAULT_CONTEXT}]",
            type=int,
            group=DATA,
        ),
        Option(
            ("--batch-size",), "contexts or images per forward", type=int, default=32, group=DATA
        ),
    )


def part_option(choices: tuple[str, ...], text: str) -> Option:
    """--part: which part of the corpus a command reads (the held-out tenth is never
    captured); the old --split train|all|held-out still works, with a deprecation note."""
    return Option(("--part",), f"{text} [default: {choices[0]}]", choices=choices)


def location_options() -> tuple[Option, ...]:
    """--run and --cache: where the run directory is."""
    return (
        Option(("--run",), "run name: cache/<run> [default: %(default)s]", default="default"),
        Option(("--cache",), "cache directory [default: $SAE_HOOKS_CACHE or ./cache]"),
    )


def run_options() -> tuple[Option, ...]:
    return (
        *location_options(),
        Option(("--config",), "run.toml: [model] [data] and a table per subcommand"),
        quiet_option(),
    )


def quiet_option() -> Option:
    return Option(
        ("--quiet",), "no progress bars (nor transformers' or the hub's)", action="store_true"
    )


def name_option(text: str) -> Option:
    return Option(("--name",), f"{text} [default: %(default)s]", default=DEFAULT_SAE)


def sae_options() -> tuple[Option, ...]:
    """Which SAE of a run: --sae DIR, or --name in the run; its points."""
    return (
        Option(("--sae",), "SAE directory [default: cache/<run>/<name>/sae]"),
        name_option("which SAE of the run"),
        Option(("--point",), "hook point [default: the one the SAE was trained on]"),
        Option(("--target-point",), "transcoders: the output point [default: the trained one]"),
    )
