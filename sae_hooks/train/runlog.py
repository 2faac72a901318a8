"""The run's metric log: JSONL always, TensorBoard / wandb only when asked for.

One JSON object per line in run_dir/log.jsonl, each with "step". On resume the
lines past the checkpoint's step (written after it, before the interruption) are
dropped, so the log of a resumed run reads like that of an uninterrupted one.
`LOG_KEYS` says what each key measures; `read_log` is the one reader (the
report's curves use it too).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

LOG_FILE = "log.jsonl"

LOG_KEYS: dict[str, str] = {
    "step": "optimiser steps taken",
    "tokens": "training rows seen (step * batch_size)",
    "loss": "training loss, mean of the steps since the last log line",
    "mse": "reconstruction error ||x - x_hat||^2 (training scale), mean over those steps",
    "fvu": "FVU of the training batches since the last log line, one mean over all their rows",
    "l0": "codes per row that the training-mode forward kept (BatchTopK: its batch budget, "
    "k_per_token on average; JumpReLU / ReLU: the codes above threshold / zero)",
    "dead_fraction": "share of latents silent for dead_tokens training rows",
    "dense_fraction": "share of latents firing on more than 10% of the window's rows",
    "aux_loss": "AuxK loss, mean over the window (0 while no latent is dead)",
    "lr": "learning rate of the last step",
    "tokens_per_s": "training throughput over the window",
    "l0_coefficient / l1_coefficient": "the SAE's sparsity penalty weight (its penalty_field)",
    "val/fvu": "FVU on val_batches held-out batches in eval mode, counted as eval.json's fvu",
    "val/mse": "reconstruction error on held-out rows (training scale)",
    "val/l0": "codes per row in eval mode, counted as eval.json's l0 (BatchTopK: the running "
    "threshold's codes, which may differ from the training budget)",
    "val/dead_fraction": "share of latents silent on every held-out row",
}
"""What each log.jsonl key measures (the report's panels and the docs read these)."""


class RunLog:
    def __init__(
        self,
        run_dir: Path,
        *,
        resume_step: int | None,
        tensorboard: bool = False,
        wandb_project: str | None = None,
        config: dict[str, Any] | None = None,
    ):
        self.path = run_dir / LOG_FILE
        run_dir.mkdir(parents=True, exist_ok=True)
        self._keys: dict[int, set[str]] = {}  # step -> keys logged at it (for `has`)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [
                line for line in self.path.read_text().splitlines() if _step(line) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
            for line in kept:
                self._remember(_record(line))
        self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()
        self._tb = self._wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError(
                    "tensorboard=True needs the tensorboard package (pip install tensorboard)"
                ) from err
            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if wandb_project:
            try:
                import wandb
            except ImportError as err:
                raise ImportError("wandb_project is set but wandb is not installed") from err
            self._wandb = wandb.init(
                project=wandb_project, dir=str(run_dir), config=config, resume="allow"
            )

    def has(self, step: int, key: str) -> bool:
        """Whether a line at `step` holding `key` is in the log (written or kept on resume)."""
        return key in self._keys.get(step, ())

    def _remember(self, record: dict[str, Any] | None) -> None:
        if record is not None and isinstance(record.get("step"), int):
            self._keys.setdefault(record["step"], set()).update(record)

    def write(self, record: dict[str, Any]) -> None:
        step = record["step"]
        self._remember(record)
        if self._file.closed:  # a Trainer fitted again after an early stop
            self._file = open(self.path, "a")  # noqa: SIM115
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()
        }
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "step"}, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


class NoLog:
    """The log of data-parallel ranks other than 0: they compute metrics, write nothing."""

    def has(self, step: int, key: str) -> bool:
        return False

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def read_log(run_dir_or_log: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON records of a run's log, in order: a run directory or the log file itself.

    A torn last line (a run killed mid-write) is skipped; a bad line anywhere else
    is an error naming it.
    """
    path = Path(run_dir_or_log)
    if path.is_dir():
        path = path / LOG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no training log at {path}: pass a run directory holding {LOG_FILE} or the log itself"
        )
    records = []
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if n == len(lines) - 1:
                break
            raise ValueError(f"{path} line {n + 1} is not JSON: {err}") from err
        if isinstance(record, dict):
            records.append(record)
    return records


def _step(line: str) -> float:
    step = (_record(line) or {}).get("step")
    return step if isinstance(step, (int, float)) else math.inf  # a torn last line: drop it


def _record(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
