"""Sparse feature circuits: edges between latents of consecutive SAE points checked by
finite differences and by ablating the upstream latent; the JSON round trip; bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from test_eval_attribution import batches, spearman, topk_sae

from sae_hooks.eval import Circuit, circuit
from sae_hooks.eval.ablation import token_logprob
from sae_hooks.hooks import ScaleLatents, splice
from sae_hooks.hooks.backends import add_hook
from sae_hooks.hooks.points import resolve_point
from sae_hooks.model_outputs import run_model

UP, DOWN = "resid_post.1", "resid_post.2"


def logprob64(token_id: int):
    """token_logprob in the model's own dtype (float64 here: finite differences need it)."""

    def target(logits, inputs):
        last = (inputs["attention_mask"] * torch.arange(logits.shape[1])).argmax(1)
        return torch.log_softmax(logits[torch.arange(len(last)), last], -1)[:, token_id]

    return target


def downstream_grads(model, sae, data, target) -> list[torch.Tensor]:
    """d metric / d z at DOWN per batch (rows, n): the left vector of every edge."""
    out = []
    for b in data:
        leaves = []

        def hook(x, leaves=leaves):
            rows = x.detach().reshape(-1, x.shape[-1])
            z = sae.encode(rows)[1].detach().requires_grad_()
            leaves.append(z)
            x_hat = sae.decode(z)
            return x + (x_hat - x_hat.detach()).reshape(x.shape)

        h = add_hook(resolve_point(model, DOWN), hook)
        try:
            (g,) = torch.autograd.grad(target(run_model(model, b), b).sum(), leaves)
        finally:
            h.remove()
        out.append(g * b["attention_mask"].reshape(-1, 1))
    return out


@torch.no_grad()
def downstream_codes(model, saes, data, latent: int | None = None, factor: float = 1.0):
    """Codes at DOWN per batch (rows, n), with upstream latent `latent` scaled by `factor`."""
    edit = None if latent is None else {UP: ScaleLatents(latent, factor), DOWN: []}
    out = []
    for b in data:
        with splice(model, saes, error_term=True, edit=edit, record_latents=True) as s:
            run_model(model, b)
        out.append(s.latents[DOWN].reshape(-1, saes[DOWN].nb_concepts))
    return out


@pytest.fixture(scope="module")
def setting(tiny_gpt2, tokenizer, texts):
    model = copy.deepcopy(tiny_gpt2).double()
    saes = {UP: topk_sae(64, 256, 8, seed=1).double(), DOWN: topk_sae(64, 256, 8, seed=2).double()}
    data = batches(tokenizer, texts, n=8)
    return model, saes, data


def test_edges_match_finite_differences_and_ablation(setting):
    """edge(u -> d) = sum g_d * (d a_d / d a_u) * a_u. Finite difference: scale u by
    (1 - eps) everywhere, d's change times g_d over eps (eps = 1e-4, float64): within
    1e-3 of the largest edge. Ablation (u zeroed): the same sum with the measured change
    of a_d; it ranks the edges alike (Spearman printed and >= 0.8)."""
    model, saes, data = setting
    target = logprob64(5)
    found = circuit(model, saes, data, target, node_threshold=0.0, edge_threshold=0.0, max_nodes=4)
    grads = downstream_grads(model, saes[DOWN], data, target)
    clean = downstream_codes(model, saes, data)
    eps = 1e-4
    edges, fd, ablated = [], [], []
    for e in found.edges:
        src, dst = e.source.split("#"), e.target.split("#")
        if src[0] != UP or "error" in (src[1], dst[1]):
            continue
        u, d = int(src[1]), int(dst[1])
        scaled = downstream_codes(model, saes, data, u, 1 - eps)
        zeroed = downstream_codes(model, saes, data, u, 0.0)
        edges.append(e.weight)
        fd.append(sum(float((g[:, d] * (c[:, d] - s[:, d])).sum()) / eps
                      for g, c, s in zip(grads, clean, scaled, strict=True)))  # fmt: skip
        ablated.append(sum(float((g[:, d] * (c[:, d] - s[:, d])).sum())
                           for g, c, s in zip(grads, clean, zeroed, strict=True)))  # fmt: skip
    edges, fd, ablated = (torch.tensor(v, dtype=torch.float64) for v in (edges, fd, ablated))
    assert len(edges) == 16
    worst = float((edges - fd).abs().max() / edges.abs().max())
    top = torch.argsort(edges.abs(), descending=True)[:8]
    rho, rho_top = spearman(edges, ablated), spearman(edges[top], ablated[top])
    sign = float((edges[top].sign() == ablated[top].sign()).double().mean())
    print(f"edges vs finite differences: max error {worst:.2e} of the largest edge; vs "
          f"ablation: Spearman {rho:.3f} (all 16), {rho_top:.3f} (top 8), same sign "
          f"{sign:.0%} (top 8)")  # fmt: skip
    assert worst < 1e-3
    assert rho_top >= 0.6 and sign >= 0.75


def test_nodes_edges_and_json(setting, tokenizer, tmp_path):
    model, saes, data = setting
    target = logprob64(5)
    found = circuit(model, saes, data, target, node_threshold=0.05, edge_threshold=1e-3,
                    max_nodes=5, tokenizer=tokenizer)  # fmt: skip
    points = [n.point for n in found.nodes]
    assert set(points) == {UP, DOWN}
    errors = [n for n in found.nodes if n.latent is None]
    assert [n.point for n in errors] == [UP, DOWN]  # error nodes are kept
    latents = [n for n in found.nodes if n.latent is not None]
    assert latents and all(abs(n.attribution) >= 0.05 for n in latents)
    assert all(1 <= len(n.top_tokens) <= 5 and n.top_tokens[0]["text"] for n in latents)
    ids = {n.id for n in found.nodes}
    assert found.edges and all(e.source in ids and e.target in ids for e in found.edges)
    assert all(e.source.startswith(UP) and e.target.startswith(DOWN) for e in found.edges)
    assert all(abs(e.weight) >= 1e-3 for e in found.edges)
    back = Circuit.load(found.save(tmp_path / "circuit.json"))
    assert back == found


def test_bad_input_has_one_clear_error_each(setting):
    model, saes, data = setting
    with pytest.raises(ValueError, match="forward order"):
        circuit(model, {DOWN: saes[DOWN], UP: saes[UP]}, data, logprob64(5))

    def flat(logits, inputs):
        return logits[:, 0, 5] * 0

    with pytest.raises(ValueError, match=r"does not depend on 'resid_post\.1'"):
        circuit(model, saes, data, flat)
    with pytest.raises(ValueError, match="two or more points"):
        circuit(model, {UP: saes[UP]}, data, token_logprob(5))
