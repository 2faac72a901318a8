"""Train sparse autoencoders on activations: `train(TrainConfig(...), source, run_dir)`."""

from .config import TrainConfig
from .init import geometric_median
from .losses import aux_k_loss, fvu, mse
from .runlog import read_log
from .sources import ModelSource, StoreSource, TensorSource
from .trainer import Trainer, build_sae, train

__all__ = [
    "ModelSource",
    "StoreSource",
    "TensorSource",
    "TrainConfig",
    "Trainer",
    "aux_k_loss",
    "build_sae",
    "fvu",
    "geometric_median",
    "mse",
    "read_log",
    "train",
]
