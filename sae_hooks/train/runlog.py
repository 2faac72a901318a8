"""The run's metric log: JSONL always, TensorBoard / wandb only when asked for.

One JSON object per line in run_dir/log.jsonl, each with "step". On resume the
lines past the checkpoint's step (written after it, before the interruption) are
dropped, so the log of a resumed run reads like that of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

LOG_FILE = "log.jsonl"


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
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [
                line for line in self.path.read_text().splitlines() if _step(line) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
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

    def write(self, record: dict[str, Any]) -> None:
        step = record["step"]
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


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of a run's log.jsonl, in order."""
    path = Path(run_dir) / LOG_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf  # a torn last line: drop it
