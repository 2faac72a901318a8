"""The evaluation engine: the pipeline evaluates in one pass, and one pass gives the numbers
of the separate evaluations and of a plain computation from captured rows."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from sae_hooks import metrics
from sae_hooks.eval import evaluate_reconstruction
from sae_hooks.eval.core import (
    CORE_FILE,
    evaluate_core,
    evaluate_reconstruction_and_core,
    read_core_eval,
)
from sae_hooks.hooks import capture, splice
from sae_hooks.model_outputs import run_model
from sae_hooks.pipeline import _eval_step
from sae_hooks.sae import BatchTopKSAE, TopKSAE

D = 64
POINT = "resid_post.1"


class Drawn:
    """A list of batches that counts how often it is iterated and how many batches are drawn."""

    def __init__(self, batches: list) -> None:
        self.batches, self.passes, self.drawn = batches, 0, 0

    def __iter__(self):
        self.passes += 1
        for batch in self.batches:
            self.drawn += 1
            yield batch


def text_batches(tokenizer, texts, n=12):
    return [
        dict(tokenizer(texts[i : i + 4], return_tensors="pt", padding=True, max_length=32,
                       truncation=True))
        for i in range(0, n, 4)
    ]  # fmt: skip


def count_forwards(model, monkeypatch) -> list:
    forwards: list = []
    original = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: forwards.append(1) or original(*a, **k))
    return forwards


def close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if a is None or b is None or isinstance(a, str):
        return a == b
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


@pytest.fixture
def sae():
    torch.manual_seed(0)
    sae = BatchTopKSAE(D, 256, top_k=16)
    with torch.no_grad():  # one training-mode pass sets the running threshold
        sae(torch.randn(64, D))
    return sae.eval()


def test_the_pipeline_evaluates_in_one_pass(
    tiny_gpt2, tokenizer, texts, sae, tmp_path, monkeypatch
):
    data = Drawn(text_batches(tokenizer, texts))
    forwards = count_forwards(tiny_gpt2, monkeypatch)
    resolved = SimpleNamespace(to_dict=lambda: {"architecture": "batchtopk"})
    result = _eval_step(tiny_gpt2, POINT, sae, resolved, data, tmp_path, True, False)
    # one pass: each batch drawn once; per batch clean, spliced, zeroed, mean (the two
    # separate evaluations took 4 + 3)
    assert (data.passes, data.drawn) == (1, 3)
    assert len(forwards) == 4 * 3
    monkeypatch.undo()

    alone = evaluate_reconstruction(
        tiny_gpt2, POINT, sae, data.batches, drop_bos=True, progress=False
    )
    written = json.loads((tmp_path / "eval.json").read_text())
    assert close(written, alone.to_dict()) and close(result.to_dict(), alone.to_dict())
    core = evaluate_core(tiny_gpt2, POINT, sae, data.batches, drop_bos=True)
    on_disk = read_core_eval(tmp_path / CORE_FILE)
    assert close(dict(on_disk), json.loads(json.dumps(core), parse_constant=lambda _: None))
    density = [d["feature_density"] for d in core.details]
    assert [d["feature_density"] for d in on_disk.details] == pytest.approx(density)


def plain_reference(model, sae, batches) -> dict[str, float]:
    """FVU, L0, CE and KL computed directly: capture, concatenate, splice, no engine."""
    xs, zs, ce, kl, pairs, real = [], [], {}, {}, 0.0, 0.0
    with torch.no_grad():
        for inputs in batches:
            with capture(model, POINT) as acts:
                clean = run_model(model, inputs)
            mask = inputs["attention_mask"]
            x = acts[POINT][mask.bool()]
            xs.append(x)
            zs.append(sae(x).z)
            outs = {"clean": clean}
            with splice(model, POINT, sae):
                outs["spliced"] = run_model(model, inputs)
            p = metrics.pair_mask(mask)
            for name, logits in outs.items():
                ce[name] = ce.get(name, 0.0) + float(
                    (metrics.next_token_ce(logits, inputs["input_ids"]) * p).sum()
                )
            kl["spliced"] = kl.get("spliced", 0.0) + float(
                (metrics.kl_div(clean, outs["spliced"]) * mask).sum()
            )
            pairs, real = pairs + float(p.sum()), real + float(mask.sum())
        x, z = torch.cat(xs).double(), torch.cat(zs)
        x_hat = sae.decode(z).double()
    return {
        "fvu": float(metrics.fvu(x, x_hat)),
        "l0": float(metrics.l0(z)),
        "ce_clean": ce["clean"] / pairs,
        "ce_spliced": ce["spliced"] / pairs,
        "kl_clean_spliced": kl["spliced"] / real,
    }  # fmt: skip


def test_one_pass_equals_a_plain_computation(tiny_gpt2, tokenizer, texts):
    torch.manual_seed(1)
    sae = TopKSAE(D, 128, top_k=8).eval()
    data = text_batches(tokenizer, texts)
    result, core = evaluate_reconstruction_and_core(tiny_gpt2, POINT, sae, data, progress=False)
    ref = plain_reference(tiny_gpt2, sae, data)
    assert result.fvu == pytest.approx(ref["fvu"], rel=1e-5)
    assert result.l0 == pytest.approx(ref["l0"], rel=1e-6)
    for key in ("ce_clean", "ce_spliced", "kl_clean_spliced"):
        assert result.downstream[key] == pytest.approx(ref[key], rel=1e-5), key
    assert core["reconstruction_quality"]["explained_variance_sae_hooks"] == pytest.approx(
        1 - ref["fvu"], rel=1e-5
    )
    assert core["sparsity"]["l0"] == pytest.approx(ref["l0"], rel=1e-6)
    assert core["model_performance_preservation"]["ce_loss_with_sae"] == pytest.approx(
        ref["ce_spliced"], rel=1e-5
    )
    assert result.explained_variance == metrics.explained_variance(result.fvu)


def test_an_encoder_core_pass_runs_no_splice(tiny_bert, tokenizer, texts, monkeypatch):
    """Only the forwards an accumulator asks for run: SAEBench core has no downstream
    category for an encoder, so its pass is one clean forward per batch."""
    torch.manual_seed(2)
    sae = TopKSAE(D, 128, top_k=8).eval()
    data = text_batches(tokenizer, texts, n=8)
    forwards = count_forwards(tiny_bert, monkeypatch)
    core = evaluate_core(tiny_bert, POINT, sae, data)
    assert len(forwards) == len(data)
    assert core["model_behavior_preservation"]["kl_div_score"] is None
    monkeypatch.undo()
    both, core_too = evaluate_reconstruction_and_core(tiny_bert, POINT, sae, data, progress=False)
    alone = evaluate_reconstruction(tiny_bert, POINT, sae, data, progress=False)
    assert close(both.to_dict(), alone.to_dict()) and close(core_too, core)
