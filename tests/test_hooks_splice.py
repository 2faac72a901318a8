"""splice: SAE reconstructions in the forward pass, error term, latent edits, cleanup.

The SAEs here are tiny stand-ins with the sae_hooks.sae contract (encode -> (z_pre, z),
decode, input_size), so these tests do not depend on the SAE package.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import IdentitySAE
from torch import nn

from sae_hooks.hooks import (
    AddToLatents,
    ClampLatents,
    ScaleLatents,
    ZeroLatents,
    capture,
    splice,
)
from sae_hooks.sae import BatchTopKSAE, load_sae

D = 64


class ZeroSAE(IdentitySAE):
    def decode(self, z):
        return torch.zeros_like(z)


class LinearSAE(nn.Module):
    """A random ReLU dictionary: lossy, so error_term has something to correct."""

    def __init__(self, d=D, n=96, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.input_size, self.nb_concepts = d, n
        self.w_enc = nn.Parameter(torch.randn(n, d, generator=g) / d**0.5)
        self.b_enc = nn.Parameter(torch.randn(n, generator=g) * 0.1)
        self.w_dec = nn.Parameter(torch.randn(n, d, generator=g) / n**0.5)
        self.b_dec = nn.Parameter(torch.randn(d, generator=g) * 0.1)

    def encode(self, x):
        z_pre = x @ self.w_enc.T + self.b_enc
        return z_pre, torch.relu(z_pre)

    def decode(self, z):
        return z @ self.w_dec + self.b_dec


MODELS = [
    "tiny_gpt2",
    "tiny_llama",
    "tiny_bert",
    "tiny_vit",
    "tiny_hooked_transformer",
    "tiny_bridge",
]
KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


@pytest.fixture(scope="module")
def inputs(tokenizer):
    return tokenizer(
        ["def f(x): return x + 1", "The quick brown fox jumps"], return_tensors="pt", padding=True
    )


def run(model, inputs):
    """The model's main output for text or images, HF or TransformerLens."""
    with torch.no_grad():
        if isinstance(inputs, torch.Tensor):
            return model(inputs)
        out = model(**inputs)
        return out.logits if hasattr(out, "logits") else out.last_hidden_state


