"""Any transformers model by hub id or local directory: what `--model NAME_OR_PATH` loads.

`load_model(name_or_path)` reads the config first, picks the head from it
(`head_for_config`: causal LM, encoder, vision classifier or encoder, CLIP's vision
tower), then loads the weights and the tokenizer or image processor with transformers'
Auto classes. A hub id downloads into the Hugging Face cache on first use; later runs,
and any run with HF_HUB_OFFLINE=1, read the cache. Nothing here forces offline mode:
only the user's HF_HUB_OFFLINE does. `trust_remote_code` runs code shipped with a model
only when asked. `generic_family` derives the ModelFamily record of any config, and
`LoadedModel.identity` is what run.json records about the model, truthfully.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sae_hooks.models import ModelFamily

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BACKENDS = ("hf", "transformer-lens")
CAUSAL_LM = "AutoModelForCausalLM"
BASE_MODEL = "AutoModel"  # encoders (bert-like) and vision encoders: the bare stack
IMAGE_CLASSIFIER = "AutoModelForImageClassification"
# Dual-tower models whose vision tower alone is the model to hook.
VISION_TOWERS = {
    "clip": "CLIPVisionModel",
    "clip_vision_model": "CLIPVisionModel",
    "siglip": "SiglipVisionModel",
    "siglip_vision_model": "SiglipVisionModel",
}
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
VIT_TOKENS = ("all", "cls", "patches")


def _auto_tables() -> tuple[Any, Any, Any]:
    from transformers.models.auto import modeling_auto as auto

    return (
        auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        auto.MODEL_FOR_IMAGE_MAPPING_NAMES,
    )


def head_for_config(config: Any) -> str:
    """The transformers class that loads a model of this config: config.architectures
    first (a causal LM, an image classifier, else the base model), then model_type tables
    (encoders that also have an LM head stay encoders)."""
    model_type = getattr(config, "model_type", "")
    if model_type in VISION_TOWERS:
        return VISION_TOWERS[model_type]
    for arch in getattr(config, "architectures", None) or ():
        if arch.endswith(_CAUSAL_SUFFIXES):
            return CAUSAL_LM
        if arch.endswith("ForImageClassification"):
            return IMAGE_CLASSIFIER
        return BASE_MODEL  # BertForMaskedLM, ViTModel, ...: the bare stack of blocks
    causal, masked, _ = _auto_tables()
    if model_type in causal and model_type not in masked:
        return CAUSAL_LM
    return BASE_MODEL


def is_vision_config(config: Any) -> bool:
    """Whether a config describes an image model (its inputs are pixel_values)."""
    model_type = getattr(config, "model_type", "")
    return model_type in VISION_TOWERS or model_type in _auto_tables()[2]


def generic_family(config: Any, processor: Any = None, head: str | None = None) -> ModelFamily:
    """The ModelFamily record of any config. BOS rule: contexts of a causal LM start with
    its BOS token (prepended when the tokenizer does not add it itself, as GPT-2's does
    not; kept out of stores and FVU as an attention sink); encoders and tokenizers with no
    BOS rely on the tokenizer's own special tokens."""
    head = head or head_for_config(config)
    vision = is_vision_config(config)
    bos = None if vision or processor is None else getattr(processor, "bos_token_id", None)
    model_type = str(getattr(config, "model_type", "") or "unknown")
    return ModelFamily(
        name=model_type,
        modality="vision" if vision else "text",
        prepend_bos=head == CAUSAL_LM and bos is not None,
        loader=head,
        model_types=(model_type,),
        vit_tokens=VIT_TOKENS if vision else (),
    )


@dataclass
class LoadedModel:
    """A loaded model, its tokenizer or image processor, its family record and identity."""

    model: Any
    processor: Any
    family: ModelFamily
    identity: dict[str, Any] = field(default_factory=dict)


