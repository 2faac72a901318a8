"""Sparse autoencoders: ReLU, TopK, BatchTopK and JumpReLU, with safetensors save/load."""

from .base import SAE, SAE_REGISTRY, SAEOutput, load_sae
from .batchtopk import BatchTopKSAE
from .dictionary import NORMALIZATIONS, DictionaryLayer
from .encoders import ENCODERS, register_encoder
from .formats import export_saelens, import_saelens
from .jump import JumpSAE
from .kernels import KERNELS
from .topk import TopKSAE
from .training import TrainingContract

DEFAULT_ARCHITECTURE = BatchTopKSAE.architecture
"""The variant TrainConfig trains when none is named."""

__all__ = [
    "DEFAULT_ARCHITECTURE",
    "ENCODERS",
    "KERNELS",
    "NORMALIZATIONS",
    "SAE",
    "SAE_REGISTRY",
    "BatchTopKSAE",
    "DictionaryLayer",
    "JumpSAE",
    "SAEOutput",
    "TopKSAE",
    "TrainingContract",
    "export_saelens",
    "import_saelens",
    "load_sae",
    "register_encoder",
]
