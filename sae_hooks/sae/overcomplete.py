"""Load a state_dict saved by overcomplete (0.3) into the matching sae_hooks SAE.

The parameters correspond one to one, under a few other names:
    dictionary._weights              -> dictionary.weight
    dictionary.multiplier            -> dictionary.multiplier (use_multiplier=True),
                                        dropped when it is 0 (the untrained default)
    thresholds (JumpSAE, log theta)  -> log_threshold
    encoder.final_block.0.{weight,bias} of its "linear" encoder -> encoder.{weight,bias}
Every other encoder key (MLPEncoder, AttentionEncoder, ResNetEncoder, tied / untied
encoders) has the same name here; a tied encoder's copy of the dictionary
(encoder.tied_to.*) is dropped. overcomplete has no decoder bias and no input
scale: b_dec is set to 0 and input_scale to 1, which decode exactly as it does.
BatchTopK's running threshold is a plain attribute in overcomplete, absent from its
state_dict: pass it as `running_threshold=` (or set `sae.running_threshold`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .base import SAE
from .batchtopk import BatchTopKSAE
from .encoders import LinearEncoder

_RENAMED = {"dictionary._weights": "dictionary.weight", "thresholds": "log_threshold"}
_SEED_LINEAR = {
    "encoder.final_block.0.weight": "encoder.weight",
    "encoder.final_block.0.bias": "encoder.bias",
}


def overcomplete_keys(sae: SAE, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """overcomplete's state_dict renamed to this SAE's keys, with b_dec = 0 and input_scale = 1
    where the SAE has them; what it does not know (e.g. a BatchTopK threshold) is kept."""
    renamed = dict(_RENAMED)
    if type(sae.encoder) is LinearEncoder:
        renamed.update(_SEED_LINEAR)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("encoder.tied_to."):
            continue  # its tied encoder registers the dictionary a second time
        if key == "dictionary.multiplier" and not sae.dictionary.use_multiplier:
            if bool(torch.as_tensor(value).ne(0).any()):
                raise ValueError(
                    f"the overcomplete dictionary has a learnt multiplier ({float(value):.4g}); "
                    "build the SAE with dictionary_params={'use_multiplier': True}"
                )
            continue
        out[renamed.get(key, key)] = value
    own = sae.state_dict()
    ref = out.get("dictionary.weight", own["dictionary.weight"])
    if "dictionary.bias" in own:
        out.setdefault("dictionary.bias", ref.new_zeros(own["dictionary.bias"].shape))
    out.setdefault("input_scale", ref.new_ones(()))
    for key, value in own.items():
        if key not in out and key not in state_dict and isinstance(sae, BatchTopKSAE):
            out[key] = value  # threshold_ema / threshold_initialized: not in the seed's file
    return out


def load_overcomplete_state_dict(
    sae: SAE,
    state_dict: Mapping[str, torch.Tensor],
    running_threshold: float | torch.Tensor | None = None,
) -> SAE:
    """Load overcomplete's `model.state_dict()` into `sae` (built with the same
    input_shape, nb_concepts, encoder and dictionary_params); strict on every key.
    Returns sae."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of tensors, got {type(state_dict).__name__}")
    sae.load_weights(overcomplete_keys(sae, state_dict))
    if running_threshold is not None:
        if not isinstance(sae, BatchTopKSAE):
            raise ValueError(f"running_threshold is for a BatchTopKSAE, not {type(sae).__name__}")
        sae.running_threshold = running_threshold
    return sae
