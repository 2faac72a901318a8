"""What a model outputs and how to get it: its kind, and its main output for a batch.

Evaluation, ablation, the CLI and the recipes all run HF and TransformerLens models
the same way through `run_model`, and choose their downstream metrics by `model_kind`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from torch import Tensor, nn

from sae_hooks.devices import model_device, to_device
from sae_hooks.hooks.capture import model_call_args
from sae_hooks.hooks.points import is_transformer_lens

ModelKind = Literal["lm", "classifier", "encoder"]
KINDS = ("lm", "classifier", "encoder")


def model_kind(model: nn.Module) -> ModelKind:
    """What the model outputs: next-token logits, class logits or hidden states."""
    if is_transformer_lens(model):
        return "lm"
    name = type(model).__name__
    if "CausalLM" in name or "LMHead" in name:
        return "lm"
    if "Classification" in name:
        return "classifier"
    return "encoder"


def run_model(model: nn.Module, inputs: Mapping[str, Tensor]) -> Tensor:
    """The model's main output for a batch (moved to its device): logits (LMs,
    classifiers) or the last hidden state (encoders)."""
    kwargs, args = model_call_args(model, to_device(inputs, model_device(model)))
    out = model(*args, **kwargs)
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    return logits if logits is not None else out.last_hidden_state
