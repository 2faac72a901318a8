"""SAEBench core metrics: known answers for a perfect SAE, zero ablation and shrinkage;
SAEBench 0.6's layout (its schema's required keys) and its own metric definitions."""

import json

import numpy as np
import pytest
import torch
from helpers import IdentitySAE

from sae_hooks.eval.core import (
    CORE_FILE,
    NO_VALUE,
    core_eval_json,
    core_metrics_from_rows,
    evaluate_core,
    read_core_eval,
    write_core_eval,
)
from sae_hooks.eval.core_latents import LatentStats, latent_details, max_cosine
from sae_hooks.eval.engine import Batch
from sae_hooks.eval.reconstruction import ConstantReconstruction
from sae_hooks.sae import SAEOutput, TopKSAE

# The required keys of SAEBench 0.6.0's eval_output_schema_core.json (sae_bench/evals/core/).
REQUIRED = {
    "model_behavior_preservation": {"kl_div_score", "kl_div_with_ablation", "kl_div_with_sae"},
    "model_performance_preservation": {
        "ce_loss_score",
        "ce_loss_with_ablation",
        "ce_loss_with_sae",
        "ce_loss_without_sae",
    },
    "reconstruction_quality": {"explained_variance", "explained_variance_legacy", "mse", "cossim"},
    "shrinkage": {"l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias"},
    "sparsity": {"l0", "l1"},
    "token_stats": {"total_tokens_eval_reconstruction", "total_tokens_eval_sparsity_variance"},
    "misc_metrics": {
        "freq_over_1_percent",
        "freq_over_10_percent",
        "normalized_freq_over_1_percent",
        "normalized_freq_over_10_percent",
        "average_max_encoder_cosine_sim",
        "average_max_decoder_cosine_sim",
        "frac_alive",
    },
}
CATEGORIES = set(REQUIRED)
TOP_LEVEL = {
    "eval_config",
    "eval_id",
    "datetime_epoch_millis",
    "eval_result_metrics",
    "sae_bench_commit_hash",
    "sae_lens_id",
    "sae_lens_release_id",
    "sae_lens_version",
    "sae_cfg_dict",
}
DETAIL_KEYS = {
    "index",
    "feature_density",
    "consistent_activation_heuristic",
    "encoder_bias",
    "encoder_norm",
    "encoder_decoder_cosine_sim",
    "max_decoder_cosine_sim",
    "max_encoder_cosine_sim",
}
DOWNSTREAM = ("model_behavior_preservation", "model_performance_preservation")


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
    quality = got["reconstruction_quality"]
    assert quality["explained_variance_sae_hooks"] == pytest.approx(1 - fvu.item())
    assert quality["mse_sae_hooks"] == pytest.approx((x - xh).pow(2).mean().item())
    ratio = (xh.norm(dim=-1) / x.norm(dim=-1)).mean().item()
    assert got["shrinkage"]["l2_ratio"] == pytest.approx(ratio)
    assert got["sparsity"]["l0"] == pytest.approx(2.0)
    density = (out.z != 0).float().mean(0)
    assert got["misc_metrics"]["frac_alive"] == pytest.approx((density > 0).float().mean().item())
    assert got["model_performance_preservation"]["ce_loss_score"] is None
    # SAEBench's layout, no NaN in the file: SAEBench's -1, listed, and None read back.
    path = write_core_eval(tmp_path, {**got, "sparsity": {"l0": float("nan"), "l1": 1.0}})
    assert path.name == CORE_FILE
    data = json.loads(path.read_text())
    assert data["eval_type_id"] == "core" and set(data["eval_result_metrics"]) == CATEGORIES
    assert data["eval_result_metrics"]["sparsity"]["l0"] == NO_VALUE
    assert "sparsity.l0" in data["eval_result_unstructured"]["sae_hooks"]["no_value"]
    assert read_core_eval(path)["sparsity"] == {"l0": None, "l1": 1.0}
    assert core_eval_json(got)["eval_result_metrics"]["sparsity"]["l0"] == pytest.approx(2.0)


def test_empty_held_out_data_is_an_error():
    with pytest.raises(ValueError, match="no rows"):
        core_metrics_from_rows(TopKSAE(8, 32, top_k=2), [])


