"""Hook-point names and where they live in a model.

One vocabulary for every backend — ``resid_pre.L``, ``resid_mid.L``, ``resid_post.L``,
``attn_out.L``, ``mlp_out.L``, ``mlp_in.L`` (zero-indexed block L) — plus two raw escapes: a module
path of a Hugging Face model (the module's output) and any TransformerLens hook name.
A name resolves to a :class:`HookLocation`: a module, whether the activation is its
input or its output, and whether a replacement must be written in place.

``mlp_in.L`` is what the MLP reads (a transcoder's input): the input of the MLP module
in Hugging Face models (pre-LN: ln_2's output; BERT: the input of ``intermediate``),
and ``blocks.L.ln2.hook_normalized`` in TransformerLens, whose own ``hook_mlp_in`` is
the residual *before* ln2 and only runs with ``cfg.use_hook_mlp_in``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Literal

from torch import nn

from sae_hooks.hooks.layouts import Site, layout_of

KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in")
_VOCAB = re.compile(r"^(resid_pre|resid_mid|resid_post|attn_out|mlp_out|mlp_in)\.(-?\d+)$")
# TransformerLens hooks of what the MLP reads, first present wins: the bridge's MLP input
# and ln2 output (TL 3.9+ bridges, TL 4); a HookedTransformer has neither, and its ln2
# module's output is hooked instead (its ln2.hook_normalized precedes the LN weights).
_TL_MLP_IN = ("blocks.{}.mlp.hook_in", "blocks.{}.ln2.hook_out")
# TransformerLens / SAELens hook names (after ``blocks.L.``) -> vocabulary kinds: TL 3's
# names, which TL 4 keeps as aliases, and TL 4's canonical ones. ``hook_mlp_in`` is not
# here: it is the residual *before* ln2 and fires only with cfg.use_hook_mlp_in.
_TL_SUFFIXES = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_mid": "resid_mid",
    "hook_resid_post": "resid_post",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
    "hook_in": "resid_pre",
    "hook_out": "resid_post",
    "ln2.hook_in": "resid_mid",
    "attn.hook_out": "attn_out",
    "mlp.hook_out": "mlp_out",
    "mlp.hook_in": "mlp_in",
    "ln2.hook_out": "mlp_in",
    # SAELens' transcoder input: the ln2 output of a HookedTransformer with folded LN.
    "ln2.hook_normalized": "mlp_in",
}
_TL_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")
# The name a point is exported under (SAELens reads TL 3 names; TL 4 keeps them).
_EXPORT_SUFFIX = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "mlp_in": "ln2.hook_normalized",
}


def point_from_hook_name(name: str) -> str | None:
    """A TransformerLens / SAELens hook name -> its vocabulary point, e.g.
    ``blocks.L.hook_resid_post`` or ``blocks.L.hook_out`` -> ``resid_post.L`` and
    ``blocks.L.ln2.hook_normalized`` -> ``mlp_in.L``; None for other names."""
    match = _TL_NAME.match(name)
    kind = _TL_SUFFIXES.get(match.group(2)) if match else None
    return f"{kind}.{match.group(1)}" if kind else None


def hook_name_of_point(point: str) -> str | None:
    """``resid_post.L`` -> ``blocks.L.hook_resid_post``, ``mlp_in.L`` ->
    ``blocks.L.ln2.hook_normalized``; a known TL name stays itself; None otherwise."""
    match = _VOCAB.match(point)
    if match:
        return f"blocks.{match.group(2)}.{_EXPORT_SUFFIX[match.group(1)]}"
    return point if point_from_hook_name(point) else None


# Block lists of the families we know, tried in order before the generic fallback.
BLOCK_PATHS = (
    "transformer.h",  # GPT-2, GPT-J, Bloom, Falcon
    "model.layers",  # Llama, Qwen, Gemma, Mistral, Phi
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "vit.layers",  # ViT classifier (transformers 5)
    "vit.encoder.layer",  # ViT classifier (transformers 4)
    "bert.encoder.layer",  # BERT heads
    "roberta.encoder.layer",
    "encoder.layer",  # bare BERT / MiniLM, bare ViT (transformers 4)
    "layers",  # bare Llama, NeoX, ViT (transformers 5)
    "h",  # bare GPT-2
)


@dataclass(frozen=True)
class HookLocation:
    """Where one hook point's activation passes through the model.

    ``site="input"``: the first positional argument (or ``hidden_states``) of ``module``;
    ``site="output"``: its output (the first tensor of a tuple). ``inplace``: the tensor
    is also the residual the block adds to later, so a replacement must be copied into
    it rather than substituted (pre-LN ``resid_mid``). ``flat_within``: the block
    that flattened (batch, tokens, d) to (batch*tokens, d) at this site (OPT's MLP
    half); hooks see the activation reshaped to its input's leading shape.
    """

    point: str
    module: nn.Module
    site: Literal["input", "output"]
    path: str
    inplace: bool = False
    flat_within: nn.Module | None = None


def is_transformer_lens(model: nn.Module) -> bool:
    """HookedTransformer and TransformerBridge both carry hook_dict and cfg.n_layers."""
    return hasattr(model, "hook_dict") and hasattr(getattr(model, "cfg", None), "n_layers")


def is_transformer_bridge(model: nn.Module) -> bool:
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:  # pragma: no cover - transformer-lens without the bridge
        return False
    return isinstance(model, TransformerBridge)


def n_blocks(model: nn.Module) -> int:
    if is_transformer_lens(model):
        return int(model.cfg.n_layers)
    return len(find_blocks(model)[1])


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The (path, ModuleList) of a Hugging Face model's transformer blocks."""
    for path in BLOCK_PATHS:
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return path, blocks
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if n is not None:
        for path, module in model.named_modules():
            if isinstance(module, nn.ModuleList) and len(module) == n:
                return path, module
    raise ValueError(
        f"cannot find the transformer blocks of {type(model).__name__}: none of "
        f"{', '.join(BLOCK_PATHS)} exists and no ModuleList has config.num_hidden_layers "
        f"({n}) entries. Use a raw module path instead (list_hook_points(model, raw=True))."
    )