def model_inputs(name, request, inputs):
    model = request.getfixturevalue(name)
    if name == "tiny_vit":
        return model, {
            "pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        }
    if name in ("tiny_hooked_transformer", "tiny_bridge"):
        return model, inputs["input_ids"]
    return model, inputs


def hook_counts(model):
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


@pytest.mark.parametrize("name", MODELS)
def test_identity_sae_reproduces_clean_output(name, request, inputs):
    model, x = model_inputs(name, request, inputs)
    clean = run(model, x)
    for kind in KINDS:
        with splice(model, f"{kind}.1", IdentitySAE()):
            torch.testing.assert_close(run(model, x), clean, rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_linear_sae_with_error_term_is_exact(name, request, inputs):
    model, x = model_inputs(name, request, inputs)
    clean = run(model, x)
    sae = LinearSAE()
    with splice(model, "resid_post.1", sae):
        lossy = run(model, x)
    assert (lossy - clean).abs().max() > 1e-3  # the SAE alone changes the model
    with splice(model, "resid_post.1", sae, error_term=True):
        torch.testing.assert_close(run(model, x), clean, rtol=0, atol=0)
    # A no-op edit goes through the decode(z_edit) - decode(z) path: still exact.
    with splice(model, "resid_mid.2", sae, error_term=True, edit=ScaleLatents(range(96), 1.0)):
        torch.testing.assert_close(run(model, x), clean, rtol=0, atol=0)


def zero_hook(module, args, output):
    return torch.zeros_like(output)


def test_zero_sae_equals_zero_ablation_hf(tiny_gpt2, inputs):
    handle = tiny_gpt2.transformer.h[1].register_forward_hook(zero_hook)
    try:
        ablated = run(tiny_gpt2, inputs)
    finally:
        handle.remove()
    with splice(tiny_gpt2, "resid_post.1", ZeroSAE()):
        torch.testing.assert_close(run(tiny_gpt2, inputs), ablated, rtol=0, atol=0)


def test_zero_sae_equals_zero_ablation_transformer_lens(tiny_hooked_transformer, inputs):
    ids = inputs["input_ids"]
    for kind in KINDS:
        name = f"blocks.2.hook_{kind}"
        with torch.no_grad():
            ablated = tiny_hooked_transformer.run_with_hooks(
                ids, fwd_hooks=[(name, lambda x, hook: torch.zeros_like(x))]
            )
        with splice(tiny_hooked_transformer, f"{kind}.2", ZeroSAE()):
            torch.testing.assert_close(run(tiny_hooked_transformer, ids), ablated, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_bridge"])
def test_resid_mid_replacement_reaches_the_residual(name, request, inputs):
    """Zeroing resid_mid must zero the residual too: resid_post = 0 + mlp(ln_2(0))."""
    model = request.getfixturevalue(name)
    x = inputs["input_ids"] if name == "tiny_bridge" else inputs
    block = (model.original_model if name == "tiny_bridge" else model).transformer.h[1]
    with splice(model, "resid_mid.1", ZeroSAE()), capture(model, "resid_post.1") as acts:
        model(x) if name == "tiny_bridge" else model(**x)
    with torch.no_grad():
        expected = block.mlp(block.ln_2(torch.zeros_like(acts["resid_post.1"])))
    torch.testing.assert_close(acts["resid_post.1"], expected)


@pytest.mark.parametrize("error_term", [False, True])
def test_edit_changes_only_later_positions(error_term, tiny_gpt2, inputs):
    sae = LinearSAE()
    with splice(tiny_gpt2, "resid_post.0", sae, error_term=error_term):
        base = run(tiny_gpt2, inputs)
    edit = AddToLatents([3, 7], 5.0, positions=[4])
    with splice(tiny_gpt2, "resid_post.0", sae, error_term=error_term, edit=edit):
        edited = run(tiny_gpt2, inputs)
    torch.testing.assert_close(edited[:, :4], base[:, :4], rtol=0, atol=0)
    assert ((edited[:, 4:] - base[:, 4:]).abs().amax(-1) > 1e-4).all()


def test_add_to_latent_adds_its_decoder_direction(tiny_gpt2, inputs):
    sae = LinearSAE()
    with capture(tiny_gpt2, "resid_post.1") as clean:
        tiny_gpt2(**inputs)
    x = clean["resid_post.1"]
    with torch.no_grad():
        expected = sae.decode(sae.encode(x)[1]) + 2.5 * sae.w_dec[5]
    with (
        splice(tiny_gpt2, "resid_post.1", sae, edit=AddToLatents(5, 2.5)),
        capture(tiny_gpt2, "resid_post.1") as spliced,
    ):
        tiny_gpt2(**inputs)
    torch.testing.assert_close(spliced["resid_post.1"], expected, rtol=1e-5, atol=1e-5)


def test_edits_on_latents():
    z = torch.arange(24.0).reshape(1, 4, 6)
    torch.testing.assert_close(ZeroLatents([1, 2])(z)[..., [1, 2]], torch.zeros(1, 4, 2))
    torch.testing.assert_close(ClampLatents(0, 9.0)(z)[..., 0], torch.full((1, 4), 9.0))
    torch.testing.assert_close(ScaleLatents([5], 2.0)(z)[..., 5], 2 * z[..., 5])
    only_last = AddToLatents(3, 1.0, positions=[-1])(z)
    torch.testing.assert_close(only_last[0, :, 3], z[0, :, 3] + torch.tensor([0.0, 0, 0, 1]))
    mask = torch.tensor([[True, False, True, False]])
    masked = ZeroLatents(4, positions=mask)(z)
    assert masked[0, :, 4].tolist() == [0.0, 10.0, 0.0, 22.0]
    assert torch.equal(z, torch.arange(24.0).reshape(1, 4, 6))  # the input is untouched
    untouched = [i for i in range(6) if i != 4]
    assert torch.equal(masked[..., untouched], z[..., untouched])


def test_composed_edits_apply_in_order(tiny_gpt2, inputs):
    sae = LinearSAE()
    edits = [ClampLatents(2, 4.0), ScaleLatents(2, 0.5)]
    with splice(tiny_gpt2, "resid_post.1", sae, edit=edits, record_latents=True) as s:
        run(tiny_gpt2, inputs)
    assert (s.latents["resid_post.1"][..., 2] == 2.0).all()


def test_record_latents_and_several_points(tiny_gpt2, inputs):
    saes = {"resid_post.1": LinearSAE(seed=1), "resid_mid.3": LinearSAE(seed=2)}
    with capture(tiny_gpt2, "resid_post.1") as clean:
        tiny_gpt2(**inputs)
    with splice(tiny_gpt2, saes, record_latents=True, edit={"resid_mid.3": ZeroLatents(0)}) as s:
        run(tiny_gpt2, inputs)
    assert s.points == ("resid_post.1", "resid_mid.3")
    z = s.latents["resid_post.1"]
    assert z.shape == (*inputs["input_ids"].shape, 96)
    torch.testing.assert_close(z, saes["resid_post.1"].encode(clean["resid_post.1"])[1].detach())
    assert (s.latents["resid_mid.3"][..., 0] == 0).all()
    assert not s.latents["resid_mid.3"].requires_grad


def test_bf16_model_keeps_its_dtype(tiny_gpt2, inputs):
    bf16 = copy.deepcopy(tiny_gpt2).to(torch.bfloat16)
    clean = run(bf16, inputs)
    seen = []
    handle = bf16.transformer.h[2].register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
    with splice(bf16, "resid_post.1", LinearSAE(), error_term=True, edit=ZeroLatents(0)):
        out = run(bf16, inputs)
    handle.remove()
    assert seen == [torch.bfloat16]  # what the next block receives
    assert out.dtype == torch.bfloat16 and out.shape == clean.shape
    with splice(bf16, "resid_post.1", LinearSAE(), error_term=True):
        torch.testing.assert_close(run(bf16, inputs), clean, rtol=0, atol=0)


def test_gradients_flow_through_the_splice(tiny_gpt2, inputs):
    sae = LinearSAE()
    with splice(tiny_gpt2, "resid_mid.1", sae):
        tiny_gpt2(**inputs).logits.sum().backward()
    assert sae.w_enc.grad is not None and sae.w_enc.grad.abs().sum() > 0
    tiny_gpt2.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_hooked_transformer"])
def test_hooks_removed_on_every_exit(name, request, inputs):
    model, x = model_inputs(name, request, inputs)
    before = hook_counts(model)
    saes = {f"{k}.1": LinearSAE() for k in KINDS}
    with splice(model, saes):
        run(model, x)
    assert hook_counts(model) == before
    with pytest.raises(KeyError), splice(model, saes):
        raise KeyError("boom")
    assert hook_counts(model) == before
    with (
        pytest.raises(ValueError, match="input_size is 32"),
        splice(model, "resid_post.0", LinearSAE(d=32)),
    ):
        run(model, x)
    assert hook_counts(model) == before


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("resid_post.0",), {}, TypeError, "needs an SAE"),
        (("resid_post.0", nn.Linear(2, 2)), {}, TypeError, "is not an SAE"),
        (({"resid_post.0": IdentitySAE()}, IdentitySAE()), {}, TypeError, "either"),
        (({},), {}, ValueError, "empty"),
        ((3, IdentitySAE()), {}, TypeError, "a hook point"),
        (("resid_post.9", IdentitySAE()), {}, ValueError, r"out of range.*resid_post\.0\.\.3"),
        (("resid_post.0", IdentitySAE()), {"edit": "zero"}, TypeError, "must be a LatentEdit"),
        (
            ("resid_post.0", IdentitySAE()),
            {"edit": {"resid_pre.1": ZeroLatents(0)}},
            ValueError,
            "not spliced",
        ),
        (
            ("resid_post.0", IdentitySAE()),
            {"sae_mode": "inference"},
            ValueError,
            "sae_mode must be 'eval' or 'train'",
        ),
    ],
)
def test_bad_arguments(args, kwargs, error, match, tiny_gpt2):
    with pytest.raises(error, match=match), splice(tiny_gpt2, *args, **kwargs):
        pass


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (ZeroLatents(64), r"out of range: the SAE has 64 \(0\.\.63\)"),
        (ZeroLatents([]), "non-empty list of ints"),
        (ZeroLatents(0, positions=[99]), "positions"),
        (
            ZeroLatents(0, positions=torch.ones(3, dtype=torch.bool)),
            r"mask must be \(T,\) or \(B, T\)",
        ),
    ],
)
def test_bad_edits(edit, match, tiny_gpt2, inputs):
    with (
        pytest.raises(ValueError, match=match),
        splice(tiny_gpt2, "resid_post.0", IdentitySAE(), edit=edit),
    ):
        run(tiny_gpt2, inputs)