def _check_layout(core, n_latents):
    """Every category and key SAEBench 0.6 requires, in memory and in the file."""
    for category, keys in REQUIRED.items():
        assert keys <= set(core[category]), category
    data = core_eval_json(core)
    assert set(data) >= TOP_LEVEL and isinstance(data["sae_bench_commit_hash"], str)
    assert all(isinstance(v, str) or v is None for k, v in data.items() if "sae_lens" in k)
    for category, keys in REQUIRED.items():
        values = data["eval_result_metrics"][category]
        assert all(isinstance(values[k], (int, float)) for k in keys), category
    tokens = data["eval_result_metrics"]["token_stats"]
    assert all(isinstance(v, int) for v in tokens.values())
    details = data["eval_result_details"]
    assert [d["index"] for d in details] == list(range(n_latents))
    assert all(set(d) == DETAIL_KEYS for d in details)
    return data


def test_an_lm_file_has_every_required_key_and_the_latent_details(tiny_gpt2, tokenizer, texts):
    torch.manual_seed(3)
    sae = TopKSAE(64, 96, top_k=4)
    core = evaluate_core(tiny_gpt2, "resid_post.1", sae, _batches(tokenizer, texts))
    data = _check_layout(core, 96)
    assert data["eval_result_unstructured"]["sae_hooks"]["no_value"] == []
    assert all(v is not None for c in DOWNSTREAM for v in core[c].values())
    tokens = core["token_stats"]
    assert (
        tokens["total_tokens_eval_reconstruction"] == tokens["total_tokens_eval_sparsity_variance"]
    )
    assert data["eval_config"]["compute_kl"] and data["eval_config"]["compute_ce_loss"]
    density = np.array([d["feature_density"] for d in data["eval_result_details"]])
    assert (density > 0).mean() == pytest.approx(core["misc_metrics"]["frac_alive"])
    heuristic = [d["consistent_activation_heuristic"] for d in data["eval_result_details"]]
    assert all(h == NO_VALUE or h >= 1 for h in heuristic)


def test_an_encoder_has_every_downstream_key_none_and_minus_one_on_disk(
    tiny_bert, tokenizer, texts, tmp_path
):
    torch.manual_seed(4)
    sae = TopKSAE(64, 96, top_k=4)
    core = evaluate_core(tiny_bert, "resid_post.1", sae, _batches(tokenizer, texts))
    for category in DOWNSTREAM:
        assert set(core[category]) == REQUIRED[category]
        assert all(v is None for v in core[category].values()), category
    assert core["token_stats"]["total_tokens_eval_reconstruction"] == 0
    data = _check_layout(core, 96)
    no_value = data["eval_result_unstructured"]["sae_hooks"]["no_value"]
    assert sorted(no_value) == sorted(f"{c}.{k}" for c in DOWNSTREAM for k in REQUIRED[c])
    assert all(
        data["eval_result_metrics"][c][k] == NO_VALUE for c in DOWNSTREAM for k in REQUIRED[c]
    )
    assert not data["eval_config"]["compute_kl"]
    write_core_eval(tmp_path, core)
    back = read_core_eval(tmp_path)
    assert back["model_behavior_preservation"] == dict.fromkeys(REQUIRED[DOWNSTREAM[0]])
    assert back["sparsity"] == core["sparsity"] and len(back.details) == 96


def saebench_reference(batches, x_hat_batches):
    """SAEBench 0.6's get_sparsity_and_variance_metrics, in numpy, from its source text:
    per batch, mse = ||x - x_hat||^2 / N_b per row; the legacy explained variance per row
    around the batch mean; explained_variance = 1 - mean_b R_b / (mean_b S_b - m^2), m =
    the mean over batches and dimensions of mean_b x^2; the reconstruction bias per batch."""
    mse, legacy, sos, per_dim, resid, rrb = [], [], [], [], [], []
    for x, xh in zip(batches, x_hat_batches, strict=True):
        r = ((x - xh) ** 2).sum(-1)
        mse.append(r / len(x))
        legacy.append(1 - r / ((x - x.mean(0)) ** 2).sum(-1))
        sos.append((x**2).sum(-1).mean(0))
        per_dim.append((x**2).mean(0))
        resid.append(r.mean(0))
        rrb.append((np.linalg.norm(xh, axis=-1) ** 2).mean() / (x * xh).sum(-1).mean())
    total = np.mean(sos) - np.concatenate(per_dim).mean() ** 2
    return {
        "mse": np.concatenate(mse).mean(),
        "explained_variance_legacy": np.concatenate(legacy).mean(),
        "explained_variance": 1 - np.mean(resid) / total,
        "relative_reconstruction_bias": np.mean(rrb),
    }


