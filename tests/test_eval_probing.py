"""Sparse probing: a latent that carries the label is found by a 1-sparse probe."""

import pytest
import torch

from sae_hooks.eval.probing import (
    labelled_shapes,
    pooled_activations,
    pydoc_topic_texts,
    sparse_probing,
)
from sae_hooks.sae import TopKSAE


def test_one_sparse_probe_finds_the_labelled_latent():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 2
    codes = torch.rand(400, 50, generator=gen)
    codes[:, 7] = labels * 2.0 + 0.1 * torch.rand(400, generator=gen)
    acts = torch.randn(400, 8, generator=gen)
    got = sparse_probing(acts, codes, labels, ks=(1, 5))
    assert got["sae_top_1_test_accuracy"] == pytest.approx(1.0)
    assert got["llm_test_accuracy"] < 0.75  # the raw activations here hold no label
    assert 0.4 < got["majority_test_accuracy"] < 0.65  # balanced labels: about a half
    with pytest.raises(ValueError, match="one row per item"):
        sparse_probing(acts[:10], codes, labels)


def test_pydoc_families_ship_offline():
    texts, labels, names = pydoc_topic_texts()
    assert names == ["statements", "expressions", "types", "data model"]
    assert len(texts) == labels.numel() > 200
    assert torch.bincount(labels).min() >= 30  # every family is populated


def test_probing_a_vit_on_shape_colours(tiny_vit):
    size = tiny_vit.config.image_size
    batches, labels, _ = labelled_shapes(48, size, n_colors=2)
    d = tiny_vit.config.hidden_size
    acts, codes = pooled_activations(tiny_vit, "resid_post.0", TopKSAE(d, 4 * d, top_k=8), batches)
    assert acts.shape == (48, d) and codes.shape == (48, 4 * d)
    got = sparse_probing(acts, codes, labels, ks=(1, 2))
    assert got["llm_test_accuracy"] >= 0.9  # colour is plain in the raw activations
