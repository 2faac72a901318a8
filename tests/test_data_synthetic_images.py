"""Synthetic shapes (sae_hooks.data.synthetic_images): the offline images of the ViT recipe and tests."""

from __future__ import annotations

import torch

from sae_hooks.data.synthetic_images import BLUE, RED, palette, shape_batches, shapes


def test_shapes_have_the_requested_colours():
    red, blue = (shapes(8, 32, [c]) for c in (RED, BLUE))
    assert red.shape == (8, 3, 32, 32) and red.dtype == torch.uint8
    assert (red[:, 0].float().mean() - red[:, 2].float().mean()) > 10
    assert (blue[:, 2].float().mean() - blue[:, 0].float().mean()) > 10
    assert torch.equal(red, shapes(8, 32, [RED]))  # deterministic
    assert not torch.equal(red, shapes(8, 32, [RED], seed=1))
    assert len(set(palette(12))) == 12


def test_shape_batches_are_normalised_like_the_processor():
    from types import SimpleNamespace

    raw = shapes(4, 16, [RED], seed=3).float() / 255
    (half,) = shape_batches(4, [RED], image_size=16, batch_size=4, seed=3)
    torch.testing.assert_close(half["pixel_values"], (raw - 0.5) / 0.5)
    processor = SimpleNamespace(image_mean=(0.4, 0.4, 0.4), image_std=(0.2, 0.2, 0.2))
    (own,) = shape_batches(4, [RED], image_size=16, batch_size=4, processor=processor, seed=3)
    torch.testing.assert_close(own["pixel_values"], (raw - 0.4) / 0.2)
