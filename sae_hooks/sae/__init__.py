"""Sparse autoencoders: ReLU, TopK, BatchTopK, JumpReLU, Matryoshka BatchTopK and
(skip) transcoders, with safetensors save/load. Other tools' formats (SAELens, the
Hub, Neuronpedia) are sae_hooks.interop's: this package knows no model and no trainer."""

from .base import SAE, SAE_REGISTRY, SAEOutput
from .batchtopk import BatchTopKConfig, BatchTopKSAE
from .dictionary import NORMALIZATIONS, DictionaryLayer
from .encoders import (
    ENCODERS,
    AttentionEncoder,
    EncoderFactory,
    MLPEncoder,
    ResNetEncoder,
    register_encoder,
)
from .jump import JumpReLUConfig, JumpSAE, heaviside, jump_relu
from .kernels import KERNELS
from .matryoshka import MatryoshkaBatchTopKSAE
from .modes import eval_mode
from .output import TrainingSupport
from .overcomplete import load_overcomplete_state_dict
from .persistence import load_sae
from .settings import VariantConfig
from .topk import TopKConfig, TopKSAE
from .training import TrainingContract, TrainRun
from .transcoder import PairedMixin, SkipTranscoder, Transcoder
from .transcoder_variants import (
    BatchTopKSkipTranscoder,
    BatchTopKTranscoder,
    JumpReLUSkipTranscoder,
    JumpReLUTranscoder,
    TopKSkipTranscoder,
    TopKTranscoder,
)

DEFAULT_ARCHITECTURE = BatchTopKSAE.architecture
"""The variant TrainConfig trains when none is named."""

__all__ = [
    "DEFAULT_ARCHITECTURE",
    "ENCODERS",
    "KERNELS",
    "NORMALIZATIONS",
    "SAE",
    "SAE_REGISTRY",
    "AttentionEncoder",
    "BatchTopKConfig",
    "BatchTopKSAE",
    "BatchTopKSkipTranscoder",
    "BatchTopKTranscoder",
    "DictionaryLayer",
    "EncoderFactory",
    "JumpReLUConfig",
    "JumpReLUSkipTranscoder",
    "JumpReLUTranscoder",
    "JumpSAE",
    "MLPEncoder",
    "MatryoshkaBatchTopKSAE",
    "PairedMixin",
    "ResNetEncoder",
    "SAEOutput",
    "SkipTranscoder",
    "TopKConfig",
    "TopKSAE",
    "TopKSkipTranscoder",
    "TopKTranscoder",
    "TrainRun",
    "TrainingContract",
    "TrainingSupport",
    "Transcoder",
    "VariantConfig",
    "eval_mode",
    "heaviside",
    "jump_relu",
    "load_overcomplete_state_dict",
    "load_sae",
    "register_encoder",
]