def model_source(name_or_path: str | os.PathLike) -> str:
    """A local directory, resolved; else the hub id as given. A path that looks local
    (./x, /x, ~/x, x/y/z) but does not exist is a FileNotFoundError."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if text.startswith((".", "/", "~", "\\")) or text.count("/") > 1 or path.suffix == ".json":
        raise FileNotFoundError(f"no model directory at {path} (nor a hub id: {text!r})")
    return text


def resolved_commit(source: str, revision: str | None, config: Any = None) -> str | None:
    """The commit a model was read at: the Hugging Face cache snapshot its config.json
    came from (a hub id, or a directory inside the cache), else config._commit_hash."""
    path = Path(source)
    if not path.is_dir():
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(source, "config.json", revision=revision)
        path = Path(found).parent if isinstance(found, str) else path
    if path.parent.name == "snapshots":
        return path.name
    return getattr(config, "_commit_hash", None)


def _hub_error(source: str, err: Exception) -> OSError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    hint = (
        " (HF_HUB_OFFLINE is set: only models already in the Hugging Face cache can be read)"
        if offline
        else ""
    )
    return OSError(f"cannot load model {source!r}: {err}{hint}")


def load_processor(source: str, config: Any, **opts: Any) -> Any:
    """The tokenizer (text) or image processor (vision) saved with the model."""
    from transformers import AutoImageProcessor, AutoTokenizer

    auto = AutoImageProcessor if is_vision_config(config) else AutoTokenizer
    return auto.from_pretrained(source, **opts)


#: Weight files that are pickles: loading them can run code, so they are never read.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weight_files(path: Path) -> None:
    """A local model directory's weights are safetensors files with readable headers.

    Only pickles (pytorch_model.bin) are refused, since sae-hooks never unpickles;
    an empty or corrupt safetensors file is named (transformers' SafetensorError
    named none). Reads the headers only."""
    from safetensors import safe_open

    tensors = sorted(path.glob("*.safetensors"))
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if not tensors and pickles:
        raise ValueError(
            f"{pickles[0]} is a pickle and sae-hooks never unpickles model weights (loading "
            "one can run code); convert it to safetensors in an environment you trust: "
            "from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)"
        )
    for file in tensors:
        try:
            with safe_open(file, "pt") as handle:
                handle.keys()
        except Exception as err:  # SafetensorError, OSError: the file is damaged
            why = "it is empty" if file.stat().st_size == 0 else f"{err}"
            raise ValueError(
                f"{file} is not a readable safetensors file ({why}); save or download "
                "the model again"
            ) from None


def load_any(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    dtype: str | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
    backend: str = "hf",
) -> LoadedModel:
    """`load_model` with the family record and the identity run.json records."""
    import transformers

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    dtype = dtype or "float32"
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    source = model_source(name_or_path)
    if Path(source).is_dir():
        check_weight_files(Path(source))  # before transformers reads any of them
    opts = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        config = transformers.AutoConfig.from_pretrained(source, **opts)
        head = head_for_config(config)
        hf = getattr(transformers, head).from_pretrained(source, dtype=DTYPES[dtype], **opts)
        processor = load_processor(source, config, **opts)
    except OSError as err:
        raise _hub_error(source, err) from None
    family = generic_family(config, processor, head)
    identity = {
        "name_or_path": source,
        "name": source,
        "family": None,
        "model_dir": source if Path(source).is_dir() else None,
        "hub_id": None if Path(source).is_dir() else source,
        "revision": revision,
        "commit": resolved_commit(source, revision, config),
        "model_type": family.name,
        "head": type(hf).__name__,
        "dtype": dtype,
        "backend": backend,
        "prepend_bos": family.prepend_bos,
        "tiny": False,
        "trust_remote_code": bool(trust_remote_code),  # the user's opt-in, kept for later steps
    }
    hf = hf.eval()
    if backend == "transformer-lens":
        model = _transformer_lens(hf, processor, device)
        family = _as_tl(family)
    else:
        model = hf.to(device)
    identity.update(runtime_identity(model))
    return LoadedModel(model, processor, family, identity)


def runtime_identity(model: Any) -> dict[str, Any]:
    """What runs the model (sae_hooks.hooks.transformer_lens.backend_identity): the runtime
    class, library versions, and a TransformerBridge's compatibility mode, which changes
    the activations."""
    from sae_hooks.hooks.transformer_lens import backend_identity

    found = backend_identity(model)
    return {"runtime": found.pop("backend"), **found}


def _transformer_lens(hf: Any, processor: Any, device: str) -> Any:
    """The loaded weights as a TransformerLens model: GPT-2 as a HookedTransformer under
    TransformerLens 3 (a TransformerBridge under 4), any other architecture as a
    TransformerBridge around the Hugging Face modules (sae_hooks.hooks.transformer_lens)."""
    from sae_hooks.hooks.transformer_lens import bridge_from_hf, tl_from_hf

    if hf.config.model_type == "gpt2":
        return tl_from_hf(hf, processor, device=device)
    return bridge_from_hf(hf.to(device), processor, device=device)


def _as_tl(family: ModelFamily) -> ModelFamily:
    from dataclasses import replace

    return replace(family, backend="tl", model_classes=("HookedTransformer",))


def load_model(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    dtype: str | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
    backend: str = "hf",
) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer or image processor) of a hub id or local directory.

    The head comes from the config (`head_for_config`); dtype is "float32" (default),
    "bfloat16" or "float16"; backend "transformer-lens" converts the weights to a
    TransformerLens model. A hub id downloads into the Hugging Face cache on first use;
    with HF_HUB_OFFLINE=1 only the cache is read. trust_remote_code runs code shipped
    with the model: only pass True for a model you trust.
    """
    loaded = load_any(
        name_or_path,
        revision=revision,
        dtype=dtype,
        device=device,
        trust_remote_code=trust_remote_code,
        backend=backend,
    )
    return loaded.model, loaded.processor
