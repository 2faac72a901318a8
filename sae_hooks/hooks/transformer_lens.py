"""TransformerLens as a backend, under either major version.

TransformerLens 3 has ``HookedTransformer`` (its own reimplementation of the model)
and, from 3.9, ``TransformerBridge``; TransformerLens 4 removed ``HookedTransformer``
and keeps only the bridge, which wraps the Hugging Face modules themselves. This
module picks what the installed version has, builds a TL model from an in-memory
Hugging Face GPT-2 without reaching a hub, and says which backend a model is
(:func:`backend_identity`): a bridge in compatibility mode folds layer norms and
centres weights, which changes the activations, so runs and SAEs record it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
from torch import nn

from sae_hooks.hooks.points import is_transformer_bridge, is_transformer_lens


def tl_version() -> str | None:
    """The installed transformer-lens version, or None when it is not installed."""
    try:
        return version("transformer-lens")
    except PackageNotFoundError:
        return None


def tl_major() -> int | None:
    found = tl_version()
    return int(found.split(".")[0]) if found else None


def has_hooked_transformer() -> bool:
    """Whether ``HookedTransformer`` exists (TransformerLens < 4)."""
    major = tl_major()
    return major is not None and major < 4


def tl_from_hf(
    hf_model: Any, tokenizer: Any, *, device: str = "cpu", compatibility_mode: bool = False
) -> Any:
    """A TransformerLens model holding the weights of an in-memory HF GPT-2: a
    HookedTransformer under TransformerLens 3, a TransformerBridge under 4."""
    if tl_major() is None:
        raise ImportError("TransformerLens is not installed: pip install 'transformer-lens>=3.9'")
    if has_hooked_transformer():
        if compatibility_mode:
            raise ValueError("compatibility_mode is for a TransformerBridge (TransformerLens 4)")
        return hooked_from_hf(hf_model, tokenizer, device=device)
    return bridge_from_hf(hf_model, tokenizer, device=device, compatibility_mode=compatibility_mode)


def bridge_from_hf(
    hf_model: Any, tokenizer: Any = None, *, device: str = "cpu", compatibility_mode: bool = False
) -> Any:
    """A TransformerBridge around ``hf_model`` itself (no copy, nothing fetched: the
    bridge reads the model's own config). The bridge switches the model to eager
    attention, in place, so its attention hooks fire.

    ``compatibility_mode``: HookedTransformer-equivalent weight processing (layer norm
    folding, weight centring) and the legacy hook aliases; the activations change.
    """
    from transformer_lens.model_bridge import TransformerBridge

    name = str(getattr(hf_model.config, "_name_or_path", "") or hf_model.config.model_type)
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device=device
    )
    if compatibility_mode:
        bridge.enable_compatibility_mode(disable_warnings=True)
    return bridge.eval()


def hooked_from_hf(hf_model: Any, tokenizer: Any, *, device: str = "cpu") -> Any:
    """A TransformerLens 3 HookedTransformer holding the weights of an in-memory HF GPT-2.

    The config is derived from the HF model's own config, so nothing is fetched.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    c = hf_model.config
    if c.model_type != "gpt2":
        raise ValueError(f"tl_from_hf converts GPT-2 models; this one is {c.model_type!r}")
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer,
        d_model=c.n_embd,
        n_ctx=c.n_positions,
        d_head=c.n_embd // c.n_head,
        n_heads=c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd,
        d_vocab=c.vocab_size,
        act_fn=c.activation_function,
        eps=c.layer_norm_epsilon,
        normalization_type="LN",
        positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel",
        default_prepend_bos=False,
        device=device,
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    state = convert_gpt2_weights(hf_model, cfg)
    state.setdefault("unembed.b_U", torch.zeros(cfg.d_vocab))  # GPT-2 has no unembedding bias
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith((".mask", ".IGNORE"))]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"GPT-2 -> TransformerLens conversion left out {missing or result.unexpected_keys}"
        )
    return model.eval()


def backend_identity(model: nn.Module) -> dict[str, Any]:
    """What runs the model, for run.json and SAE metadata: ``backend``
    ("transformers", "transformer_lens.HookedTransformer" or
    "transformer_lens.TransformerBridge"), the library versions, and for a bridge
    whether compatibility mode was on (None where the notion does not apply)."""
    if is_transformer_bridge(model):
        backend, compat = "transformer_lens.TransformerBridge", bool(model.compatibility_mode)
    elif is_transformer_lens(model):
        backend, compat = f"transformer_lens.{type(model).__name__}", None
    else:
        return {"backend": "transformers", "transformers_version": _version("transformers")}
    return {
        "backend": backend,
        "transformer_lens_version": tl_version(),
        "compatibility_mode": compat,
        "transformers_version": _version("transformers"),
    }


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None
