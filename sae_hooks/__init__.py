"""sae-hooks: capture transformer activations, train sparse autoencoders, splice them back.

The public API, re-exported from the subpackages (capture -> store -> train -> eval):

    from sae_hooks import BatchTopKSAE, JumpSAE
    sae = BatchTopKSAE(768, 10_000, top_k=50)

`load_sae` here also takes Hub repo ids ("org/name", subfolder=, revision=), hf:// URLs
and SAELens directories (sae_hooks.interop.hub); `sae_hooks.sae.load_sae` reads local
sae-hooks directories only.

The training function stays in its package (`from sae_hooks.train import train`):
re-exported here it would shadow the `sae_hooks.train` package itself.
"""

from sae_hooks.auto_models import load_model
from sae_hooks.eval import (
    AblationResult,
    ReconstructionResult,
    class_logit,
    concept_ablation,
    embedding_similarity,
    evaluate_reconstruction,
    latent_attribution,
    token_logprob,
)
from sae_hooks.hooks import (
    ActivationBatch,
    AddToLatents,
    ClampLatents,
    LatentEdit,
    ScaleLatents,
    ZeroLatents,
    capture,
    capture_batch,
    list_hook_points,
    resolve_point,
    splice,
)
from sae_hooks.interop import export_circuit_tracer, export_saelens, import_saelens
from sae_hooks.interop.hub import load_sae
from sae_hooks.sae import (
    SAE,
    SAE_REGISTRY,
    AttentionEncoder,
    BatchTopKSAE,
    DictionaryLayer,
    JumpSAE,
    MLPEncoder,
    ResNetEncoder,
    SAEOutput,
    TopKSAE,
    eval_mode,
    load_overcomplete_state_dict,
)
from sae_hooks.store import (
    ActivationLoader,
    ActivationStore,
    StoreWriter,
    capture_to_store,
    open_store,
)
from sae_hooks.train import Sweep, TrainConfig, Trainer, train_many

__version__ = "0.1.0"

__all__ = [
    "SAE",
    "SAE_REGISTRY",
    "AblationResult",
    "ActivationBatch",
    "ActivationLoader",
    "ActivationStore",
    "AddToLatents",
    "AttentionEncoder",
    "BatchTopKSAE",
    "ClampLatents",
    "DictionaryLayer",
    "JumpSAE",
    "LatentEdit",
    "MLPEncoder",
    "ReconstructionResult",
    "ResNetEncoder",
    "SAEOutput",
    "ScaleLatents",
    "StoreWriter",
    "Sweep",
    "TopKSAE",
    "TrainConfig",
    "Trainer",
    "ZeroLatents",
    "capture",
    "capture_batch",
    "capture_to_store",
    "class_logit",
    "concept_ablation",
    "embedding_similarity",
    "eval_mode",
    "evaluate_reconstruction",
    "export_circuit_tracer",
    "export_saelens",
    "import_saelens",
    "latent_attribution",
    "list_hook_points",
    "load_model",
    "load_overcomplete_state_dict",
    "load_sae",
    "open_store",
    "resolve_point",
    "splice",
    "token_logprob",
    "train_many",
]
