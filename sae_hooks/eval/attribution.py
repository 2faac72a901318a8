"""Latent attribution: how much each latent (and each SAE's error) moves a metric.

Attribution patching (Syed et al. 2023; Marks et al. 2024, "Sparse Feature Circuits").
At every spliced point the activation is rebuilt from two nodes, the codes z and the
error e = x - decode(z), as ``x + (decode(z) - decode(z).detach()) + (e - e.detach())``:
exactly x in value (so the model's output is unchanged), while the gradient reaches z
through the decoder, e as the identity, and upstream points straight through (as if
no SAE were there). One forward and one backward give each latent's attribution

    a_i = grad_i * (z_i - baseline_i),   summed over tokens,

a first-order estimate of metric(clean) - metric(z_i set to its baseline): a positive
a_i means that ablating latent i lowers the metric by about a_i. The error node's
attribution is grad_e . (e - e_baseline). Latents plus error sum (exactly) to
grad_x . (x - x_baseline), the linear estimate of the change under ablating the whole
point. ``ig_steps=n`` integrates the gradient along the straight path from the
baseline (integrated gradients, midpoint rule, one point at a time): n forwards and
backwards per point, and the sum over a point's nodes then matches that change to
O(1/n^2).

The metric is a `Target` of concept ablation (token log-prob, class logit, embedding
similarity, or any callable (model output, inputs) -> one value per example) summed
over the examples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from sae_hooks.devices import model_device, sae_device_dtype, to_device
from sae_hooks.hooks.backends import add_hook
from sae_hooks.hooks.points import resolve_point
from sae_hooks.model_outputs import run_model
from sae_hooks.sae.modes import module_mode

Target = Callable[[Tensor, Mapping[str, Tensor]], Tensor]
"""(model output, inputs) -> one value per example: concept ablation's targets
(`eval.ablation.token_logprob`, `class_logit`, `embedding_similarity`) are of this shape."""

Batches = Iterable[Mapping[str, Tensor]]


@dataclass
class PointAttribution:
    """One point's attributions: per latent and for its error node, summed over the
    examples and (``per_example``) per example, examples in data order."""

    point: str
    latents: Tensor
    error: float
    per_example: Tensor | None
    error_per_example: Tensor

    def top(self, k: int) -> list[int]:
        """The k latents with the largest |attribution|, largest first."""
        return torch.argsort(self.latents.abs(), descending=True)[:k].tolist()

    @property
    def total(self) -> float:
        """Latents plus error: the estimate of metric(clean) - metric(point at baseline)."""
        return float(self.latents.sum()) + self.error


@dataclass
class Attribution:
    """What `latent_attribution` returns: one `PointAttribution` per point, in forward
    order, and the clean metric (summed, and per example)."""

    points: dict[str, PointAttribution]
    metric: float
    metric_per_example: Tensor
    baseline: str
    ig_steps: int | None = None
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, point: str) -> PointAttribution:
        return self.points[point]


@dataclass
class _Node:
    """One point's state during a pass: its SAE, the baseline, the leaves of the pass."""

    point: str
    sae: nn.Module
    base_z: Tensor | float = 0.0
    base_e: Tensor | float = 0.0
    alpha: float | None = None  # None: the identity splice; a float: interpolate
    leaves: list[tuple[Tensor, Tensor, Tensor, Tensor]] = field(default_factory=list)
    sums: list[tuple[Tensor, Tensor, bool]] = field(default_factory=list)
    """Per batch (and IG step, step-major): per-example latent and error attributions,
    and whether the gradient was non-zero anywhere."""


