"""Whole-model transcoder sets: one pass trains a transcoder for every layer of a tiny
GPT-2, the replacement model is measured per layer and with all layers replaced; a set
with a missing layer is refused."""

from __future__ import annotations

import pytest
import torch
from conftest import CTX, N_LAYERS
from test_eval_attribution import batches

from sae_hooks.eval import evaluate_replacement, train_transcoder_set, transcoder_layers
from sae_hooks.hooks import splice_transcoder
from sae_hooks.metrics import next_token_ce, pair_mask
from sae_hooks.model_outputs import run_model
from sae_hooks.sae import Transcoder
from sae_hooks.store import capture_to_store
from sae_hooks.train import TrainConfig


def trained_set(model, tokenizer, texts, tmp_path):
    from sae_hooks.data import text_batches

    points = [f"{k}.{layer}" for layer in range(N_LAYERS) for k in ("mlp_in", "mlp_out")]
    data = text_batches(texts, tokenizer, context_length=CTX, batch_size=8)
    store = capture_to_store(model, points, data, tmp_path / "store", progress=False,
                             chunk_rows=512)  # fmt: skip
    base = TrainConfig(point="mlp_in.0", target_point="mlp_out.0", architecture="transcoder",
                       nb_concepts=256, steps=150, batch_size=128, lr=3e-3, progress=False)  # fmt: skip
    return train_transcoder_set(base, store, tmp_path / "set", N_LAYERS)


@pytest.mark.slow
def test_transcoder_set_trains_in_one_pass_and_replaces_every_layer(
    tiny_gpt2, tokenizer, texts, tmp_path
):
    tcs = trained_set(tiny_gpt2, tokenizer, texts, tmp_path)
    assert sorted(tcs) == list(range(N_LAYERS))
    assert all((tmp_path / "set" / f"layer.{layer}" / "sae").is_dir() for layer in tcs)
    data = batches(tokenizer, texts[32:], n=16)
    result = evaluate_replacement(tiny_gpt2, tcs, data)
    print(result.table())
    assert set(result.layers) == set(range(N_LAYERS))
    for m in result.layers.values():
        assert 0 <= m["fvu"] < 1 and m["kl"] >= 0
        assert m["ce_clean"] == pytest.approx(result.all_layers["ce_clean"])
    # replacing every MLP moves the model more than any one of them (KL)
    assert result.all_layers["kl"] >= max(m["kl"] for m in result.layers.values())
    # the per-layer figures are those of splice_transcoder on that layer alone
    layer = 1
    total = count = 0.0
    with torch.no_grad():
        for b in data:
            with splice_transcoder(tiny_gpt2, f"mlp_in.{layer}", f"mlp_out.{layer}", tcs[layer]):
                logits = run_model(tiny_gpt2, b)
            mask = pair_mask(b["attention_mask"])
            total += float((next_token_ce(logits, b["input_ids"]) * mask).sum())
            count += float(mask.sum())
    assert result.layers[layer]["ce_replaced"] == pytest.approx(total / count, rel=1e-5)


def test_a_set_with_a_missing_layer_is_refused(tiny_gpt2, tokenizer, texts):
    tc = Transcoder(64, 64)
    data = batches(tokenizer, texts, n=4, size=4)
    partial = {f"mlp_out.{layer}": tc for layer in range(N_LAYERS) if layer != 2}
    with pytest.raises(ValueError, match=r"missing \[2\]"):
        evaluate_replacement(tiny_gpt2, partial, data)
    with pytest.raises(ValueError, match=r"beyond the model's 4 layers: \[4\]"):
        transcoder_layers({layer: tc for layer in range(5)}, 4)
