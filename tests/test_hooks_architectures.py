"""Every point on every architecture, checked exactly against the model's own tensors.

Tiny random-init models (2 blocks, d=32) of each architecture, built from their Config
classes. resid_pre/resid_post are compared with ``output_hidden_states`` bit for bit;
attn_out, mlp_in and mlp_out with forward hooks placed here by hand on the module that
computes them (the tables below are written from the transformers sources, not read
from sae_hooks' layouts). One forward per architecture feeds all its checks.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T
from helpers import IdentitySAE

from sae_hooks.hooks import capture, capture_batch, list_hook_points, resolve_point, splice

V, D, LAYERS = 128, 32, 2
_LM = dict(
    vocab_size=V,
    hidden_size=D,
    intermediate_size=2 * D,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32,
)
_VISION = dict(
    image_size=32,
    patch_size=8,
    hidden_size=D,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    intermediate_size=2 * D,
)


def _build(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = T.GPT2Config(vocab_size=V, n_positions=32, n_embd=D, n_layer=LAYERS, n_head=4)
        return T.GPT2LMHeadModel(cfg)
    if arch in ("gpt_neox", "gpt_neox_sequential"):
        cfg = T.GPTNeoXConfig(
            **{k: v for k, v in _LM.items() if k != "num_key_value_heads"},
            use_parallel_residual=arch == "gpt_neox",
        )
        return T.GPTNeoXForCausalLM(cfg)
    if arch == "opt":
        cfg = T.OPTConfig(
            vocab_size=V,
            hidden_size=D,
            ffn_dim=2 * D,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            max_position_embeddings=32,
            word_embed_proj_dim=D,
        )
        return T.OPTForCausalLM(cfg)
    if arch == "bert":
        cfg = T.BertConfig(**{k: v for k, v in _LM.items() if k != "num_key_value_heads"})
        return T.BertModel(cfg)
    if arch == "vit":
        return T.ViTForImageClassification(T.ViTConfig(**_VISION))
    if arch == "clip_vision":
        return T.CLIPVisionModel(T.CLIPVisionConfig(**_VISION))
    config_cls, model_cls, extra = {
        "llama": (T.LlamaConfig, T.LlamaForCausalLM, {}),
        "mistral": (T.MistralConfig, T.MistralForCausalLM, {}),
        "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, {}),
        "gemma2": (T.Gemma2Config, T.Gemma2ForCausalLM, {"head_dim": 8}),
        "phi3": (T.Phi3Config, T.Phi3ForCausalLM, {"pad_token_id": 0}),
        "phi": (T.PhiConfig, T.PhiForCausalLM, {}),
    }[arch]
    return model_cls(config_cls(**_LM, **extra))


# Per architecture, relative to one block: the module whose output is attn_out, the one
# whose output is mlp_out, the pre-MLP norm whose output is mlp_in, and the model's final
# norm where the last hidden_states entry is taken after it (None: it is the last
# block's own output). Parallel blocks have no resid_mid.
SEQUENTIAL = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in")
PARALLEL = ("resid_pre", "resid_post", "attn_out", "mlp_out", "mlp_in")
ARCHS = {
    "gpt2": ("attn", "mlp", "ln_2", "transformer.ln_f", SEQUENTIAL),
    "gpt_neox": (
        "attention",
        "mlp",
        "post_attention_layernorm",
        "gpt_neox.final_layer_norm",
        PARALLEL,
    ),
    "gpt_neox_sequential": (
        "attention",
        "mlp",
        "post_attention_layernorm",
        "gpt_neox.final_layer_norm",
        SEQUENTIAL,
    ),
    "llama": ("self_attn", "mlp", "post_attention_layernorm", "model.norm", SEQUENTIAL),
    "mistral": ("self_attn", "mlp", "post_attention_layernorm", "model.norm", SEQUENTIAL),
    "qwen2": ("self_attn", "mlp", "post_attention_layernorm", "model.norm", SEQUENTIAL),
    # Gemma 2 norms each sublayer's output before adding it: that norm's output is the
    # sublayer's contribution to the residual.
    "gemma2": (
        "post_attention_layernorm",
        "post_feedforward_layernorm",
        "pre_feedforward_layernorm",
        "model.norm",
        SEQUENTIAL,
    ),
    "phi3": ("self_attn", "mlp", "post_attention_layernorm", "model.norm", SEQUENTIAL),
    # Phi-1/2: attention and MLP both read input_layernorm's output.
    "phi": ("self_attn", "mlp", "input_layernorm", "model.final_layernorm", PARALLEL),
    # OPT runs its MLP on flattened (batch*tokens, d) rows.
    "opt": ("self_attn", "fc2", "final_layer_norm", "model.decoder.final_layer_norm", SEQUENTIAL),
    # BERT is post-LN: the MLP reads the attention block's (normed) output.
    "bert": ("attention.output.dense", "output.dense", "attention", None, SEQUENTIAL),
    "vit": ("attention", "mlp", "layernorm_after", None, SEQUENTIAL),
    "clip_vision": ("self_attn", "mlp", "layer_norm2", None, SEQUENTIAL),
}
VISION = ("vit", "clip_vision")


@pytest.fixture(scope="module")
def built():
    cache: dict[str, torch.nn.Module] = {}

    def get(arch: str) -> torch.nn.Module:
        if arch not in cache:
            cache[arch] = _build(arch).eval()
        return cache[arch]

    return get


def _inputs(arch: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if arch in VISION:
        return {"pixel_values": torch.randn(2, 3, 32, 32, generator=g)}
    return {"input_ids": torch.randint(0, V, (2, 7), generator=g)}


def _first(output):
    return output if isinstance(output, torch.Tensor) else output[0]


def _module_outputs(model, blocks, names):
    """Forward hooks on ``names`` (relative to each block): their outputs, per layer."""
    seen, handles = {}, []
    for layer, block in enumerate(blocks):
        for name in names:

            def hook(module, args, output, key=(name, layer)):
                seen[key] = _first(output).detach().clone()

            handles.append(block.get_submodule(name).register_forward_hook(hook))
    return seen, handles


@pytest.mark.parametrize("arch", list(ARCHS))
def test_points_equal_the_models_own_tensors(arch, built):
    model = built(arch)
    attn, mlp_out, pre_mlp_norm, final_norm, kinds = ARCHS[arch]
    points = list_hook_points(model)
    assert points == [f"{k}.{i}" for i in range(LAYERS) for k in _ordered(kinds)]
    blocks = [resolve_point(model, f"resid_post.{i}").module for i in range(LAYERS)]
    seen, handles = _module_outputs(model, blocks, (attn, mlp_out, pre_mlp_norm))
    try:
        with capture(model, points) as acts, torch.no_grad():
            hidden = model(**_inputs(arch), output_hidden_states=True).hidden_states
    finally:
        for handle in handles:
            handle.remove()
    assert len(hidden) == LAYERS + 1
    for i in range(LAYERS):
        assert torch.equal(acts[f"resid_pre.{i}"], hidden[i])
        assert torch.equal(acts[f"attn_out.{i}"], seen[attn, i])
        assert torch.equal(acts[f"mlp_in.{i}"].flatten(0, -2), seen[pre_mlp_norm, i].flatten(0, -2))
        assert torch.equal(acts[f"mlp_out.{i}"].flatten(0, -2), seen[mlp_out, i].flatten(0, -2))
        assert acts[f"mlp_in.{i}"].shape == acts[f"resid_pre.{i}"].shape  # OPT: unflattened
    for i in range(LAYERS - 1):
        assert torch.equal(acts[f"resid_post.{i}"], hidden[i + 1])
    last = acts[f"resid_post.{LAYERS - 1}"]
    if final_norm is None:  # encoders: the last entry is the last block's output
        assert torch.equal(last, hidden[LAYERS])
    else:  # decoders: the last entry is taken after the final norm, so apply it
        with torch.no_grad():
            assert torch.equal(model.get_submodule(final_norm)(last), hidden[LAYERS])
        assert not torch.equal(last, hidden[LAYERS])
    _check_resid_mid(arch, model, acts)


def _ordered(kinds):
    return [
        k
        for k in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in")
        if k in kinds
    ]


def _check_resid_mid(arch, model, acts):
    """The residual between the sublayers, by the block's own arithmetic."""
    for i in range(LAYERS):
        pre, post, attn, mlp = (
            acts[f"{k}.{i}"] for k in ("resid_pre", "resid_post", "attn_out", "mlp_out")
        )
        if f"resid_mid.{i}" not in acts:  # parallel: both sublayers add to resid_pre
            torch.testing.assert_close(post, pre + attn + mlp)
        elif arch == "bert":  # post-LN: the MLP reads the normed residual
            assert torch.equal(acts[f"resid_mid.{i}"], acts[f"mlp_in.{i}"])
        else:
            assert torch.equal(acts[f"resid_mid.{i}"], pre + attn)
            assert torch.equal(post, acts[f"resid_mid.{i}"] + mlp)


