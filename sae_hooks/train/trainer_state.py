"""What a checkpoint holds of a Trainer: save it, restore it, and check it belongs here.

Kept apart from checkpoint.py, which knows files and formats but not the trainer's
fields; this module is the one place that names which trainer state survives a resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import checkpoint
from .config import RESUME_FREE_FIELDS, TrainConfig

if TYPE_CHECKING:
    from .trainer import Trainer


def check_resumable(config: TrainConfig, path: Path, state: dict[str, Any]) -> None:
    """The checkpoint's config must be this one (bar RESUME_FREE_FIELDS), its step in range."""
    file = path / checkpoint.STATE_FILE
    try:
        saved = TrainConfig.from_dict(state["config"])
    except (ValueError, TypeError) as err:
        raise ValueError(f"{file} holds an invalid training config: {err}") from None
    if not 0 <= state["step"] <= config.steps:
        raise ValueError(
            f"{file} is at step {state['step']}, outside this run's 0..{config.steps} "
            f"steps; the checkpoint is damaged or from another run: delete {path} to restart"
        )
    diff = sorted(
        k
        for k, v in saved.to_dict().items()
        if k not in RESUME_FREE_FIELDS and config.to_dict()[k] != v
    )
    if diff:
        saved_values = {k: saved.to_dict()[k] for k in diff}
        raise ValueError(
            f"cannot resume {path}: the config differs in {diff}; "
            f"only {sorted(RESUME_FREE_FIELDS)} may change between runs. The checkpoint "
            f"has {saved_values} (a default that changed between versions resolves "
            "differently: pass these values to resume)"
        )


def restore(trainer: Trainer, path: Path) -> None:
    """Load the checkpoint at path into the trainer's SAE, optimiser, statistics and loader."""
    tensors, state = checkpoint.load(
        path, sae=trainer.sae, optimizer=trainer.optimizer, device=trainer.device
    )
    trainer.dead.since_fired = tensors["since_fired"]
    trainer.coefficient.value = tensors["coefficient"]
    steps = state["window_steps"]
    trainer.window.load_state(tensors, steps, steps * trainer.config.batch_size)
    trainer.step, trainer.scale = state["step"], state["scale"]
    trainer.aux_active = state["aux_active"]
    trainer.loader.load_state_dict(state["loader"])


def save(trainer: Trainer) -> Path:
    """Write the trainer's checkpoint into its run directory; the path written."""
    return checkpoint.save(
        trainer.run_dir,
        sae=trainer.sae,
        optimizer=trainer.optimizer,
        tensors={
            "since_fired": trainer.dead.since_fired,
            "coefficient": trainer.coefficient.value,
            **trainer.window.state_tensors(),
        },
        state={
            "step": trainer.step,
            "scale": trainer.scale,
            "aux_active": trainer.aux_active,
            "window_steps": trainer.window.steps,
            "loader": trainer.loader.state_dict(),
            "config": trainer.config.to_dict(),
        },
    )
