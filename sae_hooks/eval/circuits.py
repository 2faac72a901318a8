"""Sparse feature circuits: nodes at several SAE points, edges between consecutive ones.

Marks et al. 2024 ("Sparse Feature Circuits"), zero baseline. Every point's activation
is split into its SAE's codes z and its error e = x - decode(z), each a node. A node's
attribution is `latent_attribution`'s, grad x activation summed over real tokens. The
edge from node u at point p_i to node d at the next point p_{i+1} is

    edge(u -> d) = sum over tokens of  (d metric / d a_d)  *  (d a_d / d a_u)  *  a_u,

computed per batch by one backward of  sum(stop_grad(d metric / d a_d) * a_d)  to the
leaves of p_i: the downstream gradient is held fixed (the stop-gradient of the paper),
and a_d is the downstream SAE's code (or error) recomputed with its graph from p_i, so
d a_d / d a_u is the model's Jacobian from p_i to p_{i+1} through the downstream encoder
with its active set frozen (TopK, BatchTopK, JumpReLU and ReLU codes all pass the
gradient on the latents that fired). Gradients stop at p_i's leaves, so an edge covers
every path from p_i to p_{i+1} and nothing upstream of p_i. Edges into a node sum, over
its upstream nodes, to the first-order effect of ablating p_i on that node's term.

Nodes are pruned to |attribution| >= node_threshold (error nodes are always kept: they
say how much the SAEs leave unexplained), edges to |weight| >= edge_threshold.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sae_hooks.atomic import write_text_atomic
from sae_hooks.devices import model_device, sae_device_dtype, to_device
from sae_hooks.eval.attribution import (
    Attribution,
    Batches,
    Target,
    eval_modes,
    latent_attribution,
    token_mask,
)
from sae_hooks.hooks.backends import add_hook
from sae_hooks.hooks.points import resolve_point
from sae_hooks.model_outputs import run_model

ERROR = "error"
FORMAT = "sae-hooks circuit 1"


@dataclass
class CircuitNode:
    """A latent (``latent`` its index) or the error node (``latent`` None) of a point."""

    point: str
    latent: int | None
    attribution: float
    top_tokens: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return node_id(self.point, self.latent)


@dataclass
class CircuitEdge:
    source: str
    target: str
    weight: float


@dataclass
class Circuit:
    """What `circuit` returns; `to_json` / `save` / `load` give its JSON form."""

    points: list[str]
    nodes: list[CircuitNode]
    edges: list[CircuitEdge]
    metric: float
    node_threshold: float
    edge_threshold: float
    concept: str | None = None
    target: str | None = None
    notes: list[str] = field(default_factory=list)

    def node(self, point: str, latent: int | None) -> CircuitNode:
        key = node_id(point, latent)
        for n in self.nodes:
            if n.id == key:
                return n
        raise KeyError(f"no node {key} in the circuit")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for n, entry in zip(self.nodes, data["nodes"], strict=True):
            entry["id"] = n.id
        return {"format": FORMAT, **data}

    def save(self, path: str | os.PathLike) -> Path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return write_text_atomic(path, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Circuit:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a circuit file (format {data.get('format')!r}, want {FORMAT!r})")
        fields = {k: v for k, v in data.items() if k not in ("format", "nodes", "edges")}
        nodes = [CircuitNode(**{k: v for k, v in n.items() if k != "id"}) for n in data["nodes"]]
        return cls(nodes=nodes, edges=[CircuitEdge(**e) for e in data["edges"]], **fields)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Circuit:
        return cls.from_json(json.loads(Path(path).read_text()))


def node_id(point: str, latent: int | None) -> str:
    return f"{point}#{ERROR if latent is None else latent}"


def circuit(
    model: nn.Module,
    saes: Mapping[str, nn.Module],
    data: Batches,
    target: Target,
    *,
    node_threshold: float = 0.1,
    edge_threshold: float = 0.01,
    max_nodes: int | None = None,
    tokenizer: Any = None,
    n_tokens: int = 5,
) -> Circuit:
    """The circuit of SAE latents that carries ``sum(target)`` over ``data``.

    saes: point -> SAE for two or more points in forward order (edges join consecutive
    points). Nodes: latents with |attribution| >= node_threshold (at most ``max_nodes``
    per point, largest first) and every point's error node; edges between kept nodes of
    consecutive points with |weight| >= edge_threshold. Each latent node carries the
    ``n_tokens`` tokens where it fired most (text with ``tokenizer``). Raises ValueError
    for fewer than two points, points out of forward order, or a metric with no gradient
    at a point.
    """
    if not isinstance(saes, Mapping) or len(saes) < 2:
        got = list(saes) if isinstance(saes, Mapping) else type(saes).__name__
        raise ValueError(f"circuit needs SAEs at two or more points (point -> SAE), got {got}")
    data = list(data)
    found = latent_attribution(model, saes, data, target, per_example=False)
    kept = _kept_latents(found, node_threshold, max_nodes)
    pass_ = _EdgePass(model, saes, kept, n_tokens)
    with eval_modes(saes.values()):
        for inputs in data:
            pass_.run(to_device(inputs, model_device(model)), target)
    nodes = [
        CircuitNode(p, latent, _attribution(found, p, latent), pass_.tops(p, latent, tokenizer))
        for p, latents in kept.items()
        for latent in [*latents, None]
    ]
    edges = [
        CircuitEdge(src, dst, w)
        for (src, dst), w in sorted(pass_.edges.items(), key=lambda kv: -abs(kv[1]))
        if abs(w) >= edge_threshold
    ]
    return Circuit(
        points=list(saes),
        nodes=nodes,
        edges=edges,
        metric=found.metric,
        node_threshold=node_threshold,
        edge_threshold=edge_threshold,
        concept=None,
        target=getattr(target, "__name__", None),
    )


def _kept_latents(
    found: Attribution, threshold: float, max_nodes: int | None
) -> dict[str, list[int]]:
    kept = {}
    for point, attr in found.points.items():
        order = torch.argsort(attr.latents.abs(), descending=True)
        above = [int(i) for i in order if float(attr.latents[i].abs()) >= threshold]
        kept[point] = above if max_nodes is None else above[:max_nodes]
    return kept


def _attribution(found: Attribution, point: str, latent: int | None) -> float:
    attr = found[point]
    return attr.error if latent is None else float(attr.latents[latent])


@dataclass
class _Site:
    """One point during an edge pass: codes and error with their graph from upstream,
    and the leaves the next point's edges backpropagate to."""

    z_graph: Tensor
    e_graph: Tensor
    z: Tensor
    e: Tensor


