"""Latent attribution (gradient x activation, integrated gradients) checked against the
ablations it estimates; concept ablation choosing latents by attribution; bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import IdentitySAE

from sae_hooks.eval import concept_ablation, embedding_similarity, latent_attribution
from sae_hooks.eval.ablation import token_logprob
from sae_hooks.hooks import ZeroLatents, splice
from sae_hooks.hooks.backends import add_hook
from sae_hooks.hooks.points import resolve_point
from sae_hooks.model_outputs import run_model
from sae_hooks.sae import TopKSAE

POINT = "resid_post.1"


def batches(tokenizer, texts, n=8, size=8, length=24):
    return [
        dict(tokenizer(texts[i : i + size], return_tensors="pt", padding=True, truncation=True,
                       max_length=length))
        for i in range(0, n, size)
    ]  # fmt: skip


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


@torch.no_grad()
def metric(model, point, sae, data, target, latents=None) -> float:
    edit = None if latents is None else ZeroLatents(list(latents))
    with splice(model, point, sae, error_term=True, edit=edit):
        return sum(float(target(run_model(model, b), b).sum()) for b in data)


@torch.no_grad()
def metric_replaced(model, point, data, target, value) -> float:
    """The metric with the point's activation replaced by `value` (d,) at every token."""
    hook = add_hook(resolve_point(model, point), lambda x: value.to(x.dtype).expand_as(x))
    try:
        return sum(float(target(run_model(model, b), b).sum()) for b in data)
    finally:
        hook.remove()


def first_order(model, point, data, target, baseline) -> float:
    """sum over real tokens of d metric / d x . (x - baseline), x the point's activation."""
    total = 0.0
    for b in data:
        seen: list[torch.Tensor] = []

        def leaf(x, seen=seen):
            seen.append(x.detach().requires_grad_())
            return seen[-1]

        hook = add_hook(resolve_point(model, point), leaf)
        try:
            (grad,) = torch.autograd.grad(target(run_model(model, b), b).sum(), seen)
        finally:
            hook.remove()
        mask = b["attention_mask"][..., None]
        total += float((grad * (seen[0].detach() - baseline) * mask).sum())
    return total


def topk_sae(d, n, k, seed=0):
    torch.manual_seed(seed)
    return TopKSAE(d, n, top_k=k).eval()


def agreement(model, point, sae, data, target):
    """(attribution, Spearman with -effect over the top 20 and top 50 by |attribution|)."""
    found = latent_attribution(model, {point: sae}, data, target)
    clean = metric(model, point, sae, data, target)
    assert found.metric == pytest.approx(clean, rel=1e-5, abs=1e-5)  # the splice is exact
    top = found[point].top(50)
    effect = torch.tensor([metric(model, point, sae, data, target, [i]) - clean for i in top])
    estimate = found[point].latents[top]
    return found, [spearman(estimate[:k], -effect[:k]) for k in (20, 50)]


def test_attribution_ranks_like_ablation_on_tiny_gpt2(tiny_gpt2, tokenizer, texts):
    data = batches(tokenizer, texts, n=8)
    sae = topk_sae(64, 256, 8)
    target = token_logprob(5)
    found, (rho20, rho50) = agreement(tiny_gpt2, POINT, sae, data, target)
    print(f"tiny GPT-2 TopK: Spearman top 20 {rho20:.3f}, top 50 {rho50:.3f}")
    assert rho20 >= 0.8 and rho50 >= 0.8
    # Latents + error = grad_x . (x - b_dec): the first-order estimate of ablating the point.
    b_dec = sae.decode(torch.zeros(1, sae.nb_concepts))[0].detach()
    linear = first_order(tiny_gpt2, POINT, data, target, b_dec)
    assert found[POINT].total == pytest.approx(linear, rel=1e-4)
    per_example = found[POINT].per_example
    assert per_example.shape == (8, 256)
    torch.testing.assert_close(per_example.sum(0), found[POINT].latents)


def test_attribution_ranks_like_ablation_on_minilm(minilm, texts):
    model, tok = minilm
    data = batches(tok, texts, n=8)
    with torch.no_grad():
        reference = torch.cat([model(**b).last_hidden_state.mean(1) for b in data]).mean(0)
    _, (rho20, rho50) = agreement(
        model, "resid_post.2", topk_sae(384, 1536, 16), data, embedding_similarity(reference)
    )
    print(f"MiniLM TopK: Spearman top 20 {rho20:.3f}, top 50 {rho50:.3f}")
    assert rho20 >= 0.8 and rho50 >= 0.8