def test_saebench_definitions_equal_an_independent_numpy_computation():
    """Known rows with a large mean (where the squared-mean-of-squares slip shows), split
    into batches of unequal size (where per-batch means differ from pooled ones)."""
    rng = np.random.default_rng(0)
    rows = (rng.normal(size=(250, 16)) + 3.0).astype(np.float32)
    torch.manual_seed(5)
    sae = TopKSAE(16, 48, top_k=4).eval()
    batches = [rows[:100], rows[100:130], rows[130:]]
    got = core_metrics_from_rows(sae, [torch.from_numpy(b) for b in batches])
    with torch.no_grad():
        x_hat = [sae(torch.from_numpy(b)).x_hat.double().numpy() for b in batches]
    ref = saebench_reference([b.astype(np.float64) for b in batches], x_hat)
    quality, shrink = got["reconstruction_quality"], got["shrinkage"]
    for key in ("mse", "explained_variance_legacy", "explained_variance"):
        assert quality[key] == pytest.approx(ref[key], rel=1e-5), key
    assert shrink["relative_reconstruction_bias"] == pytest.approx(
        ref["relative_reconstruction_bias"], rel=1e-5
    )
    x, xh = rows.astype(np.float64), np.concatenate(x_hat)
    ours = 1 - ((x - xh) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert quality["explained_variance_sae_hooks"] == pytest.approx(ours, rel=1e-5)
    assert quality["mse_sae_hooks"] == pytest.approx(((x - xh) ** 2).mean(), rel=1e-5)
    # The definitions differ, visibly, on these rows: the two are not the same number.
    assert abs(quality["explained_variance"] - ours) > 0.05
    assert got["token_stats"]["total_tokens_eval_sparsity_variance"] == 250


def test_latent_details_count_firings_per_sequence_and_read_the_weights():
    """Latent 0 fires 3 times over 2 sequences (heuristic 1.5), latent 1 once, latent 2
    never (no heuristic: 0 / 0); the weight columns are the SAE's own rows."""
    z = torch.tensor([[1.0, 0, 0], [2, 0, 0], [0, 1, 0], [3, 0, 0]])
    stats = LatentStats()
    out = SAEOutput(z, z, torch.zeros(4, 2))
    stats.update(
        Batch({}, torch.zeros(4, 2), torch.zeros(4, 2), out, sequence=torch.tensor([0, 0, 1, 1]))
    )
    torch.manual_seed(6)
    sae = TopKSAE(2, 3, top_k=1)
    details = latent_details(sae, stats)
    assert [d["feature_density"] for d in details] == pytest.approx([0.75, 0.25, 0.0])
    heuristic = [d["consistent_activation_heuristic"] for d in details]
    assert heuristic[:2] == pytest.approx([1.5, 1.0]) and np.isnan(heuristic[2])
    enc = sae.encoder.weight.detach().numpy()
    dec = sae.get_dictionary().detach().numpy()
    unit = enc / np.linalg.norm(enc, axis=1, keepdims=True)
    cos = unit @ unit.T
    np.fill_diagonal(cos, -np.inf)
    for i, d in enumerate(details):
        assert d["encoder_norm"] == pytest.approx(np.linalg.norm(enc[i]), rel=1e-5)
        assert d["encoder_bias"] == pytest.approx(float(sae.encoder.bias[i].detach()), rel=1e-5)
        cos_ed = enc[i] @ dec[i] / np.linalg.norm(enc[i]) / np.linalg.norm(dec[i])
        assert d["encoder_decoder_cosine_sim"] == pytest.approx(cos_ed, rel=1e-4, abs=1e-6)
        assert d["max_encoder_cosine_sim"] == pytest.approx(cos[i].max(), rel=1e-4, abs=1e-6)
    # Chunked or not, the largest cosine with another row is the same.
    rows = torch.randn(50, 8)
    assert torch.allclose(max_cosine(rows, chunk=7), max_cosine(rows), atol=1e-6)
