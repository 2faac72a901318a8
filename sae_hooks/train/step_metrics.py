"""A Trainer's log lines: the train record at each log step and the validation record.

Separate from runlog.py (which writes lines, whatever they hold) so that the trainer's
loop reads as the loop; this is where its on-device window becomes numbers.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from .diagnostics import run_warnings, warn_all
from .runlog import read_log
from .schedule import lr_factor

if TYPE_CHECKING:
    from .trainer import Trainer


class StepMetrics:
    """Logs one Trainer's metrics; keeps the clock for tokens/s between log steps."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.restart()

    def restart(self) -> None:
        """Start the throughput clock at the trainer's current step."""
        self.tic, self.tic_step = time.perf_counter(), self.trainer.step

    def log_train(self) -> dict[str, float]:
        """Write the window's averages (all ranks reduced) and reset it; the bar's postfix."""
        t = self.trainer
        cfg = t.config
        t.window.all_reduce(t.rank)
        record = t.window.record()
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(
                f"the training loss became {record['loss']} between steps {self.tic_step} and "
                f"{t.step}; the last checkpoint in {t.run_dir} is from before it. Lower "
                "lr, or check the activations for overflow"
            )
        now = time.perf_counter()
        record.update(
            dead_fraction=t.dead.fraction(),
            lr=cfg.lr * lr_factor(t.step - 1, cfg.steps, cfg.warmup_steps, cfg.decay_fraction),
            tokens_per_s=(t.step - self.tic_step) * cfg.batch_size / (now - self.tic),
        )
        if t.coefficient.active:
            record[t.coefficient.field] = float(t.coefficient.at(t.step - 1))
        t.log.write({"step": t.step, "tokens": t.step * cfg.batch_size, **record})
        t.window.reset()
        self.tic, self.tic_step = now, t.step
        return {k: round(record[k], 4) for k in ("loss", "fvu", "l0")}

    def log_validation(self) -> None:
        """Validate and write the record; the final one also carries the run's warnings."""
        t = self.trainer
        if t.rank.is_main:  # the ranks hold the same SAE: one of them validates
            record = {"step": t.step, **t.validate()}
            if t.step == t.config.steps:  # the final record says what the run missed
                found = run_warnings([*read_log(t.run_dir), record], t.config.to_dict())
                if found:
                    record["warnings"] = found
                    warn_all(found)
            t.log.write(record)
