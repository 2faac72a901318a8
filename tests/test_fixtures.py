"""The offline fixtures build and run; the MiniLM weights are the real ones."""

import torch


def test_tiny_models_forward(tiny_gpt2, tiny_vit, tiny_bert, tiny_llama, tiny_neox, tokenizer):
    batch = tokenizer(
        ["def f(x): return x", "The quick brown fox"], return_tensors="pt", padding=True
    )
    for m in (tiny_gpt2, tiny_llama, tiny_neox):
        out = m(**batch)
        assert out.logits.shape[:2] == batch["input_ids"].shape
    assert tiny_bert(**batch).last_hidden_state.shape[-1] == 64
    assert tiny_vit(pixel_values=torch.randn(2, 3, 32, 32)).logits.shape == (2, 10)


def test_transformer_lens_models(tiny_hooked_transformer, tiny_bridge, tokenizer):
    ids = tokenizer(["Hello world, this is a test"], return_tensors="pt")["input_ids"]
    assert tiny_hooked_transformer(ids).shape == (*ids.shape, 512)
    assert tiny_bridge(ids).shape == (*ids.shape, 512)


def test_minilm_is_real(minilm):
    model, tok = minilm
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    batch = tok(
        ["A cat sits on the mat.", "A kitten rests on a rug.", "Stock prices fell."],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    # Trained weights put the two paraphrases closer than the unrelated sentence.
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2
