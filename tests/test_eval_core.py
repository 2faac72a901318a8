"""SAEBench core metrics: known answers for a perfect SAE, zero ablation and shrinkage."""

import json

import pytest
import torch
from helpers import IdentitySAE

from sae_hooks.eval.core import (
    CORE_FILE,
    core_eval_json,
    core_metrics_from_rows,
    evaluate_core,
    write_core_eval,
)
from sae_hooks.eval.reconstruction import ConstantReconstruction
from sae_hooks.sae import TopKSAE

CATEGORIES = {
    "model_behavior_preservation",
    "model_performance_preservation",
    "reconstruction_quality",
    "shrinkage",
    "sparsity",
    "misc_metrics",
}


def _batches(tokenizer, texts):
    return [
        dict(
            tokenizer(
                texts[i : i + 4], return_tensors="pt", padding=True, truncation=True, max_length=32
            )
        )
        for i in range(0, 8, 4)
    ]


def test_identity_sae_is_perfect_and_zero_scores_zero(tiny_gpt2, tokenizer, texts):
    data = _batches(tokenizer, texts)
    ident = evaluate_core(tiny_gpt2, "resid_post.1", IdentitySAE(), data)
    assert set(ident) == CATEGORIES
    assert ident["model_behavior_preservation"]["kl_div_score"] == pytest.approx(1.0, abs=1e-5)
    assert ident["model_behavior_preservation"]["kl_div_with_sae"] == pytest.approx(0, abs=1e-6)
    perf = ident["model_performance_preservation"]
    assert perf["ce_loss_score"] == pytest.approx(1.0, abs=1e-5)
    assert perf["ce_loss_with_sae"] == pytest.approx(perf["ce_loss_without_sae"], abs=1e-5)
    assert ident["reconstruction_quality"]["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    assert ident["reconstruction_quality"]["cossim"] == pytest.approx(1.0, abs=1e-6)
    assert ident["shrinkage"]["l2_ratio"] == pytest.approx(1.0, abs=1e-6)
    zero = evaluate_core(tiny_gpt2, "resid_post.1", ConstantReconstruction(torch.zeros(64)), data)
    assert zero["model_performance_preservation"]["ce_loss_score"] == pytest.approx(0, abs=1e-5)
    assert zero["model_behavior_preservation"]["kl_div_score"] == pytest.approx(0, abs=1e-5)


def test_row_metrics_formulas(tmp_path):
    torch.manual_seed(0)
    sae = TopKSAE(8, 32, top_k=2)
    rows = torch.randn(300, 8)
    got = core_metrics_from_rows(sae, rows.split(100))
    with torch.no_grad():
        out = sae.eval()(rows)
    x, xh = rows.double(), out.x_hat.double()
    fvu = (x - xh).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert got["reconstruction_quality"]["explained_variance"] == pytest.approx(1 - fvu.item())
    assert got["reconstruction_quality"]["mse"] == pytest.approx((x - xh).pow(2).mean().item())
    ratio = (xh.norm(dim=-1) / x.norm(dim=-1)).mean().item()
    assert got["shrinkage"]["l2_ratio"] == pytest.approx(ratio)
    assert got["sparsity"]["l0"] == pytest.approx(2.0)
    density = (out.z != 0).float().mean(0)
    assert got["misc_metrics"]["frac_alive"] == pytest.approx((density > 0).float().mean().item())
    assert got["model_performance_preservation"]["ce_loss_score"] is None
    # SAEBench's layout, no NaN in the file.
    path = write_core_eval(tmp_path, {**got, "sparsity": {"l0": float("nan")}})
    assert path.name == CORE_FILE
    data = json.loads(path.read_text())
    assert data["eval_type_id"] == "core" and set(data["eval_result_metrics"]) == CATEGORIES
    assert data["eval_result_metrics"]["sparsity"]["l0"] is None
    assert core_eval_json(got)["eval_result_metrics"]["sparsity"]["l0"] == pytest.approx(2.0)


def test_empty_held_out_data_is_an_error():
    with pytest.raises(ValueError, match="no rows"):
        core_metrics_from_rows(TopKSAE(8, 32, top_k=2), [])
