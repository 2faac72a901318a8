"""Did the run reach what it was asked for? Warnings read from a finished run's log.

A run that misses its sparsity target, leaves many latents dead or dense, or is
still improving steeply when it stops says so: the trainer adds "warnings": [...] to
the run's final (validation) log record (which the dashboard and `log_warnings` show),
emits each as a Python warning (the CLI prints them), and summary.txt lists them.

The checks, on the log's last records:

- L0 off target: |L0 - target| / target > L0_TOLERANCE, L0 the held-out eval-mode
  `val/l0` when logged (else the training `l0`), target `target_l0` (penalised
  variants) or the per-row budget `k_per_token` (top-k variants).
- dead / dense: more than LATENT_TOLERANCE of the latents dead (the training
  `dead_fraction`: silent for the last `dead_tokens` tokens; else `val/dead_fraction`)
  or dense (training `dense_fraction`: firing on more than 10% of rows). The held-out
  figure comes second: a latent firing once in 5,000 rows is alive, yet silent on the
  4,096 rows of a default validation (the MiniLM default showed 10% "dead" there
  against 0.07% over its 60k-token training window and 0.5% on the eval set).
- undertrained: training FVU fell by more than UNDERTRAINED_DROP (relative) over the
  last UNDERTRAINED_WINDOW of the steps: (FVU at 90% of the run - final FVU) /
  FVU at 90%. A converged run changes by a few per cent at most there, even while
  the learning rate decays.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .variant_settings import flat_settings

L0_TOLERANCE = 0.25
LATENT_TOLERANCE = 0.10
UNDERTRAINED_WINDOW = 0.10
UNDERTRAINED_DROP = 0.05


class RunWarning(UserWarning):
    """A training run finished but missed what it was configured for."""


def target_l0(config: Mapping[str, Any]) -> float | None:
    """The L0 a resolved config (either layout) asks for: target_l0, else the variant's
    k_per_token; None if neither."""
    settings = flat_settings(dict(config))
    for key in ("target_l0", "k_per_token"):
        value = settings.get(key)
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return None


def _last(records: Sequence[Mapping[str, Any]], *keys: str) -> float | None:
    """The latest value of the first key (in order of preference) that any record holds."""
    for key in keys:
        for record in reversed(records):
            value = record.get(key)
            if isinstance(value, (int, float)):
                return float(value)
    return None


def run_warnings(records: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> list[str]:
    """The warnings for a run with these log records and this (resolved) config."""
    out: list[str] = []
    target = target_l0(config)
    l0 = _last(records, "val/l0", "l0")
    if target is not None and l0 is not None and abs(l0 - target) > L0_TOLERANCE * target:
        out.append(
            f"final L0 {l0:.2f} is {abs(l0 - target) / target:.0%} off the target {target:g} "
            f"(tolerance {L0_TOLERANCE:.0%}): train longer, or adjust the sparsity settings"
        )
    dead = _last(records, "dead_fraction", "val/dead_fraction")
    if dead is not None and dead > LATENT_TOLERANCE:
        out.append(
            f"{dead:.0%} of the latents are dead (more than {LATENT_TOLERANCE:.0%}): "
            "raise aux_coefficient, lower lr, or use fewer latents"
        )
    dense = _last(records, "dense_fraction")
    if dense is not None and dense > LATENT_TOLERANCE:
        out.append(
            f"{dense:.0%} of the latents are dense (fire on more than 10% of rows; more than "
            f"{LATENT_TOLERANCE:.0%} of them): the SAE is not sparse enough"
        )
    drop = fvu_drop(records, config.get("steps"))
    if drop is not None and drop > UNDERTRAINED_DROP:
        out.append(
            f"undertrained: training FVU still fell {drop:.1%} over the last "
            f"{UNDERTRAINED_WINDOW:.0%} of the steps (threshold {UNDERTRAINED_DROP:.0%}): "
            "train for more steps"
        )
    return out


def fvu_drop(records: Sequence[Mapping[str, Any]], steps: Any) -> float | None:
    """(FVU at (1 - UNDERTRAINED_WINDOW) of the run - final FVU) / the former, from the
    training records; None without a record at or before that point and one after."""
    train = [r for r in records if isinstance(r.get("fvu"), (int, float)) and "step" in r]
    if not isinstance(steps, int) or steps < 1 or len(train) < 2:
        return None
    cut = (1 - UNDERTRAINED_WINDOW) * steps
    before = [r for r in train if r["step"] <= cut]
    if not before or train[-1]["step"] <= cut:
        return None
    start, end = float(before[-1]["fvu"]), float(train[-1]["fvu"])
    if not start > 0:
        return None
    return (start - end) / start


def warn_all(messages: Sequence[str], about: str | os.PathLike | None = None) -> None:
    """Emit each message as a RunWarning (shown once per message by Python's filters),
    naming the SAE it is about (its run directory: one SAE of a sweep, say)."""
    for message in messages:
        warnings.warn(f"SAE {about}: {message}" if about else message, RunWarning, stacklevel=3)


def logged_warnings(run_dir: str | os.PathLike) -> list[str]:
    """The warnings a finished run logged (its log.jsonl records with "warnings"), in
    order, each once; [] when the run has no log."""
    from .runlog import LOG_FILE, read_log

    path = Path(run_dir)
    if not (path / LOG_FILE).is_file():
        return []
    found = [w for r in read_log(path) for w in (r.get("warnings") or [])]
    return list(dict.fromkeys(str(w) for w in found))
