"""AuxK reads only the dead latents' columns and decodes sparsely, yet its loss and
gradients are those of the plain dense definition (live latents masked to -inf,
top-min(k_aux, n_dead), ReLU, a dense decode, the normalised squared error), for
TopK and BatchTopK, from 1 dead latent to most of them."""

from __future__ import annotations

import copy

import pytest
import torch

from sae_hooks.sae import BatchTopKSAE, TopKSAE
from sae_hooks.sae import sparse as sparse_module
from sae_hooks.train import auxk_columns, losses
from sae_hooks.train.losses import aux_k_loss, dead_top_k

D, NB, K, ROWS, K_AUX = 16, 512, 4, 40, 8


def reference_aux_k(
    residual: torch.Tensor,
    z_pre: torch.Tensor,
    dead: torch.Tensor,
    atoms: torch.Tensor,
    k_aux: int,
) -> torch.Tensor:
    """AuxK as SAELens / sparsify write it, densely."""
    n_dead = int(dead.sum())
    k = min(k_aux, n_dead)
    masked = torch.where(dead, z_pre, torch.tensor(float("-inf")))
    values, indices = masked.topk(k, dim=-1)
    codes = torch.zeros_like(z_pre).scatter(-1, indices, values.relu())
    e_hat = codes @ atoms
    e = residual
    loss = (e - e_hat).pow(2).sum() / (e - e.mean(0)).pow(2).sum()
    return min(n_dead / k_aux, 1.0) * loss


def make(variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    sae = TopKSAE(D, NB, top_k=K) if variant == "topk" else BatchTopKSAE(D, NB, top_k_per_sample=K)
    with torch.no_grad():
        sae.encoder.bias.normal_()  # about half the pre-codes positive
    sae.sparse_encoder_grad = sae.sparse_decode = True
    return sae


def dead_mask(n_dead: int) -> torch.Tensor:
    dead = torch.zeros(NB, dtype=torch.bool)
    dead[torch.randperm(NB, generator=torch.Generator().manual_seed(n_dead))[:n_dead]] = True
    return dead


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in module.named_parameters() if p.grad is not None}