def list_hook_points(model: nn.Module, *, raw: bool = False) -> list[str]:
    """The vocabulary names valid for ``model``; with ``raw=True`` also every raw name
    (TransformerLens hook names, or Hugging Face module paths)."""
    n = n_blocks(model)
    names = [f"{kind}.{i}" for i in range(n) for kind in KINDS if _has_kind(model, kind, i)]
    if raw:
        if is_transformer_lens(model):
            names += list(model.hook_dict)
        else:
            names += [path for path, _ in model.named_modules() if path]
    return names


def resolve_point(model: nn.Module, point: str) -> HookLocation:
    """The location of ``point`` in ``model``; ValueError listing valid names if none."""
    if not isinstance(point, str):
        raise TypeError(f"a hook point is a str, got {type(point).__name__}: {point!r}")
    tl = is_transformer_lens(model)
    mapped = None if tl and point in model.hook_dict else point_from_hook_name(point)
    if mapped:  # TransformerLens names of either major work on every backend
        return dataclasses.replace(resolve_point(model, mapped), point=point)
    match = _VOCAB.match(point)
    if match:
        kind, layer = match.group(1), int(match.group(2))
        n = n_blocks(model)
        if not 0 <= layer < n:
            raise ValueError(
                f"layer {layer} of {point!r} is out of range: {type(model).__name__} has "
                f"{n} blocks (0..{n - 1}). Valid points: {describe_points(model)}"
            )
        if tl:
            return _resolve_tl_kind(model, point, kind, layer)
        return _resolve_hf_block(model, point, kind, layer)
    if tl:
        if point in model.hook_dict:
            return _resolve_tl(model, point, point)
    elif point:
        try:
            module = model.get_submodule(point)
        except AttributeError:
            pass
        else:
            return HookLocation(point, module, "output", point)
    raise ValueError(f"unknown hook point {point!r}. Valid points: {describe_points(model)}")


def describe_points(model: nn.Module) -> str:
    """The vocabulary in ranges ('resid_post.0..11'), plus what raw names look like."""
    n = n_blocks(model)
    kinds = [k for k in KINDS if all(_has_kind(model, k, i) for i in range(n))]
    ranges = ", ".join(f"{k}.0..{n - 1}" if n > 1 else f"{k}.0" for k in kinds)
    if is_transformer_lens(model):
        example = "'blocks.0.hook_resid_post'"
    else:
        path, _ = find_blocks(model)
        example = f"'{path}.0.{_first_child(model.get_submodule(path)[0])}'"
    return (
        f"{ranges}, or a raw name such as {example} "
        "(all of them: list_hook_points(model, raw=True))"
    )


