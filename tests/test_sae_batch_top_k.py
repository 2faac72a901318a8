"""`batch_top_k` (on the host: runs of columns ranked by their maxima, or per-row
candidates where runs do not tile the rows) selects exactly what one flat top-k over the
whole batch selects, including when a few rows hold most of it."""

from __future__ import annotations

import pytest
import torch

from sae_hooks.sae import sparse, sparse_encoder
from sae_hooks.sae.sparse_encoder import batch_top_k


@pytest.fixture(params=["runs", "candidates"])
def host_path(request, monkeypatch):
    """Both host paths: the runs' maxima (the default where BATCH_BLOCK_WIDTH divides n)
    and the per-row candidates (forced here)."""
    if request.param == "candidates":
        monkeypatch.setattr(sparse_encoder, "_batch_top_k_in_blocks", lambda scores, k: None)
    return request.param


def _selected(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    values, flat = batch_top_k(scores, k)
    assert values.shape == flat.shape == (k,)
    torch.testing.assert_close(scores.flatten()[flat], values)
    return values.sort().values, flat.sort().values


@pytest.mark.parametrize("skew", [0.0, 3.0, 30.0], ids=["even", "skewed", "few-rows"])
@pytest.mark.parametrize("k", [1, 64, 1000])
def test_candidates_select_what_the_flat_top_k_selects(skew, k, host_path):
    gen = torch.Generator().manual_seed(int(skew) + k)
    scores = torch.randn(64, 512, generator=gen)
    scores[:3] += skew  # three rows hold most of the budget when skewed
    values, flat = _selected(scores, k)
    ref_values, ref_flat = scores.flatten().topk(k)
    torch.testing.assert_close(values, ref_values.sort().values)
    assert torch.equal(flat, ref_flat.sort().values)


def test_a_row_holding_the_budget_joins_the_pool_whole(monkeypatch):
    """Per-row candidates: row 0 alone holds the whole budget: its m = 8 candidates all
    reach the k-th largest candidate, so all its codes above it join the pool, and the
    result is exact."""
    monkeypatch.setattr(sparse_encoder, "_batch_top_k_in_blocks", lambda scores, k: None)
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
def test_the_budget_comes_grouped_by_row(case, monkeypatch, host_path):
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


def test_runs_rank_by_their_maxima_and_list_only_the_runs_that_reach_the_floor(monkeypatch):
    """The runs' path reads the scores of the runs whose maximum reaches the k-th largest
    maximum, not the others; a row tied at that maximum throughout included."""
    gen = torch.Generator().manual_seed(9)
    scores = torch.randn(256, 512, generator=gen)  # 4,096 runs of 32
    k = 640
    scores[3] = scores.view(-1, 32).amax(-1).topk(k).values[-1].item()
    read = []
    real = torch.Tensor.index_select

    def recording(self, dim, index):
        read.append(index.numel())
        return real(self, dim, index)

    monkeypatch.setattr(torch.Tensor, "index_select", recording)
    values, flat = batch_top_k(scores, k)
    monkeypatch.undo()
    assert k <= read[0] < 1.2 * k  # the runs read, of 4,096
    ref = scores.flatten().topk(k).values
    torch.testing.assert_close(values.sort().values, ref.sort().values)
    assert bool((flat[1:] > flat[:-1]).all())  # flat order: grouped by row


@pytest.mark.parametrize("case", ["nan", "width does not divide", "budget over half the runs"])
def test_runs_hand_back_where_they_cannot_rank(case):
    """NaN codes (a NaN run would rank nowhere), rows the runs do not tile, and a budget
    over half the runs (the pool would be most codes): the per-row candidates' way, the flat
    top-k's set."""
    gen = torch.Generator().manual_seed(11)
    n, k = (500, 300) if case == "width does not divide" else (512, 300)
    scores = torch.randn(64, n, generator=gen)
    if case == "nan":
        scores[5, 7] = float("nan")
    if case == "budget over half the runs":
        k = 64 * 512 // 32 // 2 + 1
    assert sparse_encoder._batch_top_k_in_blocks(scores, k) is None
    _, flat = batch_top_k(scores, k)
    ref = scores.flatten().topk(k)
    assert torch.equal(flat.sort().values, ref.indices.sort().values)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_runs_rank_autocast_scores_as_float32(dtype):
    """bf16 / fp16 codes (CPU autocast) take the runs too, upcast in row chunks: torch's
    top-k values (their many ties may pick other indices), grouped by row, in the
    scores' dtype."""
    gen = torch.Generator().manual_seed(13)
    scores = (torch.randn(300, 512, generator=gen) * 3).to(dtype)
    k = 1500
    found = sparse_encoder._batch_top_k_in_blocks(scores, k)
    assert found is not None
    values, flat = found
    assert values.dtype == dtype and flat.unique().numel() == k
    assert torch.equal(scores.flatten()[flat], values)
    expected = scores.flatten().topk(k).values.float().sort().values
    assert torch.equal(values.float().sort().values, expected)
    rows = flat // 512
    assert bool((rows[1:] >= rows[:-1]).all())
