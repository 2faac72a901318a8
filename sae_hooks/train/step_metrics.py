"""A Trainer's log lines: the train record at each log step and the validation record.

Separate from runlog.py (which writes lines, whatever they hold) so that the trainer's
loop reads as the loop; this is where its on-device window becomes numbers. It is
handed what it reads (the config, the window, the dead-latent and coefficient state,
the process rank), never the Trainer; the step, the log and validation come per call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

from sae_hooks.distributed import ProcessRank

from .coefficient import SparsityCoefficient
from .config import TrainConfig
from .diagnostics import run_warnings, warn_all
from .runlog import NoLog, RunLog, read_log
from .schedule import lr_factor
from .window import DeadLatents, LogWindow


class StepMetrics:
    """Logs one run's metrics; keeps the clock for tokens/s between log steps."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        window: LogWindow,
        dead: DeadLatents,
        coefficient: SparsityCoefficient,
        rank: ProcessRank,
        run_dir: Path,
    ) -> None:
        self.config, self.window, self.dead = config, window, dead
        self.coefficient, self.rank, self.run_dir = coefficient, rank, run_dir
        self.restart(0)

    def restart(self, step: int) -> None:
        """Start the throughput clock at `step`."""
        self.tic, self.tic_step = time.perf_counter(), step

    def log_train(self, step: int, log: RunLog | NoLog) -> dict[str, float]:
        """Write the window's averages (all ranks reduced) and reset it; the bar's postfix."""
        cfg, window = self.config, self.window
        window.all_reduce(self.rank)
        record = window.record()
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(
                f"the training loss became {record['loss']} between steps {self.tic_step} and "
                f"{step}; the last checkpoint in {self.run_dir} is from before it. Lower "
                "lr, or check the activations for overflow"
            )
        now = time.perf_counter()
        record.update(
            dead_fraction=self.dead.fraction(),
            lr=cfg.lr * lr_factor(step - 1, cfg.steps, cfg.warmup_steps, cfg.decay_fraction),
            tokens_per_s=(step - self.tic_step) * cfg.batch_size / (now - self.tic),
        )
        if self.coefficient.active:
            record[self.coefficient.field] = float(self.coefficient.at(step - 1))
        log.write({"step": step, "tokens": step * cfg.batch_size, **record})
        window.reset()
        self.tic, self.tic_step = now, step
        return {k: round(record[k], 4) for k in ("loss", "fvu", "l0")}

    def log_validation(
        self, step: int, log: RunLog | NoLog, validate: Callable[[], dict[str, float]]
    ) -> None:
        """Validate and write the record; the final one also carries the run's warnings."""
        if self.rank.is_main:  # the ranks hold the same SAE: one of them validates
            record = {"step": step, **validate()}
            if step == self.config.steps:  # the final record says what the run missed
                found = run_warnings([*read_log(self.run_dir), record], self.config.to_dict())
                if found:
                    record["warnings"] = found
                    warn_all(found, about=self.run_dir)
            log.write(record)
