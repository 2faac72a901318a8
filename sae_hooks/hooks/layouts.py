"""Where attention, MLP and norms sit inside one transformer block, per architecture.

A :class:`BlockLayout` names, relative to one block, the module (and whether its input
or its output) where each sublayer point passes: ``attn_out``, ``resid_mid``, ``mlp_in``
and ``mlp_out``. ``resid_pre`` and ``resid_post`` are the block's own input and output
and need no description. Known architectures are looked up by ``config.model_type``
(:data:`LAYOUTS`); anything else is described by :func:`discover_layout`, which reads the
block's child names. A point a block does not have is a ``None`` entry plus the reason
(``why_not``), so the error can say why rather than only that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn


@dataclass(frozen=True)
class Site:
    """One activation inside a block: ``path``'s input (first argument) or output.

    ``inplace``: the tensor is also the residual the block adds to later, so a
    replacement is copied into it (a pre-LN ``resid_mid``, the input of the pre-MLP
    norm). ``flat``: the block has flattened (batch, tokens, d) to (batch*tokens, d)
    here (OPT's MLP half); hooks see it reshaped back.
    """

    path: str
    where: Literal["input", "output"] = "output"
    inplace: bool = False
    flat: bool = False


@dataclass(frozen=True)
class BlockLayout:
    """The sublayer sites of one block; ``None`` where the block has no such point."""

    attn_out: Site | None
    resid_mid: Site | None
    mlp_in: Site | None
    mlp_out: Site | None
    why_not: dict[str, str] = field(default_factory=dict)

    def site(self, kind: str) -> Site | None:
        return getattr(self, kind)


PARALLEL = (
    "attention and MLP run in parallel off the same residual, so there is no residual between them"
)


def pre_ln(attn: str, mlp: str, mid_norm: str) -> BlockLayout:
    """x + attn(ln1(x)) = mid; mid + mlp(mid_norm(mid)): GPT-2, Llama, ViT, CLIP..."""
    return BlockLayout(
        attn_out=Site(attn),
        resid_mid=Site(mid_norm, "input", inplace=True),
        mlp_in=Site(mlp, "input"),
        mlp_out=Site(mlp),
    )


def parallel(attn: str, mlp: str, reason: str = PARALLEL) -> BlockLayout:
    """x + attn(ln1(x)) + mlp(ln2(x)): GPT-J, Phi-1/2, GPT-NeoX with use_parallel_residual."""
    return BlockLayout(Site(attn), None, Site(mlp, "input"), Site(mlp), {"resid_mid": reason})


def sandwich(mlp: str) -> BlockLayout:
    """Gemma 2/3: each sublayer's output is normed before it is added to the residual."""
    return BlockLayout(
        attn_out=Site("post_attention_layernorm"),
        resid_mid=Site("pre_feedforward_layernorm", "input", inplace=True),
        mlp_in=Site(mlp, "input"),
        mlp_out=Site("post_feedforward_layernorm"),
    )


def post_ln_bert() -> BlockLayout:
    """BERT family: mid = LN(x + dense(attn)); post = LN(mid + dense(ffn(mid))). The
    sublayer contributions are the dense projections before each add-and-norm."""
    return BlockLayout(
        attn_out=Site("attention.output.dense"),
        resid_mid=Site("attention"),
        mlp_in=Site("intermediate", "input"),
        mlp_out=Site("output.dense"),
    )


def opt(config: Any) -> BlockLayout:
    """OPT: fc1/fc2 without an MLP module, computed on flattened tokens; pre-LN unless
    do_layer_norm_before is False (OPT-350m), where the attention half ends in its norm."""
    pre = getattr(config, "do_layer_norm_before", True)
    mid = Site("final_layer_norm", "input", inplace=True, flat=True)
    return BlockLayout(
        attn_out=Site("self_attn"),
        resid_mid=mid if pre else Site("self_attn_layer_norm"),
        mlp_in=Site("fc1", "input", flat=True),
        mlp_out=Site("fc2", flat=True),
    )


def gpt_neox(config: Any) -> BlockLayout:
    if getattr(config, "use_parallel_residual", True):
        return parallel("attention", "mlp", PARALLEL + " (config.use_parallel_residual)")
    return pre_ln("attention", "mlp", "post_attention_layernorm")


_LLAMA_LIKE = pre_ln("self_attn", "mlp", "post_attention_layernorm")

#: config.model_type -> the layout of its blocks (or a function of the config giving it).
LAYOUTS: dict[str, BlockLayout | Callable[[Any], BlockLayout]] = {
    "gpt2": pre_ln("attn", "mlp", "ln_2"),
    "gptj": parallel("attn", "mlp"),
    "gpt_neox": gpt_neox,
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "gemma2": sandwich("mlp"),
    "gemma3_text": sandwich("mlp"),
    "phi": parallel("self_attn", "mlp"),
    "opt": opt,
    "bert": post_ln_bert(),
    "roberta": post_ln_bert(),
    "vit": pre_ln("attention", "mlp", "layernorm_after"),
    "clip_vision_model": pre_ln("self_attn", "mlp", "layer_norm2"),
    "clip_text_model": pre_ln("self_attn", "mlp", "layer_norm2"),
    "siglip_vision_model": pre_ln("self_attn", "mlp", "layer_norm2"),
}

# Discovery: child names tried in order when the model type is not in LAYOUTS.
ATTN_NAMES = ("attn", "self_attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "block_sparse_moe", "ffn")
# The norm whose input is the residual after attention, in pre-LN blocks.
MID_NORM_NAMES = (
    "ln_2",
    "layernorm_after",
    "post_attention_layernorm",
    "layer_norm2",
    "ffn_norm",
)


def layout_of(config: Any, block: nn.Module) -> BlockLayout:
    """The layout of ``block``: the table entry of ``config.model_type``, else discovered."""
    entry = LAYOUTS.get(getattr(config, "model_type", None) or "")
    if entry is None:
        return discover_layout(config, block)
    return entry if isinstance(entry, BlockLayout) else entry(config)


def discover_layout(config: Any, block: nn.Module) -> BlockLayout:
    """A layout read off the block's child names, for architectures not in the table."""
    attention = getattr(block, "attention", None)
    if hasattr(getattr(attention, "output", None), "LayerNorm") and hasattr(block, "output"):
        return post_ln_bert()
    attn = _first_child(block, ATTN_NAMES)
    mlp = _first_child(block, MLP_NAMES)
    if mlp is None and _first_child(block, ("fc1",)) and _first_child(block, ("fc2",)):
        mlp_in, mlp_out = Site("fc1", "input"), Site("fc2")
    else:
        mlp_in = Site(mlp, "input") if mlp else None
        mlp_out = Site(mlp) if mlp else None
    if getattr(config, "use_parallel_residual", False) or getattr(config, "parallel_attn", False):
        return BlockLayout(
            Site(attn) if attn else None, None, mlp_in, mlp_out, {"resid_mid": PARALLEL}
        )
    if hasattr(block, "pre_feedforward_layernorm") and hasattr(block, "post_feedforward_layernorm"):
        return sandwich(mlp or "mlp")
    mid = _first_child(block, MID_NORM_NAMES)
    return BlockLayout(
        attn_out=Site(attn) if attn else None,
        resid_mid=Site(mid, "input", inplace=True) if mid else None,
        mlp_in=mlp_in,
        mlp_out=mlp_out,
        why_not={
            "attn_out": f"no child named {' or '.join(ATTN_NAMES)}",
            "resid_mid": f"no pre-MLP norm named {' or '.join(MID_NORM_NAMES)}",
            "mlp_in": f"no child named {' or '.join((*MLP_NAMES, 'fc1'))}",
            "mlp_out": f"no child named {' or '.join((*MLP_NAMES, 'fc2'))}",
        },
    )


def _first_child(block: nn.Module, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if isinstance(getattr(block, n, None), nn.Module)), None)
