"""The fixed per-step costs of the sparse step (issue 35 item 3): the pre-code matrix
reused across steps, its dense backward, one latent sort shared by two products."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sae_hooks.sae.sparse import LatentOrder, latent_grad
from sae_hooks.sae.sparse_encoder import PreCodeBuffer, PreCodes, encoder_pre_codes


def test_the_pre_code_matrix_is_reused_only_when_nothing_holds_it():
    buffer = PreCodeBuffer()
    x, w = torch.randn(8, 5), torch.randn(12, 5)
    first = encoder_pre_codes(x, None, w, None, buffer)
    held = first.data_ptr()
    del first
    second = encoder_pre_codes(x, None, w, None, buffer)
    assert second.data_ptr() == held  # nothing held the first: the same memory
    alias = second[:, :3]  # a view of the second is alive
    del second
    third = encoder_pre_codes(x, None, w, None, buffer)
    assert third.data_ptr() != held  # so the third is new memory, the view intact
    torch.testing.assert_close(alias, (x @ w.t())[:, :3])


def test_pre_codes_values_and_gradients_equal_f_linear():
    torch.manual_seed(0)
    leaves = [torch.randn(6, 4), torch.randn(4), torch.randn(10, 4), torch.randn(10)]
    ours = [t.clone().double().requires_grad_() for t in leaves]
    ref = [t.clone().double().requires_grad_() for t in leaves]
    upstream = torch.randn(6, 10, dtype=torch.float64)
    pre = PreCodes.apply(*ours, PreCodeBuffer())
    expected = F.linear(ref[0] - ref[1], ref[2], ref[3])
    torch.testing.assert_close(pre, expected)
    (pre * upstream).sum().backward()
    (expected * upstream).sum().backward()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad)


def test_a_shared_latent_order_gives_the_same_product_with_zeros_dropped():
    torch.manual_seed(1)
    rows = torch.arange(30).repeat_interleave(4)
    cols = torch.randint(0, 20, (120,))
    x = torch.randn(30, 7)
    order = LatentOrder(rows, cols)
    for grad in (torch.randn(120), torch.randn(120) * (torch.rand(120) < 0.5)):
        dense = torch.zeros(20, 30).index_put_((cols, rows), grad, accumulate=True)
        torch.testing.assert_close(latent_grad(20, rows, cols, grad, x, order), dense @ x)
        torch.testing.assert_close(latent_grad(20, rows, cols, grad, x), dense @ x)


def test_the_sparse_paths_pass_the_dense_pre_codes_no_gradient(monkeypatch):
    """TopK reads its pre-codes through the sparse backward: the dense one gets None
    (a materialised zero gradient would cost three (rows, n) matmuls)."""
    from sae_hooks.sae import TopKSAE

    seen = []
    original = PreCodes.backward

    def spy(ctx, grad):
        seen.append(grad)
        return original(ctx, grad)

    monkeypatch.setattr(PreCodes, "backward", staticmethod(spy))
    sae = TopKSAE(16, 128, top_k=4)
    with sae.sparse_codes():
        out = sae(torch.randn(8, 16))
    out.x_hat.pow(2).sum().backward()
    assert seen == [None]
    assert sae.encoder.weight.grad is not None and sae.dictionary.bias.grad is not None


@pytest.mark.parametrize(
    ("dtype", "floor_dtype"),
    [
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
        (torch.bfloat16, torch.bfloat16),
        (torch.bfloat16, torch.float32),  # autocast: bf16 pre-codes, fp32 thresholds
        (torch.float16, torch.float32),
    ],
)
def test_pairs_at_least_lists_what_nonzero_lists_and_stops_at_the_limit(dtype, floor_dtype):
    """numpy's compare and flatnonzero for fp32 / fp64 and bf16 (from its bits), torch's
    for fp16: the pairs of torch's own compare, infinities, NaN and -0 included."""
    from sae_hooks.sae import sparse_encoder

    pre, floor = torch.randn(9, 32).to(dtype), (torch.randn(32) + 1.0).to(floor_dtype)
    pre[0, :5] = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0, 3e-39])
    floor[1:3] = torch.tensor([0.0, float("-inf")])
    rows, cols = (pre >= floor).nonzero(as_tuple=True)
    found = sparse_encoder.pairs_at_least(pre, floor, float("inf"))
    assert torch.equal(found[0], rows) and torch.equal(found[1], cols)
    assert sparse_encoder.pairs_at_least(pre, floor, rows.numel() - 1) is None
    assert sparse_encoder.pairs_at_least(pre, floor, rows.numel()) is not None