def test_integrated_gradients_complete_to_the_full_ablation(tiny_gpt2, tokenizer, texts):
    """Latents + error, integrated from the baseline, = metric(clean) - metric(point at
    the baseline). From the mean activation the path is smooth: 16 steps are within 1%.
    From zero (b_dec) the path passes LayerNorm near a zero residual and converges slowly,
    yet 16 steps already beat the plain gradient's estimate by far."""
    data = batches(tokenizer, texts, n=8)
    sae = topk_sae(64, 256, 8)
    target = token_logprob(5)
    rows = torch.cat([_real_rows(tiny_gpt2, POINT, b) for b in data])
    results = {}
    for baseline, value in (("mean", rows.mean(0)), ("zero", sae.decode(torch.zeros(1, 256))[0])):
        ig = latent_attribution(
            tiny_gpt2, {POINT: sae}, data, target, baseline=baseline, ig_steps=16
        )
        grad = latent_attribution(tiny_gpt2, {POINT: sae}, data, target, baseline=baseline)
        full = ig.metric - metric_replaced(tiny_gpt2, POINT, data, target, value.detach())
        results[baseline] = full, ig[POINT].total, grad[POINT].total
        print(f"{baseline} baseline: full ablation {full:.4f}, integrated gradients (16 steps) "
              f"{ig[POINT].total:.4f}, gradient x activation {grad[POINT].total:.4f}")  # fmt: skip
    full, ig_total, grad_total = results["mean"]
    assert ig_total == pytest.approx(full, rel=0.01)
    full, ig_total, grad_total = results["zero"]
    assert abs(ig_total - full) < 0.25 * abs(grad_total - full)


def _real_rows(model, point, inputs):
    from sae_hooks.hooks import capture_batch

    return capture_batch(model, point, inputs).acts[point]


def test_several_points_in_one_pass_match_one_at_a_time(tiny_gpt2, tokenizer, texts):
    data = batches(tokenizer, texts, n=8)
    saes = {"resid_post.0": topk_sae(64, 128, 8, seed=1), POINT: topk_sae(64, 256, 8)}
    target = token_logprob(5)
    both = latent_attribution(tiny_gpt2, saes, data, target)
    for point, sae in saes.items():
        alone = latent_attribution(tiny_gpt2, {point: sae}, data, target)
        torch.testing.assert_close(both[point].latents, alone[point].latents)
        assert both[point].error == pytest.approx(alone[point].error, rel=1e-5)
    assert list(both.points) == list(saes)


def test_bad_input_has_one_clear_error_each(tiny_gpt2, tokenizer, texts):
    data = batches(tokenizer, texts, n=4, size=4)
    saes = {POINT: topk_sae(64, 256, 8), "resid_post.0": topk_sae(64, 128, 8)}
    with pytest.raises(ValueError, match="forward order"):
        latent_attribution(tiny_gpt2, saes, data, token_logprob(5))

    def flat(logits, inputs):  # a value with a graph but no dependence on anything
        return logits[:, 0, 5] * 0

    with pytest.raises(ValueError, match=r"does not depend on 'resid_post\.1'"):
        latent_attribution(tiny_gpt2, {POINT: saes[POINT]}, data, flat)
    with pytest.raises(ValueError, match="no gradient"):
        latent_attribution(
            tiny_gpt2, {POINT: saes[POINT]}, data, lambda out, inputs: torch.zeros(len(out))
        )
    with pytest.raises(ValueError, match="baseline"):
        latent_attribution(tiny_gpt2, {POINT: saes[POINT]}, data, token_logprob(5), baseline="x")


class ThresholdSAE(IdentitySAE):
    """Codes are the coordinates above 1 (a ReLU with a bias of -1): sparse ones fire
    where the model writes a large value."""

    def encode(self, x):
        return x, x * (x > 1)


def planted(tiny_gpt2, concept: int):
    """Coordinate 0 fires on the concept token only; coordinate 1 on every token (dense),
    a little more on the concept token."""
    model = copy.deepcopy(tiny_gpt2)
    with torch.no_grad():
        for weight in (model.transformer.wte.weight, model.transformer.wpe.weight):
            weight[:, :2] = 0
        model.transformer.wte.weight[:, 1] = 2.0
        model.transformer.wte.weight[concept, :2] = torch.tensor([20.0, 4.0])
    return model


def concept_examples(concept: int):
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
    return pos, neg


def test_concept_ablation_flags_and_skips_dense_latents(tiny_gpt2):
    model, (pos, neg) = planted(tiny_gpt2, 42), concept_examples(42)
    args = (model, "resid_pre.0", ThresholdSAE(), pos, neg, token_logprob(5))
    res = concept_ablation(*args, m=2, n_random=2)
    assert res.latents[0] == 0 and 1 not in res.latents
    assert res.dense == [1] and res.density[0] < 0.1
    assert "dense latents" in res.table()
    kept = concept_ablation(*args, m=2, n_random=2, keep_dense=True)
    assert kept.latents == [0, 1] and kept.dense == [1] and kept.density[1] == 1.0


def test_concept_ablation_by_attribution_lowers_the_target(tiny_gpt2, tokenizer, texts):
    """The top latents by attribution lower the target; random firing ones hardly move it.
    (Not on the planted model above: its concept coordinate dominates the residual, where
    LayerNorm's scale invariance leaves it almost no gradient — see docs/circuits.md.)"""
    pos = batches(tokenizer, texts, n=8)
    neg = batches(tokenizer, texts[8:], n=8)
    res = concept_ablation(
        tiny_gpt2, POINT, topk_sae(64, 256, 8), pos, neg, token_logprob(5), m=3, n_random=4,
        select="attribution",
    )  # fmt: skip
    assert res.select == "attribution" and all(score > 0 for score in res.scores)
    mean, std = res.random_effect
    assert res.effect < 0 and abs(res.effect) > abs(mean) + 3 * std
    with pytest.raises(ValueError, match="select must be"):
        concept_ablation(tiny_gpt2, POINT, topk_sae(64, 256, 8), pos, neg, token_logprob(5),
                         select="activation")  # fmt: skip