def test_loaded_batchtopk_codes_do_not_depend_on_the_batch(tiny_gpt2, tokenizer, tmp_path):
    """Splicing a loaded BatchTopK SAE gives a sequence the same codes alone or batched
    with three others: it runs on its running threshold, not the batch's top k."""
    texts = ["def f(x): return x + 1 if x else -x", "The quick brown fox", "import os", "a b"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    alone = tokenizer(texts[:1], return_tensors="pt")
    n = alone["input_ids"].shape[1]
    assert n == batch["input_ids"].shape[1]  # the first text is the longest: no padding
    with capture(tiny_gpt2, "resid_post.1") as acts:
        tiny_gpt2(**batch)
    torch.manual_seed(0)
    sae = BatchTopKSAE(D, 256, top_k_per_sample=16)
    with torch.no_grad():
        codes = sae.encode(acts["resid_post.1"][batch["attention_mask"].bool()])[1]
    sae.running_threshold = codes[codes > 0].min()
    sae.save(tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae").train()  # as a user might leave it

    def codes_of(inputs, **kwargs):
        with splice(tiny_gpt2, "resid_post.1", loaded, record_latents=True, **kwargs) as s:
            run(tiny_gpt2, inputs)
        assert loaded.training  # the caller's mode is back
        return s.latents["resid_post.1"][0, :n]

    one, four = codes_of(alone), codes_of(batch)
    torch.testing.assert_close(one, four, rtol=1e-5, atol=1e-5)
    assert 0 < (one != 0).sum(-1).float().mean() < 256
    # Opting in to train mode brings back the batch top-k: 16 codes a row on average over
    # the whole batch, so this sequence's share moves with its neighbours (16 vs 17.6 here).
    l0_one = (codes_of(alone, sae_mode="train") != 0).sum(-1).float().mean().item()
    l0_four = (codes_of(batch, sae_mode="train") != 0).sum(-1).float().mean().item()
    assert l0_one == pytest.approx(16) and abs(l0_four - l0_one) > 1