PATHS = {  # (MAX_SPARSE_AUX_DENSITY, DENSE_PICKS_FROM)
    "by density": (losses.MAX_SPARSE_AUX_DENSITY, auxk_columns.DENSE_PICKS_FROM),
    "bag sums": (0.0, 1.01),
    "dense products": (0.0, 0.0),
    "pairs": (1.0, 1.01),
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("n_dead", [1, 5, 100, 480])
@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
def test_loss_and_gradients_match_the_dense_reference(variant, n_dead, path, monkeypatch):
    """By density: 8 picks of 480 dead go by pairs, of 100 by bag sums, of 5 or fewer
    by dense products."""
    monkeypatch.setattr(losses, "MAX_SPARSE_AUX_DENSITY", PATHS[path][0])
    monkeypatch.setattr(auxk_columns, "DENSE_PICKS_FROM", PATHS[path][1])
    if path != "by density":  # the forced paths select with numpy's introselect
        monkeypatch.setattr(sparse_module, "NUMPY_TOP_K_FROM", 1)
    ours = make(variant)
    ref = copy.deepcopy(ours)
    ref.sparse_encoder_grad = ref.sparse_decode = False
    dead = dead_mask(n_dead)
    x = torch.randn(ROWS, D, generator=torch.Generator().manual_seed(7))
    out = ours(x)
    residual = (x - out.x_hat).detach()
    loss = aux_k_loss(residual, out.z_pre, dead, ours.get_dictionary(), K_AUX, support=out.support)
    loss.backward()
    ref_out = ref(x)
    ref_residual = (x - ref_out.x_hat).detach()
    expected = reference_aux_k(ref_residual, ref_out.z_pre, dead, ref.get_dictionary(), K_AUX)
    expected.backward()
    assert expected.item() > 0
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    g_ours, g_ref = grads(ours), grads(ref)
    assert set(g_ours) == set(g_ref)
    assert g_ref["encoder.weight"].abs().sum() > 0
    for name, g in g_ref.items():
        scale = g.abs().max().item()
        err = (g_ours[name] - g).abs().max().item()
        assert err <= 1e-5 * scale + 1e-7, f"{name}: max error {err} at scale {scale}"


@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
def test_row_sparse_weight_gradients_add_into_the_main_loss(variant, monkeypatch):
    """The trainer's form: AuxK's dead rows as sparse gradients beside the main loss's
    dense ones; autograd adds them, and every .grad is dense and equal to the dense
    rows' form."""
    monkeypatch.setattr(losses, "MAX_SPARSE_AUX_DENSITY", 0.0)  # DeadColumnDecode
    monkeypatch.setattr(auxk_columns, "DENSE_PICKS_FROM", 0.0)
    from sae_hooks.train.constraints import normalize_rows_, unit_rows_forward

    sparse_rows = []
    on_rows = auxk_columns._on_rows

    def spy(rows_grad, cols, n, sparse=False):
        sparse_rows.append(sparse)
        return on_rows(rows_grad, cols, n, sparse)

    monkeypatch.setattr(auxk_columns, "_on_rows", spy)
    made = []
    for row_sparse in (True, False):
        sae = make(variant)
        normalize_rows_(sae.dictionary.weight)  # the trainer's unit rows: atoms are a leaf
        x = torch.randn(ROWS, D, generator=torch.Generator().manual_seed(9))
        with unit_rows_forward(sae):
            out = sae(x)
            residual = (x - out.x_hat).detach()
            aux = aux_k_loss(
                residual,
                out.z_pre,
                dead_mask(100),
                sae.get_dictionary(),
                K_AUX,
                support=out.support,
                row_sparse_grads=row_sparse,
            )
        ((x - out.x_hat).pow(2).sum() + aux).backward()
        made.append(grads(sae))
    assert sparse_rows == [True, True, False] + [False] * 3  # dictionary, encoder, bias
    assert made[0].keys() == made[1].keys()
    for name, g in made[0].items():
        assert g.layout == torch.strided, name
        torch.testing.assert_close(g, made[1][name], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n_dead", [0, 3, K_AUX, 100])
def test_the_selection_is_the_top_min_k_aux_dead_positive_pre_codes(n_dead):
    pre = torch.randn(ROWS, NB, generator=torch.Generator().manual_seed(3))
    dead = dead_mask(n_dead)
    rows, cols = dead_top_k(pre, dead, K_AUX)
    assert torch.equal(rows, rows.sort().values)  # sorted by row, as decode_pairs needs
    k = min(K_AUX, n_dead)
    masked = torch.where(dead, pre, torch.tensor(float("-inf")))
    for r in range(ROWS):
        values, indices = masked[r].topk(k) if k else (torch.empty(0), torch.empty(0))
        want = set(indices[values > 0].tolist())
        assert set(cols[rows == r].tolist()) == want
        assert len(want) <= k
    assert bool(dead[cols].all())


def test_k_aux_is_clipped_to_the_dead_count_without_changing_the_loss():
    """With fewer dead latents than k_aux every dead latent is decoded; the scale
    min(n_dead / k_aux, 1) keeps the configured k_aux (SAELens, sparsify)."""
    pre = torch.randn(ROWS, NB, generator=torch.Generator().manual_seed(4))
    atoms = torch.nn.functional.normalize(torch.randn(NB, D), dim=-1)
    residual = torch.randn(ROWS, D)
    dead = dead_mask(3)
    rows, _ = dead_top_k(pre, dead, K_AUX)
    assert int((rows == 0).sum()) == int((pre[0, dead] > 0).sum())  # all positive dead ones
    loss = aux_k_loss(residual, pre, dead, atoms, K_AUX)
    reference = reference_aux_k(residual, pre, dead, atoms, K_AUX)
    torch.testing.assert_close(loss, reference)
    unscaled = reference_aux_k(residual, pre, dead, atoms, 3)
    torch.testing.assert_close(loss, unscaled * 3 / K_AUX)
    nothing = torch.zeros(NB, dtype=torch.bool)
    assert aux_k_loss(residual, pre, nothing, atoms, K_AUX).item() == 0.0


@pytest.mark.parametrize("n_dead", [3, 100])
def test_the_path_without_host_reads_gives_the_same_loss_and_gradients(n_dead, monkeypatch):
    """Off CPU the top-k runs over all latents with the live ones at 0 (no host sync)."""
    monkeypatch.setattr(sparse_module, "HOST_DEVICES", ())
    pre = torch.randn(ROWS, NB, generator=torch.Generator().manual_seed(5))
    atoms = torch.nn.functional.normalize(torch.randn(NB, D), dim=-1)
    residual = torch.randn(ROWS, D)
    dead = dead_mask(n_dead)
    found = []
    for loss_of in (aux_k_loss, reference_aux_k):
        p, a = pre.clone().requires_grad_(), atoms.clone().requires_grad_()
        loss = loss_of(residual, p, dead, a, K_AUX)
        loss.backward()
        found.append((loss.detach(), p.grad, a.grad))
    for ours, ref in zip(*found):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("n_dead", "expected"), [(1, "dense products"), (100, "bag sums"), (480, "pairs")]
)
def test_the_path_follows_the_share_of_picks(n_dead, expected, monkeypatch):
    """8 positive picks a row of 480 dead latents (1.7%) go by pairs, ~8 of 100 by bag
    sums, 1 of 1 by dense products."""
    seen = []
    forward = auxk_columns.DeadColumnDecode.forward

    def spy(x, centre, weight, bias, pre, dictionary, picks):
        seen.append("dense products" if picks.dense else "bag sums")
        return forward(x, centre, weight, bias, pre, dictionary, picks)

    monkeypatch.setattr(auxk_columns.DeadColumnDecode, "forward", staticmethod(spy))
    sae = make("topk")
    out = sae(torch.randn(ROWS, D, generator=torch.Generator().manual_seed(7)))
    residual = torch.randn(ROWS, D)
    aux_k_loss(
        residual, out.z_pre, dead_mask(n_dead), sae.get_dictionary(), K_AUX, support=out.support
    )
    assert seen == ([] if expected == "pairs" else [expected])


@pytest.mark.parametrize("dense_from", [0.0, 1.01])
def test_the_columns_path_gives_pre_and_x_their_gradients(dense_from, monkeypatch):
    """Without the encoder's inputs the gradient goes to the pre-codes themselves; with
    inputs whose x needs a gradient, to x as well (both kernels of DeadColumnDecode)."""
    monkeypatch.setattr(losses, "MAX_SPARSE_AUX_DENSITY", 0.0)
    monkeypatch.setattr(auxk_columns, "DENSE_PICKS_FROM", dense_from)
    pre = torch.randn(ROWS, NB, generator=torch.Generator().manual_seed(5))
    atoms = torch.nn.functional.normalize(torch.randn(NB, D), dim=-1)
    residual, dead = torch.randn(ROWS, D), dead_mask(100)
    found = []
    for loss_of in (aux_k_loss, reference_aux_k):
        p, a = pre.clone().requires_grad_(), atoms.clone().requires_grad_()
        loss_of(residual, p, dead, a, K_AUX).backward()
        found.append((p.grad, a.grad))
    for ours, ref in zip(*found):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)
    ours, ref = make("topk"), make("topk")
    ref.sparse_encoder_grad = ref.sparse_decode = False
    x_grads = []
    for sae, loss_of in ((ours, aux_k_loss), (ref, reference_aux_k)):
        x = torch.randn(ROWS, D, generator=torch.Generator().manual_seed(7)).requires_grad_()
        out = sae(x)
        kwargs = {"support": out.support} if sae is ours else {}
        loss_of(
            residual, out.z_pre, dead, sae.get_dictionary().detach(), K_AUX, **kwargs
        ).backward()
        x_grads.append(x.grad)
    assert x_grads[1].abs().sum() > 0
    torch.testing.assert_close(x_grads[0], x_grads[1], rtol=1e-5, atol=1e-7)


