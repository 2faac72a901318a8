"""Sparse autoencoders: ReLU, TopK, BatchTopK and JumpReLU, with safetensors save/load."""

from .base import SAE, SAE_REGISTRY, SAEOutput, load_sae
from .batchtopk import BatchTopKSAE
from .dictionary import NORMALIZATIONS, DictionaryLayer
from .encoders import ENCODERS, register_encoder
from .formats import export_saelens, import_saelens
from .jump import JumpSAE
from .kernels import KERNELS
from .modes import eval_mode
from .topk import TopKSAE

__all__ = [
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
    "eval_mode",
    "export_saelens",
    "import_saelens",
    "load_sae",
    "register_encoder",
]
