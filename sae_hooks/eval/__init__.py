"""What a spliced SAE keeps: reconstruction metrics, downstream loss, concept ablation.

Every evaluation over a model is one pass of `sae_hooks.eval.engine.run_pass`.
"""

from sae_hooks.eval.ablation import (
    AblationResult,
    class_logit,
    concept_ablation,
    embedding_similarity,
    mean_latents,
    rank_concept_latents,
    token_logprob,
)
from sae_hooks.eval.attribution import Attribution, PointAttribution, latent_attribution
from sae_hooks.eval.circuits import Circuit, CircuitEdge, CircuitNode, circuit
from sae_hooks.eval.engine import ConstantReconstruction
from sae_hooks.eval.reconstruction import ReconstructionResult, evaluate_reconstruction
from sae_hooks.eval.replacement import (
    ReplacementResult,
    evaluate_replacement,
    train_transcoder_set,
    transcoder_layers,
)
from sae_hooks.eval.sweep import evaluate_many, evaluate_sweep
from sae_hooks.eval.transcoder import evaluate_transcoder
from sae_hooks.model_outputs import model_kind, run_model

__all__ = [
    "AblationResult",
    "Attribution",
    "Circuit",
    "CircuitEdge",
    "CircuitNode",
    "ConstantReconstruction",
    "PointAttribution",
    "ReconstructionResult",
    "ReplacementResult",
    "circuit",
    "class_logit",
    "concept_ablation",
    "embedding_similarity",
    "evaluate_many",
    "evaluate_reconstruction",
    "evaluate_replacement",
    "evaluate_sweep",
    "evaluate_transcoder",
    "latent_attribution",
    "mean_latents",
    "model_kind",
    "rank_concept_latents",
    "run_model",
    "token_logprob",
    "train_transcoder_set",
    "transcoder_layers",
]