def test_bag_sums_by_column_blocks_equal_one_embedding_bag(monkeypatch):
    """A table wider than its L2 block (here 32 columns) is summed block by block."""
    monkeypatch.setattr(sparse_module, "L2_BYTES", 64)
    monkeypatch.setattr(sparse_module, "BAG_BLOCKS_FROM", 1)
    gen = torch.Generator().manual_seed(2)
    table = torch.randn(50, 100, generator=gen)
    indices = torch.randint(0, 50, (300,), generator=gen)
    starts = torch.tensor([0, 0, 7, 120, 299])  # an empty bag, a bag of one
    weights = torch.rand(300, generator=gen)
    expected = torch.nn.functional.embedding_bag(
        indices, table, starts, per_sample_weights=weights, mode="sum"
    )
    calls = []
    embedding_bag = torch.nn.functional.embedding_bag
    monkeypatch.setattr(
        torch.nn.functional,
        "embedding_bag",
        lambda *a, **kw: calls.append(1) or embedding_bag(*a, **kw),
    )
    torch.testing.assert_close(sparse_module.bag_sums(indices, table, starts, weights), expected)
    assert len(calls) == 4  # 100 columns in blocks of 32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_at_a_rows_k_th_pre_code_keep_exactly_k_aux(dtype):
    """A row whose k_aux-th largest dead pre-code is tied keeps k_aux picks, the top
    ones; rows without ties keep every candidate above their k_aux-th largest."""
    gen = torch.Generator().manual_seed(11)
    pre = torch.randn(ROWS, NB, generator=gen, dtype=dtype)
    dead = dead_mask(100)
    cols = dead.nonzero().squeeze(1)
    pre[0, cols[:20]] = 5.0  # 20 equal maxima, more than K_AUX
    pre[1, cols] = torch.arange(100, dtype=dtype) // 10 + 1.0  # tens of each value, all > 0
    picks = auxk_columns.dead_picks(pre, dead, K_AUX)
    assert picks.keep.sum(1).tolist() == [K_AUX] * ROWS
    assert bool((pre[0, cols][picks.keep[0]] == 5.0).all())  # 8 of the 20 maxima
    assert bool((pre[1, cols][picks.keep[1]] == 10.0).all())  # 8 of the ten 10s
    for r in range(2, ROWS):
        values, at = pre[r, cols].topk(K_AUX)
        assert set(picks.keep[r].nonzero().squeeze(1).tolist()) == set(at[values > 0].tolist())
    assert picks.count == int(picks.keep.sum())


def test_the_dense_products_list_no_picks(monkeypatch):
    """Above DENSE_PICKS_FROM neither listing is made (each scans the (rows, m) mask)."""
    monkeypatch.setattr(losses, "MAX_SPARSE_AUX_DENSITY", 0.0)
    monkeypatch.setattr(auxk_columns, "DENSE_PICKS_FROM", 0.0)
    listed = []
    monkeypatch.setattr(sparse_module, "flat_true", lambda mask: listed.append(mask) or [])
    sae = make("topk")
    x = torch.randn(ROWS, D, generator=torch.Generator().manual_seed(7))
    out = sae(x)
    aux_k_loss(
        (x - out.x_hat).detach(),
        out.z_pre,
        dead_mask(100),
        sae.get_dictionary(),
        K_AUX,
        support=out.support,
    ).backward()
    assert listed == []
    assert sae.encoder.weight.grad.abs().sum() > 0