class _EdgePass:
    """Per batch: one forward with leaves at every point, the node gradients, then one
    backward per kept downstream node to the previous point's leaves."""

    def __init__(self, model, saes, kept: Mapping[str, list[int]], n_tokens: int) -> None:
        self.model, self.saes, self.kept, self.n_tokens = model, saes, kept, n_tokens
        self.edges: dict[tuple[str, str], float] = {}
        self.top: dict[str, list[tuple[float, int, str]]] = {}

    def run(self, inputs: Mapping[str, Tensor], target: Target) -> None:
        sites: dict[str, _Site] = {}
        hooks = [
            add_hook(resolve_point(self.model, p), self._hook(p, sae, sites))
            for p, sae in self.saes.items()
        ]
        try:
            with torch.enable_grad():
                out = target(run_model(self.model, inputs), inputs)
        finally:
            for h in hooks:
                h.remove()
        points = list(self.saes)
        site_list = [sites[p] for p in points]
        leaves = [t for s in site_list for t in (s.z, s.e)]
        grads = torch.autograd.grad(out.float().sum(), leaves, retain_graph=True, allow_unused=True)
        batch = out.shape[0]
        masks = [token_mask(inputs, batch, s.z.shape[0], s.z.device).reshape(-1) for s in site_list]
        for i, (up, down) in enumerate(itertools.pairwise(points)):
            left = (grads[2 * i + 2], grads[2 * i + 3])
            self._edges(up, down, sites[up], sites[down], left, masks[i], masks[i + 1])
        for p, s, mask in zip(points, site_list, masks, strict=True):
            self._record_tops(p, s.z.detach(), inputs, mask)

    def _hook(self, point: str, sae: nn.Module, sites: dict[str, _Site]):
        def run(x: Tensor) -> Tensor:
            device, dtype = sae_device_dtype(sae, like=x)
            rows = x.reshape(-1, x.shape[-1]).to(device=device, dtype=dtype)
            z_graph = sae.encode(rows)[1]
            e_graph = rows - sae.decode(z_graph)
            z, e = z_graph.detach().requires_grad_(), e_graph.detach().requires_grad_()
            sites[point] = _Site(z_graph, e_graph, z, e)
            x_hat = sae.decode(z)
            delta = (x_hat - x_hat.detach()) + (e - e.detach())
            return x + delta.reshape(x.shape).to(x.dtype)

        return run

    def _edges(self, up, down, s_up: _Site, s_down: _Site, left, mask_up, mask_down) -> None:
        """Edges from every node of `up` into each kept node of `down`."""
        g_z, g_e = (
            torch.zeros_like(t) if g is None else g for g, t in zip(left, (s_down.z, s_down.e))
        )
        kept_up = self.kept[up]
        index = torch.tensor(kept_up, dtype=torch.long, device=s_up.z.device)
        for latent in [*self.kept[down], None]:
            if latent is None:
                term = (g_e.detach() * s_down.e_graph).sum(-1)
            else:
                term = g_z[:, latent].detach() * s_down.z_graph[:, latent]
            term = (term * mask_down).sum()
            if not term.requires_grad:
                continue
            gz, ge = torch.autograd.grad(
                term, [s_up.z, s_up.e], retain_graph=True, allow_unused=True
            )
            weights = torch.zeros(len(kept_up) + 1, dtype=torch.float64)
            if gz is not None:
                per = gz.index_select(1, index) * s_up.z.detach().index_select(1, index)
                weights[:-1] = (per * mask_up[:, None]).sum(0).double().cpu()
            if ge is not None:
                weights[-1] = float(((ge * s_up.e.detach()).sum(-1) * mask_up).sum())
            dst = node_id(down, latent)
            for src_latent, w in zip([*kept_up, None], weights.tolist(), strict=True):
                key = (node_id(up, src_latent), dst)
                self.edges[key] = self.edges.get(key, 0.0) + w

    def _record_tops(self, point: str, z: Tensor, inputs, mask: Tensor) -> None:
        ids = inputs.get("input_ids") if isinstance(inputs, Mapping) else None
        flat = ids.reshape(-1) if ids is not None and ids.numel() == z.shape[0] else None
        for latent in self.kept[point]:
            values = z[:, latent].float() * mask
            k = min(self.n_tokens, values.numel())
            best = self.top.setdefault(node_id(point, latent), [])
            for v, row in zip(*values.topk(k), strict=True):
                if float(v) > 0:
                    best.append((float(v), -1 if flat is None else int(flat[row]), ""))
            best.sort(key=lambda t: -t[0])
            del best[self.n_tokens * 4 :]

    def tops(self, point: str, latent: int | None, tokenizer: Any) -> list[dict[str, Any]]:
        """The node's strongest activations, one per distinct token, strongest first."""
        if latent is None:
            return []
        out, seen = [], set()
        for value, token, _ in self.top.get(node_id(point, latent), []):
            if token in seen:
                continue
            seen.add(token)
            text = tokenizer.decode([token]) if tokenizer is not None and token >= 0 else None
            out.append({"token": token, "text": text, "activation": round(value, 5)})
            if len(out) == self.n_tokens:
                break
        return out
