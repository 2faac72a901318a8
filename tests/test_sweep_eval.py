"""evaluate_many: every SAE of a sweep over the same batches, one clean forward per batch."""

from __future__ import annotations

import math

import pytest
import torch

from sae_hooks.eval import evaluate_many, evaluate_reconstruction
from sae_hooks.sae import BatchTopKSAE, TopKSAE

D = 64


def batches(tokenizer, texts):
    return [
        dict(tokenizer(texts[i : i + 4], return_tensors="pt", padding=True, max_length=32,
                       truncation=True))
        for i in range(0, 12, 4)
    ]  # fmt: skip


def test_each_sae_gets_what_it_gets_alone(tiny_gpt2, tokenizer, texts, monkeypatch):
    torch.manual_seed(0)
    saes = {
        "a": ("resid_post.0", TopKSAE(D, 128, top_k=4)),
        "b": ("resid_post.0", BatchTopKSAE(D, 256, top_k=64)),
        "c": ("resid_post.1", TopKSAE(D, 128, top_k=8)),
    }
    with torch.no_grad():  # one training-mode pass sets BatchTopK's running threshold
        saes["b"][1](torch.randn(32, D))
    data = batches(tokenizer, texts)
    forwards = []
    original = tiny_gpt2.forward
    monkeypatch.setattr(
        tiny_gpt2, "forward", lambda *a, **k: forwards.append(1) or original(*a, **k)
    )
    many = evaluate_many(tiny_gpt2, saes, data, progress=False)
    # per batch: 1 clean + 2 points x (zero, mean) + 3 SAEs = 8 forwards (alone: 4 per SAE)
    assert len(forwards) == 8 * len(data)
    for name, (point, sae) in saes.items():
        alone = evaluate_reconstruction(tiny_gpt2, point, sae, data, progress=False)
        got = many[name]
        assert (got.point, got.n_rows, got.n_batches) == (point, alone.n_rows, alone.n_batches)
        for key in ("fvu", "l0", "dead_fraction", "dense_fraction"):
            assert getattr(got, key) == pytest.approx(getattr(alone, key), rel=1e-6), key
        assert got.downstream.keys() == alone.downstream.keys()
        for key, value in alone.downstream.items():
            assert math.isclose(got.downstream[key], value, rel_tol=1e-5, abs_tol=1e-6), key
        assert sae.training  # the previous mode is back


def test_needs_an_sae(tiny_gpt2):
    with pytest.raises(ValueError, match="at least one SAE"):
        evaluate_many(tiny_gpt2, {}, [])