def test_the_rethreshold_is_the_batch_budgets_smallest_code():
    from sae_hooks.sae.jump import _batch_threshold

    torch.manual_seed(2)
    pre = torch.randn(64, 256)
    pre[3, :40] = 5.0  # one row holds many of the top codes (per-row candidates overflow)
    for l0 in (1, 4, 17.5):
        k = round(l0 * 64)
        expected = pre.flatten().topk(k).values.min()
        torch.testing.assert_close(_batch_threshold(pre, l0), expected.expand(256))


def test_row_top_k_selects_torchs_top_k_set_by_numpy_from_its_cut(monkeypatch):
    from sae_hooks.sae import sparse

    scores = torch.randn(50, 300)
    expected = scores.topk(80, dim=-1).indices.sort(-1).values
    for cut in (sparse.NUMPY_TOP_K_FROM, 1000):  # numpy's introselect, then torch's top-k
        monkeypatch.setattr(sparse, "NUMPY_TOP_K_FROM", cut)
        picked = sparse.row_top_k(scores, 80)
        assert picked.shape == (50, 80) and picked.is_contiguous()
        assert torch.equal(picked.sort(-1).values, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("m", "k"), [(6144, 32), (6144, 128), (6000, 40), (2000, 96), (300, 80)])
def test_row_top_k_of_autocast_scores_keeps_torchs_top_k_values(dtype, m, k):
    """bf16 / fp16 pre-codes (autocast): strided blocks, the candidates upcast for numpy.
    Their many ties make the indices differ from torch's; the picked values may not."""
    from sae_hooks.sae import sparse

    torch.manual_seed(m + k)
    scores = torch.randn(40, m).to(dtype)
    scores[0, :64] = 9.0 + torch.arange(64.0)  # one row's top codes crowd a few blocks
    picked = sparse.row_top_k(scores, k)
    assert picked.shape == (40, k) and picked.dtype == torch.long
    assert bool((picked.sort(-1).values.diff(dim=-1) > 0).all())  # k distinct columns
    values = scores.gather(1, picked).float().sort(-1).values
    assert torch.equal(values, scores.topk(k, dim=-1).values.float().sort(-1).values)


@pytest.mark.parametrize(
    ("m", "k", "pruned"),
    [
        (6144, 32, True),
        (6144, 128, True),
        (6000, 32, True),
        (1999, 40, True),
        (2000, 96, False),
        (300, 80, False),
    ],
)
@pytest.mark.parametrize("contiguous", [True, False])
def test_row_top_k_block_pruning_keeps_torchs_top_k_set(m, k, pruned, contiguous):
    """The k largest lie in the k blocks with the largest maxima: the pruned selection
    picks torch's set, whole blocks or a tail of columns past the last block, rows
    contiguous or not; heavy ties inside one block included."""
    from sae_hooks.sae import sparse

    assert (sparse._block_width(m, k) is not None) == pruned
    torch.manual_seed(m + k)
    scores = torch.randn(40, m) if contiguous else torch.randn(m, 40).t()
    scores[0, :64] = 9.0 + torch.arange(64.0)  # one row's top codes crowd a few blocks
    scores[1, -7:] = 50.0  # the tail's columns win
    picked = sparse.row_top_k(scores, k)
    assert picked.shape == (40, k) and picked.dtype == torch.long
    expected = scores.topk(k, dim=-1).indices.sort(-1).values
    assert torch.equal(picked.sort(-1).values, expected)
    batched = sparse.row_top_k(scores.reshape(4, 10, m), k)  # leading dims kept
    assert torch.equal(batched.reshape(40, k).sort(-1).values, expected)
    assert sparse.row_top_k(torch.randn(0, m), k).shape == (0, k)  # an empty batch


