"""`batch_top_k` (per-row candidates, then the budget) selects exactly what one flat
top-k over the whole batch selects, including when a few rows hold most of it."""

from __future__ import annotations

import pytest
import torch

from sae_hooks.sae import sparse
from sae_hooks.sae.sparse_encoder import batch_top_k


def _selected(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    values, flat = batch_top_k(scores, k)
    assert values.shape == flat.shape == (k,)
    torch.testing.assert_close(scores.flatten()[flat], values)
    return values.sort().values, flat.sort().values


@pytest.mark.parametrize("skew", [0.0, 3.0, 30.0], ids=["even", "skewed", "few-rows"])
@pytest.mark.parametrize("k", [1, 64, 1000])
def test_candidates_select_what_the_flat_top_k_selects(skew, k):
    gen = torch.Generator().manual_seed(int(skew) + k)
    scores = torch.randn(64, 512, generator=gen)
    scores[:3] += skew  # three rows hold most of the budget when skewed
    values, flat = _selected(scores, k)
    ref_values, ref_flat = scores.flatten().topk(k)
    torch.testing.assert_close(values, ref_values.sort().values)
    assert torch.equal(flat, ref_flat.sort().values)


def test_a_row_holding_the_budget_joins_the_pool_whole(monkeypatch):
    """Row 0 alone holds the whole budget: its m = 8 candidates all reach the k-th
    largest candidate, so all its codes above it join the pool, and the result is exact."""
    calls = []
    real = torch.Tensor.nonzero

    def counting(self, *args, **kwargs):
        calls.append(tuple(self.shape))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "nonzero", counting)
    scores = torch.randn(64, 512, generator=torch.Generator().manual_seed(0))
    scores[0] += 100.0  # row 0 alone holds the whole budget of 256 codes
    expected = scores.flatten().topk(256).indices.sort().values
    assert bool((expected < 512).all())  # all in row 0
    calls.clear()
    _, flat = batch_top_k(scores, 256)
    assert torch.equal(flat.sort().values, expected)
    assert any(len(shape) == 2 and shape[1] == 512 for shape in calls)  # full rows listed


def test_other_devices_take_the_flat_top_k(monkeypatch):
    """Off CPU the exactness check would wait for the device: no candidates there."""
    scores = torch.randn(8, 64)
    monkeypatch.setattr(sparse, "HOST_DEVICES", ())  # CPU treated as a device
    monkeypatch.setattr(torch.Tensor, "__bool__", None)  # any flag read would fail
    _, flat = batch_top_k(scores, 5)
    ref = scores.flatten().topk(5)
    assert torch.equal(flat.sort().values, ref.indices.sort().values)


@pytest.mark.parametrize("case", ["distinct", "tied at the k-th", "full rows", "device"])
def test_the_budget_comes_grouped_by_row(case, monkeypatch):
    """The sparse decoder reads the pairs by row: every path returns them grouped so
    (rows ascending), exactly k of them, the flat top-k's set."""
    gen = torch.Generator().manual_seed(5)
    scores = torch.randn(64, 512, generator=gen)
    k = 640
    if case == "tied at the k-th":
        t = scores.flatten().topk(k).values[-1].item()
        scores[10:20, :3] = t  # many codes equal to the k-th largest
    if case == "full rows":
        scores[7] += 50.0
    if case == "device":
        monkeypatch.setattr(sparse, "HOST_DEVICES", ())
    values, flat = batch_top_k(scores, k)
    assert flat.numel() == k
    rows = flat // 512
    assert bool((rows[1:] >= rows[:-1]).all())
    torch.testing.assert_close(scores.flatten()[flat], values)
    ref = scores.flatten().topk(k).values
    torch.testing.assert_close(values.sort().values, ref.sort().values)
    if case != "tied at the k-th":
        assert torch.equal(flat.sort().values, scores.flatten().topk(k).indices.sort().values)
