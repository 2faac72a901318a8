"""Reconstruction evaluation and concept ablation, checked on cases with known answers."""

import json

import pytest
import torch
from helpers import IdentitySAE
from torch import nn

from sae_hooks import metrics as sae_metrics
from sae_hooks.eval.ablation import (
    concept_ablation,
    embedding_similarity,
    token_logprob,
)
from sae_hooks.eval.reconstruction import ConstantReconstruction, evaluate_reconstruction
from sae_hooks.hooks import ZeroLatents, splice
from sae_hooks.model_outputs import model_kind, run_model
from sae_hooks.sae import SAE, BatchTopKSAE

D = 64


def text_batches(tokenizer, texts, padding_side="right"):
    tokenizer.padding_side = padding_side
    out = [
        tokenizer(
            texts[i : i + 4], return_tensors="pt", padding=True, truncation=True, max_length=32
        )
        for i in range(0, len(texts), 4)
    ]
    tokenizer.padding_side = "right"
    return [dict(b) for b in out]


def test_model_kinds(tiny_gpt2, tiny_vit, tiny_bert, tiny_hooked_transformer):
    assert model_kind(tiny_gpt2) == "lm"
    assert model_kind(tiny_hooked_transformer) == "lm"
    assert model_kind(tiny_vit) == "classifier"
    assert model_kind(tiny_bert) == "encoder"


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_identity_recovers_everything_zero_recovers_nothing(
    tiny_gpt2, tokenizer, texts, padding_side
):
    data = text_batches(tokenizer, texts[:8], padding_side)
    ident = evaluate_reconstruction(tiny_gpt2, "resid_post.1", IdentitySAE(), data, progress=False)
    assert ident.fvu == pytest.approx(0.0, abs=1e-10)
    assert ident.downstream["loss_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert ident.downstream["kl_clean_spliced"] == pytest.approx(0.0, abs=1e-6)
    res = evaluate_reconstruction(
        tiny_gpt2, "resid_post.1", ConstantReconstruction(torch.zeros(D)), data, progress=False
    )
    assert res.downstream["loss_recovered"] == pytest.approx(0.0, abs=1e-5)
    # Pads never count: the rows are exactly the real tokens.
    assert ident.n_rows == sum(int(b["attention_mask"].sum()) for b in data)
    # eval.json and the summary say what L0 counts: eval mode, not training's batch top-k.
    assert "eval mode" in json.loads(ident.to_json())["l0_measures"]
    assert "L0 64.00 (eval mode)" in ident.summary()  # an identity map: no selection to name
    relu = "L0 64.00 (eval mode; ReLU: codes > 0)"
    assert relu in ident.summary(selection="ReLU: codes > 0")


def test_ce_ignores_padding(tiny_gpt2, tokenizer, texts):
    """The same documents padded differently give the same clean CE."""
    a = text_batches(tokenizer, texts[:4], "right")
    b = [tokenizer([t], return_tensors="pt", truncation=True, max_length=32) for t in texts[:4]]
    ra = evaluate_reconstruction(tiny_gpt2, "resid_post.0", IdentitySAE(), a, progress=False)
    rb = evaluate_reconstruction(
        tiny_gpt2, "resid_post.0", IdentitySAE(), [dict(x) for x in b], progress=False
    )
    assert ra.downstream["ce_clean"] == pytest.approx(rb.downstream["ce_clean"], rel=1e-5)


def test_streaming_fvu_matches_one_shot():
    torch.manual_seed(0)
    x, x_hat = (
        torch.randn(300, 8, dtype=torch.float64) * 3 + 1,
        torch.randn(300, 8, dtype=torch.float64),
    )
    s = sae_metrics.SumOfSquares()
    for i in range(0, 300, 70):
        s.update(x[i : i + 70], x_hat[i : i + 70])
    expected = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert s.fvu == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.parametrize("x_hat_dtype", [torch.float32, torch.bfloat16])
def test_streaming_fvu_of_fp32_rows_far_from_zero_matches_float64(x_hat_dtype):
    """fp32 activations with a mean 1,000 times their spread (residual streams have
    such directions): the squares and sums are taken in float64 inside the reductions,
    so the variance's cancellation loses nothing against a float64 computation."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4096, 64, generator=gen) + 1000.0
    x_hat = (x + 0.3 * torch.randn(4096, 64, generator=gen)).to(x_hat_dtype)
    s = sae_metrics.SumOfSquares()
    for i in range(0, 4096, 1000):
        s.update(x[i : i + 1000], x_hat[i : i + 1000])
    x64, x_hat64 = x.double(), x_hat.double()
    expected = ((x64 - x_hat64) ** 2).sum() / ((x64 - x64.mean(0)) ** 2).sum()
    assert s.fvu == pytest.approx(expected.item(), rel=1e-6)
    assert s.mse == pytest.approx(((x64 - x_hat64) ** 2).sum().item() / 4096, rel=1e-6)


def test_streaming_fvu_reads_the_callers_error_where_given():
    """The trainer hands its loss's x - x_hat over; the sums are those of update(x, x_hat)
    (over 256-row chunks on the host: 1,000 rows end in a partial one)."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1000, 24, generator=gen) + 5.0
    x_hat = x + 0.1 * torch.randn(1000, 24, generator=gen)
    own, given = sae_metrics.SumOfSquares(), sae_metrics.SumOfSquares()
    own.update(x, x_hat)
    given.update(x, x_hat, x - x_hat)
    torch.testing.assert_close(given.state, own.state, rtol=1e-12, atol=0)
    x64 = x.double()
    assert own.state[2].item() == pytest.approx((x64**2).sum().item(), rel=1e-12)
    doubled = sae_metrics.SumOfSquares()
    doubled.update(x, x_hat, 2 * (x - x_hat))
    assert doubled.mse == pytest.approx(4 * own.mse, rel=1e-6)


def test_ablating_every_latent_equals_decoder_bias(tiny_gpt2, tokenizer, texts):
    torch.manual_seed(0)
    sae = SAE(D, 128)
    with torch.no_grad():
        sae.dictionary.bias.normal_()
    batch = text_batches(tokenizer, texts[:4])[0]
    with splice(tiny_gpt2, "resid_post.1", sae, edit=ZeroLatents(list(range(128)))):
        ablated = run_model(tiny_gpt2, batch)
    with splice(
        tiny_gpt2, "resid_post.1", ConstantReconstruction(sae.dictionary.bias / sae.input_scale)
    ):
        bias_only = run_model(tiny_gpt2, batch)
    torch.testing.assert_close(ablated, bias_only)


def test_classifier_and_encoder_metrics(tiny_vit, tiny_bert, tokenizer, texts):
    images = [
        {"pixel_values": torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(i))}
        for i in range(2)
    ]
    r = evaluate_reconstruction(tiny_vit, "resid_post.2", IdentitySAE(), images, progress=False)
    assert r.downstream["top1_agreement"] == 1.0 and r.n_rows == 8 * 17
    assert r.downstream["kl_clean_spliced"] == pytest.approx(0.0, abs=1e-6)
    data = text_batches(tokenizer, texts[:8])
    r = evaluate_reconstruction(tiny_bert, "resid_post.1", IdentitySAE(), data, progress=False)
    assert r.downstream["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert r.downstream["cosine_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert r.downstream["cosine_zero_ablated"] < 0.99


def test_batchtopk_eval_uses_running_threshold(tiny_gpt2, tokenizer, texts):
    sae = BatchTopKSAE(D, 128, top_k=64)
    with pytest.raises(RuntimeError, match="threshold"):
        evaluate_reconstruction(
            tiny_gpt2, "resid_post.1", sae, text_batches(tokenizer, texts[:4]), progress=False
        )
    assert sae.training  # the mode is restored even when evaluation fails


class ModeSpy(IdentitySAE):
    """An Identity "SAE" in train mode that records the mode of every forward and encode,
    and holds a submodule its owner keeps in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []
        self.frozen = nn.Linear(1, 1)
        self.train()
        self.frozen.eval()

    def encode(self, x):
        self.seen.append(self.training)
        return super().encode(x)

    def forward(self, x):
        self.seen.append(self.training)
        return super().forward(x)


def _splice_once(model, data):
    spy = ModeSpy()
    with splice(model, "resid_post.1", spy):
        run_model(model, data[0])
    return spy


def _evaluate(model, data):
    spy = ModeSpy()
    evaluate_reconstruction(model, "resid_post.1", spy, data, progress=False)
    return spy


def _ablate(model, data):
    spy = ModeSpy()
    concept_ablation(
        model, "resid_post.1", spy, data[:1], data[1:], token_logprob(5), m=1, n_random=1
    )
    return spy


@pytest.mark.parametrize("run", [_splice_once, _evaluate, _ablate])
def test_inference_runs_in_eval_mode_and_restores_the_mode(run, tiny_gpt2, tokenizer, texts):
    spy = run(tiny_gpt2, text_batches(tokenizer, texts[:8]))
    assert spy.seen and not any(spy.seen)  # every forward and encode ran in eval mode
    assert spy.training and not spy.frozen.training  # each submodule has its own mode back


def planted_model(tiny_gpt2, concept_token: int):
    """GPT-2 whose token `concept_token` alone writes a large value on coordinate 0."""
    import copy

    model = copy.deepcopy(tiny_gpt2)
    with torch.no_grad():
        model.transformer.wte.weight[:, 0] = 0
        model.transformer.wpe.weight[:, 0] = 0
        model.transformer.wte.weight[concept_token, 0] = 20.0
    return model


def test_concept_ablation_finds_planted_latent(tiny_gpt2, tokenizer, tmp_path):
    concept = tokenizer(" the", add_special_tokens=False)["input_ids"][0]
    model = planted_model(tiny_gpt2, concept)
    pos = [
        {"input_ids": torch.randint(1, 500, (4, 12), generator=torch.Generator().manual_seed(i))}
        for i in range(2)
    ]
    for b in pos:
        b["input_ids"][:, -1] = concept
    neg = [{"input_ids": b["input_ids"].clone()} for b in pos]
    for b in neg:
        b["input_ids"][b["input_ids"] == concept] = 7
        b["input_ids"][:, -1] = 7
    target = token_logprob(5)
    res = concept_ablation(
        model, "resid_pre.0", IdentitySAE(), pos, neg, target, m=1, n_random=6, seed=1
    )
    assert res.latents == [0]
    mean, std = res.random_effect
    assert abs(res.effect) > 10 * (abs(mean) + std)
    # Negatives never see the concept token, so ablating its latent leaves them alone.
    assert res.concept_negative == pytest.approx(res.clean_negative, abs=1e-5)
    again = concept_ablation(
        model, "resid_pre.0", IdentitySAE(), pos, neg, target, m=1, n_random=6, seed=1
    )
    assert again.to_dict() == res.to_dict()
    assert "ablate top 1" in res.table()
    png = tmp_path / "ablation.png"
    res.plot(png)
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[:2] == (360, 600)  # 5 x 3 inches at 120 dpi


def test_concept_ablation_on_encoder(tiny_bert, tokenizer, texts):
    data = text_batches(tokenizer, texts[:8])
    with torch.no_grad():
        ref = tiny_bert(**data[0]).last_hidden_state.mean((0, 1))
    res = concept_ablation(
        tiny_bert,
        "resid_post.1",
        IdentitySAE(),
        data[:1],
        data[1:],
        embedding_similarity(ref),
        m=3,
        n_random=2,
    )
    assert len(res.latents) == 3 and len(res.random_positive) == 2
    with pytest.raises(ValueError, match="m must be"):
        concept_ablation(
            tiny_bert, "resid_post.1", IdentitySAE(), data, data, embedding_similarity(ref), m=0
        )


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_drop_bos_leaves_each_first_real_token_out(tiny_gpt2, tokenizer, texts, padding_side):
    data = text_batches(tokenizer, texts[:8], padding_side)
    real = sum(int(b["attention_mask"].sum()) for b in data)
    res = evaluate_reconstruction(
        tiny_gpt2, "resid_post.1", IdentitySAE(), data, drop_bos=True, progress=False
    )
    assert res.n_rows == real - 8