def latent_attribution(
    model: nn.Module,
    saes: Mapping[str, nn.Module],
    data: Batches,
    target: Target,
    *,
    baseline: Literal["zero", "mean"] = "zero",
    reference: Batches | None = None,
    ig_steps: int | None = None,
    per_example: bool = True,
) -> Attribution:
    """Each latent's (and each error node's) attribution to ``sum(target)`` over ``data``.

    saes: point -> SAE, in the order the forward reaches the points (several at once
    are attributed in one pass). baseline: "zero" (ablation to 0) or "mean" (each
    latent and the error at their mean over the real tokens of ``reference``, default
    ``data``). ig_steps: integrated gradients with that many steps instead of the plain
    gradient. Raises ValueError for points out of forward order or a metric that does
    not depend on a point (zero gradient everywhere).
    """
    if not isinstance(saes, Mapping) or not saes:
        raise ValueError("latent_attribution takes a non-empty mapping point -> SAE")
    if baseline not in ("zero", "mean"):
        raise ValueError(f"baseline must be 'zero' or 'mean', got {baseline!r}")
    if ig_steps is not None and ig_steps < 1:
        raise ValueError(f"ig_steps must be a positive number of steps or None, got {ig_steps}")
    data = list(data)
    if not data:
        raise ValueError("latent_attribution: the data source yielded no batches")
    nodes = {p: _Node(p, sae) for p, sae in saes.items()}
    with eval_modes(saes.values()):
        if baseline == "mean":
            _set_mean_baselines(model, nodes, data if reference is None else list(reference))
        metric = _accumulate(model, nodes, data, target, grad=ig_steps is None)
        for node in nodes.values() if ig_steps is not None else ():
            for k in range(ig_steps):  # one point at a time; the others are not spliced
                node.alpha = (k + 0.5) / ig_steps
                _accumulate(model, {node.point: node}, data, target)
            node.alpha = None
    points = {p: _summarise(n, ig_steps, per_example) for p, n in nodes.items()}
    return Attribution(
        points=points,
        metric=float(metric.sum()),
        metric_per_example=metric,
        baseline=baseline,
        ig_steps=ig_steps,
    )


def eval_modes(saes: Iterable[nn.Module]):
    """One context that puts every distinct SAE in eval mode and restores its mode after."""
    from contextlib import ExitStack

    stack = ExitStack()
    for sae in {id(s): s for s in saes}.values():
        stack.enter_context(module_mode(sae, training=False))
    return stack


def _accumulate(
    model: nn.Module,
    nodes: Mapping[str, _Node],
    data: list,
    target: Target,
    *,
    grad: bool = True,
) -> Tensor:
    """One forward (and, with ``grad``, backward) per batch with the nodes spliced; each
    node appends its per-example sums to ``sums``. Returns the metric per example."""
    device = model_device(model)
    values = []
    for inputs in data:
        inputs = to_device(inputs, device)
        fired: list[str] = []
        with torch.enable_grad() if grad else torch.no_grad(), _hooked(model, nodes, fired):
            out = target(run_model(model, inputs), inputs)
        check_order(list(nodes), fired)
        if grad and nodes:
            _backward(out, nodes, inputs, target)
        values.append(out.detach().float().cpu())
    return torch.cat(values)


def _hooked(model: nn.Module, nodes: Mapping[str, _Node], fired: list[str]):
    from contextlib import ExitStack

    stack = ExitStack()
    for node in nodes.values():
        loc = resolve_point(model, node.point)
        stack.callback(add_hook(loc, _node_hook(node, fired)).remove)
    return stack


def _node_hook(node: _Node, fired: list[str]) -> Callable[[Tensor], Tensor]:
    """x -> the activation rebuilt from the node's codes and error leaves."""

    def run(x: Tensor) -> Tensor:
        fired.append(node.point)
        sae = node.sae
        d = x.shape[-1]
        if d != sae.input_size:
            raise ValueError(
                f"latent_attribution {node.point!r}: the activation has d={d} but the SAE's "
                f"input_size is {sae.input_size}"
            )
        device, dtype = sae_device_dtype(sae, like=x)
        rows = x.detach().reshape(-1, d).to(device=device, dtype=dtype)
        with torch.no_grad():
            z0 = sae.encode(rows)[1]
            e0 = rows - sae.decode(z0)
        if node.alpha is None:
            z, e = z0.clone().requires_grad_(), e0.clone().requires_grad_()
            x_hat = sae.decode(z)
            delta = (x_hat - x_hat.detach()) + (e - e.detach())
            new = x + delta.reshape(x.shape).to(x.dtype)
        else:  # a point on the straight path from the baseline to the clean activation
            z = (node.base_z + node.alpha * (z0 - node.base_z)).requires_grad_()
            e = (node.base_e + node.alpha * (e0 - node.base_e)).requires_grad_()
            new = (sae.decode(z) + e).reshape(x.shape).to(x.dtype)
        if torch.is_grad_enabled():
            node.leaves.append((z, e, z0, e0))
        return new

    return run


def check_order(given: list[str], fired: list[str]) -> None:
    seen = list(dict.fromkeys(fired))
    missing = [p for p in given if p not in seen]
    if missing:
        raise ValueError(
            f"latent_attribution: the forward never reached {missing}; the model's output "
            "does not depend on them (points after the last layer the output reads?)"
        )
    if seen != given:
        raise ValueError(
            f"latent_attribution: SAEs given at points {given}, but the forward reaches them "
            f"in the order {seen}: list the points in forward order"
        )


