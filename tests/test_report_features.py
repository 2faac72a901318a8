"""The streaming feature pass: exact top examples, densities and histograms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import IdentitySAE

from sae_hooks.report import Rows, collect_features
from sae_hooks.report.features import _Collector


def sparse_codes(n=3000, d=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.relu(torch.randn(n, d, generator=g) - 1.2) * torch.rand(d, generator=g) * 50
    z[:, 7] = 0  # a dead latent
    z[5, 9] = 1e-6  # a tiny activation next to large ones
    return z


@pytest.mark.parametrize("chunk", [1, 97, 1000, 5000])
def test_pass_matches_brute_force(chunk):
    z = sparse_codes()
    k = 6
    stats = collect_features(
        IdentitySAE(z.shape[1]), Rows.from_tensors(z), k=k, chunk_rows=chunk, progress=False
    )
    values, rows = z.topk(k, dim=0)
    torch.testing.assert_close(stats.top_values, values.T)
    live = values.T > 0  # ties among zeros are arbitrary
    assert torch.equal(stats.top_rows[live], rows.T[live])
    assert torch.equal(stats.fire_count, (z > 0).sum(0))
    torch.testing.assert_close(stats.density, (z > 0).double().mean(0))
    assert stats.fire_count[7] == 0 and stats.mean_act[7] == 0
    for latent in range(z.shape[1]):
        v = z[:, latent][z[:, latent] > 0]
        top = float(stats.hist_range[latent])
        assert int(stats.hist_counts[latent].sum()) == v.numel()
        if v.numel():
            assert top / 2 <= float(v.max()) < top  # a power of two just above the max
            width = top / stats.hist_counts.shape[1]
            expected = torch.bincount((v / width).long(), minlength=stats.hist_counts.shape[1])
            assert torch.equal(stats.hist_counts[latent], expected)


def test_histogram_survives_range_growth_by_many_octaves():
    acc = _Collector(1, k=2, bins=8, device=torch.device("cpu"))
    acc.add(0, torch.tensor([[0.1], [0.3]]))
    acc.add(2, torch.tensor([[100.0], [0.0], [60.0]]))
    s = acc.result()
    assert float(s.hist_range[0]) == 128.0
    assert s.hist_counts[0].tolist() == [2, 0, 0, 1, 0, 0, 1, 0]
    assert s.top_rows[0].tolist() == [2, 4]


def test_store_and_tensors_agree(tmp_path):
    from types import SimpleNamespace

    from sae_hooks.store import StoreWriter, open_store

    z = sparse_codes(n=500, d=12, seed=1)
    with StoreWriter(tmp_path / "s", points=["p"], chunk_rows=64) as w:
        for start in range(0, 500, 50):
            n = 50
            w.append(
                SimpleNamespace(
                    acts={"p": z[start : start + n]},
                    token_ids=torch.arange(n),
                    doc_index=torch.full((n,), start // 50),
                    position=torch.arange(n),
                )
            )
    rows = Rows.from_store(open_store(tmp_path / "s"), "p")
    assert rows.chunk_rows == 64 and rows.n_rows == 500
    a = collect_features(IdentitySAE(12), rows, k=4, progress=False)
    b = collect_features(IdentitySAE(12), Rows.from_tensors(z), k=4, progress=False)
    torch.testing.assert_close(a.top_values, b.top_values)
    assert torch.equal(a.hist_counts, b.hist_counts)
    index = np.array([0, 3, 63, 64, 65, 200, 499])
    torch.testing.assert_close(rows.take(index), z[index])
    assert Rows.from_store(open_store(tmp_path / "s"), "p", max_rows=70).n_rows == 70


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="input_size=5"):
        collect_features(IdentitySAE(5), Rows.from_tensors(torch.zeros(3, 4)), progress=False)
    with pytest.raises(ValueError, match=r"shape \(n_rows, d_model\)"):
        Rows.from_tensors(torch.zeros(3))
    with pytest.raises(ValueError, match=r"doc_index has shape \(2,\), expected \(3,\)"):
        Rows.from_tensors(torch.zeros(3, 4), doc_index=[0, 1])


def test_batchtopk_uses_its_running_threshold():
    from sae_hooks.sae import BatchTopKSAE

    torch.manual_seed(0)
    sae = BatchTopKSAE(16, 64, top_k=4 * 128)
    sae.running_threshold = 0.5
    x = torch.randn(300, 16)
    stats = collect_features(sae, Rows.from_tensors(x), k=3, progress=False)
    assert sae.training  # the pass puts the mode back
    z_pre, _ = sae.eval().encode(x)
    assert torch.equal(stats.fire_count, (z_pre > 0.5).sum(0))