def _first_child(block: nn.Module) -> str:
    return next((name for name, _ in block.named_children()), "")


def _has_kind(model: nn.Module, kind: str, layer: int) -> bool:
    """Whether ``kind.layer`` resolves, without building error messages."""
    if is_transformer_lens(model):
        name = _tl_name(model, kind, layer)
        if name is None:
            return _submodule(model, f"blocks.{layer}.ln2") is not None
        return name in model.hook_dict
    if kind in ("resid_pre", "resid_post"):
        return True
    block, _, site, _ = _hf_site(model, kind, layer)
    return site is not None and _submodule(block, site.path) is not None


def _submodule(block: nn.Module, path: str) -> nn.Module | None:
    try:
        return block.get_submodule(path)
    except AttributeError:
        return None


def _tl_name(model: nn.Module, kind: str, layer: int) -> str | None:
    """The TransformerLens hook of ``kind.layer``; None for a HookedTransformer's
    mlp_in, which has no hook (its ln2 module's output is hooked)."""
    if kind != "mlp_in":
        return f"blocks.{layer}.hook_{kind}"
    names = [n.format(layer) for n in _TL_MLP_IN]
    return next((n for n in names if n in model.hook_dict), None)


def _resolve_tl_kind(model: nn.Module, point: str, kind: str, layer: int) -> HookLocation:
    name = _tl_name(model, kind, layer)
    if name is not None:
        return _resolve_tl(model, point, name)
    ln2 = _submodule(model, f"blocks.{layer}.ln2")
    if ln2 is None:
        raise ValueError(f"{type(model).__name__} has no ln2 in block {layer} for {point!r}")
    return HookLocation(point, ln2, "output", f"blocks.{layer}.ln2")


def _resolve_tl(model: nn.Module, point: str, name: str) -> HookLocation:
    if name not in model.hook_dict:
        raise ValueError(f"{type(model).__name__} has no hook {name!r} for {point!r}")
    hook = model.hook_dict[name]
    # The bridge's resid_mid (ln2.hook_in) is the input hook of ln2: replacing its output
    # would change the norm's input but not the residual the block adds the MLP output to.
    match = _TL_NAME.match(name)
    mid = match and model.hook_dict.get(f"blocks.{match.group(1)}.ln2.hook_in")
    inplace = is_transformer_bridge(model) and hook is mid
    return HookLocation(point, hook, "output", name, inplace)


def _hf_site(model: nn.Module, kind: str, layer: int) -> tuple[nn.Module, str, Site | None, str]:
    """(block, its path, the site of a sublayer ``kind`` or None, why it has none)."""
    path, blocks = find_blocks(model)
    block = blocks[layer]
    layout = layout_of(getattr(model, "config", None), block)
    why = layout.why_not.get(kind, "its layout has no such point")
    return block, f"{path}.{layer}", layout.site(kind), why


def _resolve_hf_block(model: nn.Module, point: str, kind: str, layer: int) -> HookLocation:
    if kind in ("resid_pre", "resid_post"):
        path, blocks = find_blocks(model)
        where = "input" if kind == "resid_pre" else "output"
        return HookLocation(point, blocks[layer], where, f"{path}.{layer}")
    block, prefix, site, why = _hf_site(model, kind, layer)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    model_type = model_type or type(model).__name__
    where = f"{model_type} ({type(block).__name__} at {prefix})"
    module = None if site is None else _submodule(block, site.path)
    if site is None or module is None:
        if site is not None:
            why = f"its {model_type} layout puts it at {site.path!r}, which this block lacks"
        raise ValueError(
            f"{point!r} does not exist in {where}: {why}. Valid points of {model_type}: "
            f"{describe_points(model)}; or hook a module path (children of the block: "
            f"{_children(block)})."
        )
    flat = block if site.flat else None
    return HookLocation(
        point, module, site.where, f"{prefix}.{site.path}", site.inplace, flat_within=flat
    )


def _children(block: nn.Module) -> str:
    return ", ".join(name for name, _ in block.named_children())
