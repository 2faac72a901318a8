"""The TrainConfig flags shared by `sae-hooks train` and the recipe scripts.

Flags map one to one onto TrainConfig fields, so a flag, a config-file key and a
Python keyword are the same name (dashes for underscores).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from sae_hooks.cli.options import Option

TRAIN_GROUP = "training (TrainConfig fields)"
# Sparsity settings that only make sense for the variant a recipe chose.
VARIANT_FIELDS = ("k_per_token", "top_k", "target_l0", "l0_coefficient", "l1_coefficient")


def train_flags() -> dict[str, tuple[type, str]]:
    """Flag -> (type, help) of the TrainConfig knobs worth a flag; the rest go through
    --config."""
    from sae_hooks.sae import KERNELS, SAE_REGISTRY

    return {
        "architecture": (str, f"SAE variant: {', '.join(sorted(SAE_REGISTRY))}"),
        "target_point": (str, "transcoders: the point predicted from --point, e.g. mlp_out.3"),
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
        "wandb_project": (str, "also log to this Weights & Biases project (needs wandb)"),
    }


def train_options(defaults: Mapping[str, Any] | None = None) -> tuple[Option, ...]:
    """One option per train flag; unset ones fall back to `defaults`, then TrainConfig."""
    defaults = defaults or {}
    out = []
    for name, (kind, text) in train_flags().items():
        shown = f" [recipe default: {defaults[name]}]" if name in defaults else ""
        flag = "--" + name.replace("_", "-")
        out.append(Option((flag,), text + shown, type=kind, group=TRAIN_GROUP))
    tensorboard = (
        "also log to <run>/tensorboard (needs the extra: pip install 'sae-hooks[tensorboard]')"
    )
    out.append(
        Option(("--tensorboard",), tensorboard, action="store_const", const=True, group=TRAIN_GROUP)
    )
    return tuple(out)


def add_train_args(parser: argparse.ArgumentParser, defaults: dict[str, Any] | None = None) -> None:
    """The train flags on a recipe's own parser."""
    group = parser.add_argument_group(TRAIN_GROUP)
    for option in train_options(defaults):
        option.add_to(group)


def train_config(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> Any:
    """TrainConfig from recipe defaults, then a config file's [train] table, then flags."""
    from sae_hooks.train import TrainConfig

    values = dict(defaults or {})
    overrides = dict(getattr(args, "config_train", {}))
    overrides.update(
        {
            k: getattr(args, k)
            for k in (*train_flags(), "tensorboard")
            if getattr(args, k, None) is not None
        }
    )
    if overrides.keys() & {"steps", "total_tokens"}:  # one run length replaces the other
        values.pop("steps", None)
        values.pop("total_tokens", None)
    if overrides.get("architecture", values.get("architecture")) != values.get("architecture"):
        for key in VARIANT_FIELDS:  # a recipe's sparsity knobs belong to its own variant
            values.pop(key, None)
    values.update(overrides)
    return TrainConfig.from_dict(values)