@pytest.mark.parametrize("arch", ["gpt_neox", "phi"])
def test_parallel_blocks_have_no_resid_mid(arch, built):
    model = built(arch)
    with pytest.raises(ValueError) as err:
        resolve_point(model, "resid_mid.1")
    msg = str(err.value)
    assert f"'resid_mid.1' does not exist in {model.config.model_type}" in msg
    assert "run in parallel" in msg
    assert "Valid points of" in msg and "resid_pre.0..1, resid_post.0..1, attn_out.0..1" in msg


@pytest.mark.parametrize("arch", ["opt", "gemma2", "phi"])
def test_splice_at_every_sublayer_point(arch, built):
    """An exact SAE spliced at any point leaves the output unchanged; a zero SAE does not."""
    model, inputs = built(arch), _inputs(arch)
    with torch.no_grad():
        reference = _first(model(**inputs))
        for point in ("resid_mid.1", "attn_out.1", "mlp_in.1", "mlp_out.1"):
            if point not in list_hook_points(model):
                continue
            with splice(model, point, IdentitySAE(D)):
                assert torch.equal(_first(model(**inputs)), reference), point
            with splice(model, point, _Zero()):
                assert not torch.equal(_first(model(**inputs)), reference), point


class _Zero(IdentitySAE):
    def __init__(self) -> None:
        super().__init__(D)

    def decode(self, z):
        return torch.zeros_like(z)


def test_capture_batch_unflattens_opt_mlp(built):
    """OPT flattens tokens around its MLP: capture_batch still gets (batch, tokens, d)."""
    model = built("opt")
    ids = _inputs("opt")["input_ids"]
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    out = capture_batch(
        model, ["mlp_in.1", "resid_mid.1", "mlp_out.0"], {"input_ids": ids, "attention_mask": mask}
    )
    assert out.n_rows == 12 and out.acts["mlp_in.1"].shape == (12, D)