@pytest.mark.parametrize("high", [6144, 2**15, 2**40])
def test_sort_indices_is_a_stable_sort_whatever_the_key_width(high):
    """Keys below 2^15 sort as 16-bit keys (numpy's radix sort), others as they are:
    the same stable order as torch's."""
    from sae_hooks.sae.sparse import sort_indices

    values = torch.randint(0, high, (5000,), generator=torch.Generator().manual_seed(0))
    values[::7] = values[3]  # ties: the order among equal keys is the input order
    expected = torch.sort(values, stable=True)
    found = sort_indices(values)
    assert torch.equal(found[0], expected.values) and torch.equal(found[1], expected.indices)


@pytest.mark.parametrize("threads", [2, 3])
def test_numpy_kernels_over_row_chunks_in_threads_equal_one_pass(threads, monkeypatch):
    """`by_row_chunks` splits a host array's rows over torch's thread count: row top-k,
    the support listed by `pairs_at_least`, AuxK's floors and its listings of the picks
    come out as in one pass."""
    from sae_hooks.sae import sparse
    from sae_hooks.sae.sparse_encoder import pairs_at_least
    from sae_hooks.train.auxk_columns import DeadPicks, _floors

    gen = torch.Generator().manual_seed(threads)
    scores = torch.randn(101, 700, generator=gen)  # rows not divisible by the threads
    floor = torch.rand(700, generator=gen) + 1.0
    mask = scores > 0.5

    def listed() -> tuple[torch.Tensor, ...]:
        picks = DeadPicks(torch.arange(700), scores, mask)
        return (
            picks.by_row,
            picks.rows,
            picks.row_starts(),
            *picks.by_latent(),
            _floors(scores, 80),
        )

    one_pass = (sparse.row_top_k(scores, 80), pairs_at_least(scores, floor, 1e9), listed())
    previous = torch.get_num_threads()
    monkeypatch.setattr(sparse, "PARALLEL_ROWS_FROM", 1)
    torch.set_num_threads(threads)
    try:
        chunked = (sparse.row_top_k(scores, 80), pairs_at_least(scores, floor, 1e9), listed())
        assert pairs_at_least(scores, floor, 10) is None  # counted before listing
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(chunked[0].sort(-1).values, one_pass[0].sort(-1).values)
    for got, want in zip((*chunked[1], *chunked[2]), (*one_pass[1], *one_pass[2]), strict=True):
        assert torch.equal(got, want)
    assert len(sparse._POOLS) >= 1


@pytest.mark.parametrize("use_order", [True, False])
def test_latent_grad_by_bags_equals_the_csr_product(use_order, monkeypatch):
    """From LATENT_BAGS_FROM pairs a row the host sums a bag a latent: the same (n, d)
    gradient as the CSR product, empty latents and zero weights included."""
    from sae_hooks.sae import sparse

    gen = torch.Generator().manual_seed(4)
    n, rows, d = 300, 40, 24
    pair_rows = torch.arange(rows).repeat_interleave(20)
    cols = torch.randint(0, n // 2, (rows * 20,), generator=gen)  # half the latents empty
    grad = torch.randn(rows * 20, generator=gen)
    grad[::7] = 0.0
    x = torch.randn(rows, d, generator=gen)

    def product() -> torch.Tensor:
        order = sparse.LatentOrder(pair_rows, cols) if use_order else None
        return sparse.latent_grad(n, pair_rows, cols, grad, x, order)

    monkeypatch.setattr(sparse, "LATENT_BAGS_FROM", 10**9)
    csr = product()
    monkeypatch.setattr(sparse, "LATENT_BAGS_FROM", 1)
    calls = []
    bag_sums = sparse.bag_sums
    monkeypatch.setattr(sparse, "bag_sums", lambda *a: calls.append(1) or bag_sums(*a))
    bags = product()
    assert calls == [1]
    expected = torch.zeros(n, d).index_add_(0, cols, grad[:, None] * x[pair_rows])
    torch.testing.assert_close(csr, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bags, expected, rtol=1e-5, atol=1e-5)