def _backward(out: Tensor, nodes: Mapping[str, _Node], inputs, target: Target) -> None:
    """d sum(out) / d each leaf of this batch; the per-example products are folded into
    each node's running sums and the leaves dropped."""
    if not out.requires_grad:
        raise ValueError(
            f"latent_attribution: the metric {getattr(target, '__name__', target)!r} does "
            f"not depend on the points {list(nodes)} (its value has no gradient)"
        )
    leaves = [t for n in nodes.values() for t in n.leaves[-1][:2]]
    grads = torch.autograd.grad(out.float().sum(), leaves, allow_unused=True)
    for i, node in enumerate(nodes.values()):
        z, e, z0, e0 = node.leaves.pop()
        g_z, g_e = grads[2 * i], grads[2 * i + 1]
        g_z = torch.zeros_like(z) if g_z is None else g_z
        g_e = torch.zeros_like(e) if g_e is None else g_e
        batch = out.shape[0]
        mask = token_mask(inputs, batch, z.shape[0], z.device)
        a_z = (g_z * (z0 - node.base_z)).reshape(batch, -1, z.shape[-1]) * mask[..., None]
        a_e = (g_e * (e0 - node.base_e)).sum(-1).reshape(batch, -1) * mask
        node.sums.append(
            (a_z.sum(1).float().cpu(), a_e.sum(1).float().cpu(), bool(g_e.abs().max() > 0))
        )


def token_mask(inputs, batch: int, rows: int, device) -> Tensor:
    """(batch, rows / batch): 1 at real tokens (attention mask) where it lines up."""
    per = rows // batch
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if mask is not None and tuple(mask.shape) == (batch, per):
        return mask.to(device=device, dtype=torch.float32)
    return torch.ones(batch, per, device=device)


def _summarise(node: _Node, ig_steps: int | None, per_example: bool) -> PointAttribution:
    sums = node.sums
    if not any(nonzero for _, _, nonzero in sums):
        raise ValueError(
            f"latent_attribution: the metric does not depend on {node.point!r} (its gradient "
            "there is zero on every token): attribute at a point the metric reads, with a "
            "metric that is not saturated (a log-prob of ~0 has no gradient)"
        )
    steps = 1 if ig_steps is None else ig_steps
    n_batches = len(sums) // steps
    per_z = [sum(s[0] for s in sums[b::n_batches]) / steps for b in range(n_batches)]
    per_e = [sum(s[1] for s in sums[b::n_batches]) / steps for b in range(n_batches)]
    z_all, e_all = torch.cat(per_z), torch.cat(per_e)
    return PointAttribution(
        point=node.point,
        latents=z_all.sum(0),
        error=float(e_all.sum()),
        per_example=z_all if per_example else None,
        error_per_example=e_all,
    )


@torch.no_grad()
def _set_mean_baselines(model: nn.Module, nodes: Mapping[str, _Node], reference: list) -> None:
    """Each node's mean codes and mean error over the real tokens of `reference`."""
    sums: dict[str, list] = {p: [0.0, 0.0, 0] for p in nodes}
    device = model_device(model)

    for inputs in reference:
        inputs = to_device(inputs, device)
        hooks = {}
        for p, node in nodes.items():

            def record(x: Tensor, node=node, inputs=inputs) -> None:
                sae = node.sae
                dev, dtype = sae_device_dtype(sae, like=x)
                rows = x.reshape(-1, x.shape[-1]).to(device=dev, dtype=dtype)
                z = sae.encode(rows)[1]
                e = rows - sae.decode(z)
                mask = token_mask(inputs, x.shape[0], rows.shape[0], dev).reshape(-1, 1)
                acc = sums[node.point]
                acc[0] = acc[0] + (z.float() * mask).sum(0)
                acc[1] = acc[1] + (e.float() * mask).sum(0)
                acc[2] += int(mask.sum())

            hooks[p] = add_hook(resolve_point(model, p), record)
        try:
            run_model(model, inputs)
        finally:
            for h in hooks.values():
                h.remove()
    for p, node in nodes.items():
        zs, es, n = sums[p]
        if n == 0:
            raise ValueError("baseline='mean': the reference data has no real tokens")
        dtype = sae_device_dtype(node.sae)[1]
        node.base_z, node.base_e = (zs / n).to(dtype), (es / n).to(dtype)
