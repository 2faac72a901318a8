"""Train sparse autoencoders on activations: `train(TrainConfig(...), source, run_dir)`."""

from .config import TrainConfig
from .init import geometric_median
from .losses import aux_k_loss, fvu, mse
from .many import MultiPointSource, read_sweep, train_many
from .runlog import read_log
from .sources import ModelSource, StoreSource, TensorSource
from .sweep import Sweep
from .trainer import Trainer, build_sae, train

__all__ = [
    "ModelSource",
    "MultiPointSource",
    "StoreSource",
    "Sweep",
    "TensorSource",
    "TrainConfig",
    "Trainer",
    "aux_k_loss",
    "build_sae",
    "fvu",
    "geometric_median",
    "mse",
    "read_log",
    "read_sweep",
    "train",
    "train_many",
]
