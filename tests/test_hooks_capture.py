"""capture / capture_batch: the values are the model's, the forward stops early, no hook leaks."""

from __future__ import annotations

import copy

import pytest
import torch

from sae_hooks.hooks import ActivationBatch, capture, capture_batch

TEXTS = ["def f(x): return x", "The quick brown fox jumps over the lazy dog again", "Hi"]
CAUSAL = ["tiny_gpt2", "tiny_llama", "tiny_neox"]
FINAL_NORM = {"tiny_gpt2": "transformer.ln_f", "tiny_llama": "model.norm"}
FINAL_NORM["tiny_neox"] = "gpt_neox.final_layer_norm"


def text_batch(tokenizer, side="right", texts=TEXTS):
    tokenizer.padding_side = side
    try:
        return tokenizer(texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = "right"


def hook_counts(model):
    return [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._forward_hooks_with_kwargs))
        for m in model.modules()
    ]


def every_point(n, kinds=("resid_pre", "resid_post")):
    return [f"{k}.{i}" for i in range(n) for k in kinds]


@pytest.mark.parametrize("name", [*CAUSAL, "tiny_bert"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_text_matches_hidden_states(name, side, request, tokenizer):
    """hidden_states[L] is resid_pre.L and hidden_states[L+1] resid_post.L, except that
    causal LMs apply their final norm to the last one: compare norm(resid_post.last)."""
    model = request.getfixturevalue(name)
    batch = text_batch(tokenizer, side)
    with torch.no_grad():
        hs = model(**batch, output_hidden_states=True).hidden_states
    n = len(hs) - 1
    with capture(model, every_point(n)) as acts:
        model(**batch)
    for i in range(n):
        torch.testing.assert_close(acts[f"resid_pre.{i}"], hs[i], rtol=0, atol=0)
    for i in range(n - 1):
        torch.testing.assert_close(acts[f"resid_post.{i}"], hs[i + 1], rtol=0, atol=0)
    last = acts[f"resid_post.{n - 1}"]
    if name in FINAL_NORM:
        with torch.no_grad():
            last = model.get_submodule(FINAL_NORM[name])(last)
    torch.testing.assert_close(last, hs[n], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["tiny_vit", "vit_model"])
def test_vit_matches_hidden_states(name, request, tiny_vit):
    """ViT's hidden_states stop before its final layernorm: resid_post.last is hs[-1]."""
    model = tiny_vit if name == "tiny_vit" else tiny_vit.vit
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hs = model(pixel_values=pixels, output_hidden_states=True).hidden_states
    with capture(model, every_point(4)) as acts:
        model(pixel_values=pixels)
    for i in range(4):
        torch.testing.assert_close(acts[f"resid_pre.{i}"], hs[i], rtol=0, atol=0)
        torch.testing.assert_close(acts[f"resid_post.{i}"], hs[i + 1], rtol=0, atol=0)
    assert acts["resid_post.0"].shape == (2, 17, 64)  # CLS + 16 patches


def test_minilm_real_weights(minilm):
    model, tok = minilm
    batch = tok(
        ["A cat sits on the mat.", "Stock prices fell sharply today."],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        hs = model(**batch, output_hidden_states=True).hidden_states
    with capture(model, ["resid_post.5", "resid_mid.2", "resid_pre.0"]) as acts:
        model(**batch)
    torch.testing.assert_close(acts["resid_post.5"], hs[6], rtol=0, atol=0)
    torch.testing.assert_close(acts["resid_pre.0"], hs[0], rtol=0, atol=0)
    assert acts["resid_mid.2"].shape == hs[3].shape


@pytest.mark.parametrize("name", ["tiny_hooked_transformer", "tiny_bridge"])
def test_transformer_lens_matches_run_with_cache(name, request, tokenizer):
    model = request.getfixturevalue(name)
    ids = text_batch(tokenizer)["input_ids"][:2]
    _, cache = model.run_with_cache(ids)
    kinds = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
    with capture(model, every_point(4, kinds)) as acts:
        model(ids)
    for point, act in acts.items():
        kind, layer = point.split(".")
        torch.testing.assert_close(act, cache[f"blocks.{layer}.hook_{kind}"], rtol=0, atol=0)
    with capture(model, "blocks.2.ln2.hook_normalized") as raw:
        model(ids)
    torch.testing.assert_close(
        raw["blocks.2.ln2.hook_normalized"], cache["blocks.2.ln2.hook_normalized"]
    )


def count_block_calls(blocks):
    """How many times each block ran to completion."""
    calls = [0] * len(blocks)
    handles = [
        b.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, b in enumerate(blocks)
    ]
    return calls, handles


@pytest.mark.parametrize(
    ("points", "executed"),
    [
        (["resid_post.1"], [1, 1, 0, 0]),
        (["resid_pre.2"], [1, 1, 0, 0]),  # stopped before block 2 runs
        (["resid_post.2", "resid_pre.1"], [1, 1, 1, 0]),  # order of the list is irrelevant
        (["transformer.h.1.mlp", "resid_mid.1"], [1, 0, 0, 0]),  # block 1 stops mid-way
        (["resid_post.3"], [1, 1, 1, 1]),
    ],
)
def test_early_stop_skips_later_blocks(points, executed, tiny_gpt2, tokenizer):
    batch = text_batch(tokenizer)
    calls, handles = count_block_calls(tiny_gpt2.transformer.h)
    head_calls = []
    handles.append(tiny_gpt2.lm_head.register_forward_pre_hook(lambda *a: head_calls.append(1)))
    try:
        with capture(tiny_gpt2, points, stop_early=True) as acts:
            assert not torch.is_grad_enabled()  # the stopped forward has no graph to keep
            tiny_gpt2(**batch)
            pytest.fail("the forward should have been stopped")
    finally:
        for h in handles:
            h.remove()
    assert calls == executed
    assert head_calls == []
    assert set(acts) == set(points)


def test_capture_is_safe_by_default(tiny_gpt2, tokenizer):
    """Without stop_early the block runs as written: the whole forward, the code after
    the model call, and autograd (the captured copies are detached)."""
    batch = text_batch(tokenizer)
    after = []
    with capture(tiny_gpt2, "resid_post.0") as acts:
        out = tiny_gpt2(**batch)
        after.append(out.logits.requires_grad)
    assert after == [True]
    assert out.logits.shape[:2] == batch["input_ids"].shape
    out.logits.sum().backward()
    assert tiny_gpt2.transformer.h[3].mlp.c_fc.weight.grad is not None
    tiny_gpt2.zero_grad(set_to_none=True)
    assert acts["resid_post.0"].shape == (*batch["input_ids"].shape, 64)
    assert not acts["resid_post.0"].requires_grad


@pytest.mark.parametrize(
    "name", ["tiny_gpt2", "tiny_bert", "tiny_hooked_transformer", "tiny_bridge"]
)
def test_hooks_removed_on_every_exit(name, request, tokenizer):
    model = request.getfixturevalue(name)
    ids = text_batch(tokenizer)["input_ids"]
    before = hook_counts(model)
    points = ["resid_pre.1", "resid_mid.2", "resid_post.3", "attn_out.0", "mlp_out.1"]
    with capture(model, points):
        model(ids)
    assert hook_counts(model) == before
    with pytest.raises(KeyError, match="boom"), capture(model, points):
        raise KeyError("boom")
    assert hook_counts(model) == before
    with pytest.raises(RuntimeError, match="never fired"), capture(model, points):
        pass
    assert hook_counts(model) == before
    with (
        pytest.raises(ValueError, match="unknown hook point"),
        capture(model, ["resid_pre.0", "nope"]),
    ):
        pass
    assert hook_counts(model) == before


def test_dtype_cast_and_bf16_model(tiny_gpt2, tokenizer):
    batch = text_batch(tokenizer)
    bf16 = copy.deepcopy(tiny_gpt2).to(torch.bfloat16)
    with torch.no_grad():
        hs = bf16(**batch, output_hidden_states=True).hidden_states
    with capture(bf16, ["resid_post.1", "resid_pre.1"], dtype=torch.float32) as acts:
        bf16(**batch)
    assert acts["resid_post.1"].dtype == torch.float32
    torch.testing.assert_close(acts["resid_post.1"], hs[2].float(), rtol=0, atol=0)
    with capture(bf16, "resid_post.1") as native:
        bf16(**batch)
    assert native["resid_post.1"].dtype == torch.bfloat16


def test_accelerate_offloaded_model(tiny_gpt2, tokenizer):
    """accelerate's hooks move weights in at call time; ours must sit beside them."""
    from accelerate import cpu_offload

    batch = text_batch(tokenizer)
    with capture(tiny_gpt2, "resid_post.2") as ref:
        tiny_gpt2(**batch)
    offloaded = cpu_offload(copy.deepcopy(tiny_gpt2), execution_device="cpu")
    with capture(offloaded, "resid_post.2") as acts:
        offloaded(**batch)
    torch.testing.assert_close(acts["resid_post.2"], ref["resid_post.2"], rtol=0, atol=0)


# capture_batch -----------------------------------------------------------------------


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("drop_bos", [False, True])
def test_capture_batch_drops_padding(side, drop_bos, tiny_gpt2, tokenizer):
    batch = text_batch(tokenizer, side)
    points = ["resid_post.1", "resid_pre.0"]
    out = capture_batch(tiny_gpt2, points, batch, drop_bos=drop_bos)
    assert isinstance(out, ActivationBatch)

    # Expected rows from the unpadded tokenisation of each document.
    docs = [tokenizer(t)["input_ids"][int(drop_bos) :] for t in TEXTS]
    assert out.n_rows == sum(len(d) for d in docs)
    assert out.token_ids.tolist() == [tok for d in docs for tok in d]
    assert out.doc_index.tolist() == [i for i, d in enumerate(docs) for _ in d]
    start = int(drop_bos)
    assert out.position.tolist() == [p for d in docs for p in range(start, start + len(d))]
    for t in (out.token_ids, out.doc_index, out.position):
        assert t.dtype == torch.int64

    with torch.no_grad():
        hs = tiny_gpt2(**batch, output_hidden_states=True).hidden_states
    keep = batch["attention_mask"].bool()
    if drop_bos:
        keep &= batch["attention_mask"].cumsum(1) > 1
    torch.testing.assert_close(out.acts["resid_post.1"], hs[2][keep], rtol=0, atol=0)
    torch.testing.assert_close(out.acts["resid_pre.0"], hs[0][keep], rtol=0, atol=0)


def test_capture_batch_right_padding_equals_unpadded_runs(tiny_llama, tokenizer):
    """Real tokens of a right-padded causal batch see exactly their own document."""
    out = capture_batch(tiny_llama, "resid_post.2", text_batch(tokenizer, "right"))
    for i, text in enumerate(TEXTS):
        single = capture_batch(tiny_llama, "resid_post.2", tokenizer([text], return_tensors="pt"))
        rows = out.acts["resid_post.2"][out.doc_index == i]
        torch.testing.assert_close(rows, single.acts["resid_post.2"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("vit_tokens", "positions"), [("all", range(17)), ("cls", [0]), ("patches", range(1, 17))]
)
def test_capture_batch_vit(vit_tokens, positions, tiny_vit):
    pixels = torch.randn(2, 3, 32, 32)
    out = capture_batch(tiny_vit, "resid_post.3", {"pixel_values": pixels}, vit_tokens=vit_tokens)
    positions = list(positions)
    assert out.position.tolist() == positions * 2
    assert out.doc_index.tolist() == [0] * len(positions) + [1] * len(positions)
    assert (out.token_ids == -1).all()
    with torch.no_grad():
        hs = tiny_vit(pixel_values=pixels, output_hidden_states=True).hidden_states
    torch.testing.assert_close(out.acts["resid_post.3"], hs[4][:, positions].reshape(-1, 64))


def test_capture_batch_transformer_lens_tensor(tiny_hooked_transformer, tokenizer):
    ids = text_batch(tokenizer)["input_ids"][:2, :6]
    out = capture_batch(tiny_hooked_transformer, "resid_mid.1", ids)
    _, cache = tiny_hooked_transformer.run_with_cache(ids)
    torch.testing.assert_close(
        out.acts["resid_mid.1"], cache["blocks.1.hook_resid_mid"].reshape(-1, 64)
    )
    assert out.token_ids.tolist() == ids.reshape(-1).tolist()
    assert out.position.tolist() == list(range(6)) * 2
    assert out.doc_index.tolist() == [0] * 6 + [1] * 6


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"vit_tokens": "patch"}, ValueError, "vit_tokens must be one of"),
        ({"inputs": {"attention_mask": torch.ones(1, 3)}}, ValueError, "input_ids or pixel_values"),
        ({"inputs": [1, 2, 3]}, TypeError, "inputs must be"),
        ({"points": []}, ValueError, "points is empty"),
        ({"points": "transformer.h.0.attn.c_attn.weight"}, ValueError, "unknown hook point"),
    ],
)
def test_capture_batch_bad_inputs(kwargs, error, match, tiny_gpt2, tokenizer):
    args = {"points": "resid_post.0", "inputs": text_batch(tokenizer), **kwargs}
    with pytest.raises(error, match=match):
        capture_batch(tiny_gpt2, args.pop("points"), args.pop("inputs"), **args)


def test_capture_batch_rejects_drop_bos_for_images(tiny_vit):
    with pytest.raises(ValueError, match="vit_tokens='patches'"):
        capture_batch(
            tiny_vit, "resid_post.0", {"pixel_values": torch.randn(1, 3, 32, 32)}, drop_bos=True
        )
