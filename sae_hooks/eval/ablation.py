"""Concept ablation: find the latents that carry a concept, remove them, measure the effect.

A concept is given by examples: positives that show it and negatives that do not.
Latents are ranked by how much more they fire on positives (mean activation per
document, pooled over its real tokens; ``select="difference"``) or by their attribution
to the target on the positives (gradient x activation, `eval/attribution.py`;
``select="attribution"``: the latents whose removal should lower the target most).
Dense latents (firing on more than `metrics.DENSE_FRACTION` of the examples' tokens)
are flagged and, unless ``keep_dense``, left out of the selection and of the random
control. The top m are zero-ablated with the SAE
spliced in *with its error term*, so that only the ablation moves the model; the
effect on a target (a token's log-prob, a class logit, an embedding similarity)
is compared with ablating m random latents drawn from those that fire on the
positives at all — a control that, unlike never-firing latents, could matter.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sae_hooks import metrics
from sae_hooks.devices import model_device, sae_device_dtype, to_device
from sae_hooks.eval.attribution import Batches, Target, latent_attribution
from sae_hooks.hooks import ZeroLatents, capture_batch, splice
from sae_hooks.model_outputs import run_model
from sae_hooks.sae.modes import eval_mode

SELECTIONS = ("difference", "attribution")


def token_logprob(token_id: int) -> Target:
    """LM target: log p(token_id) as the next token after each document's last real token."""

    def target(logits: Tensor, inputs: Mapping[str, Tensor]) -> Tensor:
        mask = inputs.get("attention_mask")
        b, t = logits.shape[:2]
        if mask is None:
            last = torch.full((b,), t - 1, device=logits.device)
        else:  # works for left and right padding: the last position with mask 1
            m = mask.to(logits.device)
            last = (m * torch.arange(t, device=m.device)).argmax(1)
        if not 0 <= token_id < logits.shape[-1]:
            raise ValueError(
                f"token_logprob({token_id}): the model's output has {logits.shape[-1]} values "
                f"per position (0..{logits.shape[-1] - 1}): a language model's vocabulary, "
                "or an encoder's hidden size (an encoder has no next token to score: use "
                "embedding_similarity)"
            )
        logp = torch.log_softmax(logits[torch.arange(b, device=logits.device), last].float(), -1)
        return logp[:, token_id]

    return target


def class_logit(index: int) -> Target:
    """Classifier target: the logit of one class."""
    return lambda logits, inputs: logits[:, index].float()


def embedding_similarity(reference: Tensor) -> Target:
    """Encoder target: cosine between each mean-pooled embedding and a reference vector."""

    def target(hidden: Tensor, inputs: Mapping[str, Tensor]) -> Tensor:
        pooled = metrics.mean_pool(hidden, inputs.get("attention_mask"))
        return metrics.cosine(pooled, reference.to(pooled.device).expand_as(pooled))

    return target


def mean_latents(model: nn.Module, point: str, sae: nn.Module, data: Batches) -> Tensor:
    """(n_docs, nb_concepts): each document's latents averaged over its real tokens, with
    the SAE in eval mode (its mode is restored after)."""
    return pooled_latents(model, point, sae, data)[0]


@torch.no_grad()
def pooled_latents(
    model: nn.Module, point: str, sae: nn.Module, data: Batches
) -> tuple[Tensor, metrics.FiringStats]:
    """`mean_latents` and the per-latent firing counts over the same real tokens."""
    sae_device, sae_dtype = sae_device_dtype(sae)
    firing = metrics.FiringStats(sae.nb_concepts)
    pooled = []
    device = model_device(model)
    for inputs in data:
        batch = capture_batch(model, point, to_device(inputs, device))
        with eval_mode(sae):
            _, z = sae.encode(batch.acts[point].to(device=sae_device, dtype=sae_dtype))
        firing.add_counts((z != 0).sum(0).cpu(), z.shape[0])
        docs = batch.doc_index - batch.doc_index.min()
        n = int(docs.max()) + 1
        sums = torch.zeros(n, z.shape[1], device=z.device).index_add_(
            0, docs.to(z.device), z.float()
        )
        counts = torch.bincount(docs, minlength=n).clamp_min(1).to(z.device)
        pooled.append(sums / counts[:, None])
    if not pooled:
        raise ValueError("mean_latents: the data source yielded no batches")
    return torch.cat(pooled), firing


def rank_concept_latents(positive: Tensor, negative: Tensor) -> Tensor:
    """Latent ids sorted by mean activation on positives minus on negatives, best first."""
    return torch.argsort(positive.mean(0) - negative.mean(0), descending=True)


@torch.no_grad()
def _target_values(
    model: nn.Module, point: str, sae: nn.Module, data: Sequence, target: Target, latents
) -> Tensor:
    edit = None if latents is None else ZeroLatents(list(latents))
    values = []
    device = model_device(model)
    with splice(model, point, sae, error_term=True, edit=edit):
        for inputs in data:
            inputs = to_device(inputs, device)
            values.append(target(run_model(model, inputs), inputs).float().cpu())
    return torch.cat(values)


@dataclass
class AblationResult:
    """Effect of ablating the concept latents vs random ones, on positives and negatives."""

    point: str
    m: int
    latents: list[int]
    scores: list[float]
    clean_positive: float
    clean_negative: float
    concept_positive: float
    concept_negative: float
    random_positive: list[float]
    random_negative: list[float]
    seed: int
    select: str = "difference"
    density: list[float] = field(default_factory=list)
    """Firing fraction of each selected latent over the examples' real tokens."""
    dense: list[int] = field(default_factory=list)
    """Dense latents that ranked in the top m: left out (or kept, with keep_dense)."""
    dense_above: float = metrics.DENSE_FRACTION
    keep_dense: bool = False

    @property
    def effect(self) -> float:
        """Change of the target on positives when the concept latents are ablated."""
        return self.concept_positive - self.clean_positive

    @property
    def random_effect(self) -> tuple[float, float]:
        """Mean and standard deviation of the change under random ablations."""
        t = torch.tensor(self.random_positive) - self.clean_positive
        return t.mean().item(), (t.std().item() if t.numel() > 1 else 0.0)

    def rows(self) -> list[tuple[str, float, float]]:
        r_pos = torch.tensor(self.random_positive).mean().item()
        r_neg = torch.tensor(self.random_negative).mean().item()
        return [
            ("clean (SAE + error term)", self.clean_positive, self.clean_negative),
            (
                f"ablate top {self.m} concept latents (by {self.select})",
                self.concept_positive,
                self.concept_negative,
            ),
            (f"ablate {self.m} random latents (mean of {len(self.random_positive)})", r_pos, r_neg),
        ]

    def table(self) -> str:
        """A markdown table: the target on positives and negatives under each condition."""
        lines = ["| condition | target on positives | target on negatives |", "|---|---|---|"]
        lines += [f"| {name} | {p:.4f} | {n:.4f} |" for name, p, n in self.rows()]
        mean, std = self.random_effect
        lines.append("")
        lines.append(
            f"effect on positives: concept {self.effect:+.4f}, random {mean:+.4f} ± {std:.4f}; "
            f"latents {self.latents}"
        )
        if self.dense:
            what = "kept" if self.keep_dense else "left out"
            lines.append(
                f"dense latents (firing on > {self.dense_above:.0%} of tokens) among the top "
                f"{self.m}, {what}: {self.dense}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["effect"] = self.effect
        d["random_effect_mean"], d["random_effect_std"] = self.random_effect
        return d

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), indent=2, **kw)

    def plot(self, path) -> None:
        """A bar chart of the effect on positives: concept vs each random draw (needs matplotlib)."""
        from matplotlib.figure import Figure  # a bare Figure: no pyplot, no global backend

        random = [v - self.clean_positive for v in self.random_positive]
        fig = Figure(figsize=(5, 3))
        ax = fig.subplots()
        ax.bar(["concept"], [self.effect], color="tab:red")
        ax.bar([f"random {i}" for i in range(len(random))], random, color="tab:gray")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_ylabel("change of target on positives")
        ax.tick_params(axis="x", rotation=60)
        fig.tight_layout()
        fig.savefig(path, dpi=120)


def concept_ablation(
    model: nn.Module,
    point: str,
    sae: nn.Module,
    positive: Batches,
    negative: Batches,
    target: Target,
    *,
    m: int = 5,
    n_random: int = 8,
    seed: int = 0,
    select: str = "difference",
    keep_dense: bool = False,
    dense_above: float = metrics.DENSE_FRACTION,
    progress: bool = False,
) -> AblationResult:
    """Ablate the m latents ranked first by ``select`` and m random firing ones.

    select: "difference" (mean activation on positives minus on negatives) or
    "attribution" (summed over the positives: the latents whose ablation should lower the
    target most). Latents firing on more than ``dense_above`` of the examples' tokens are
    flagged and, unless ``keep_dense``, skipped by the selection and the random control.
    progress: a bar over the passes (2 to rank, 4 + 2 * n_random to measure)."""
    from tqdm.auto import tqdm

    _check_ablation_args(sae, m, n_random, select)
    positive, negative = list(positive), list(negative)
    bar = tqdm(total=6 + 2 * n_random, desc="ablation", unit="pass", disable=not progress)
    with eval_mode(sae), bar:
        pos_z, score, density = _scores(model, point, sae, positive, negative, target, select)
        bar.update(2)
        order = torch.argsort(score, descending=True)
        is_dense = density > dense_above
        top = _top_latents(order, is_dense, m, keep_dense)
        excluded = None if keep_dense else torch.nonzero(is_dense).flatten()
        draws = _random_draws(pos_z, order, torch.tensor(top), m, n_random, seed, excluded)

        def mean_on(data, latents) -> float:
            value = _target_values(model, point, sae, data, target, latents).mean().item()
            bar.update(1)
            return value

        return AblationResult(
            point=point,
            m=m,
            latents=top,
            scores=score[top].tolist(),
            clean_positive=mean_on(positive, None),
            clean_negative=mean_on(negative, None),
            concept_positive=mean_on(positive, top),
            concept_negative=mean_on(negative, top),
            random_positive=[mean_on(positive, d) for d in draws],
            random_negative=[mean_on(negative, d) for d in draws],
            seed=seed,
            select=select,
            density=density[top].tolist(),
            dense=[i for i in order[:m].tolist() if is_dense[i]],
            dense_above=dense_above,
            keep_dense=keep_dense,
        )


def _check_ablation_args(sae: nn.Module, m: int, n_random: int, select: str) -> None:
    if m <= 0 or m > sae.nb_concepts:
        raise ValueError(f"m must be in 1..{sae.nb_concepts} (the SAE's latents), got {m}")
    if n_random < 1:
        raise ValueError(f"n_random must be >= 1, got {n_random}")
    if select not in SELECTIONS:
        raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")


def _scores(
    model: nn.Module,
    point: str,
    sae: nn.Module,
    positive: list,
    negative: list,
    target: Target,
    select: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """(positives' pooled latents, each latent's score under `select`, its firing fraction
    over the real tokens of positives and negatives)."""
    pos_z, pos_firing = pooled_latents(model, point, sae, positive)
    neg_z, neg_firing = pooled_latents(model, point, sae, negative)
    if select == "attribution":
        found = latent_attribution(model, {point: sae}, positive, target, per_example=False)
        score = found[point].latents
    else:
        score = pos_z.mean(0) - neg_z.mean(0)
    density = (pos_firing.counts + neg_firing.counts).float()
    return pos_z, score, density / max(pos_firing.rows + neg_firing.rows, 1)


def _top_latents(order: Tensor, is_dense: Tensor, m: int, keep_dense: bool) -> list[int]:
    """The first m of `order`, dense latents skipped unless keep_dense (or too few others)."""
    if keep_dense:
        return order[:m].tolist()
    sparse = order[~is_dense[order]]
    if sparse.numel() >= m:
        return sparse[:m].tolist()
    warnings.warn(
        f"concept ablation: only {sparse.numel()} latents are not dense; the top {m} "
        "include dense ones (see AblationResult.dense)",
        stacklevel=3,
    )
    return torch.cat([sparse, order[is_dense[order]]])[:m].tolist()


def _random_draws(
    pos_z: Tensor,
    order: Tensor,
    top: Tensor,
    m: int,
    n_random: int,
    seed: int,
    excluded: Tensor | None = None,
) -> list[list[int]]:
    """n_random sets of m latents that fire on the positives and are neither in `top` nor
    `excluded` (dense); any of the others when too few remain: the control ablations."""
    active = torch.nonzero(pos_z.amax(0) > 0).flatten()
    pool = active[~torch.isin(active, top)]
    if excluded is not None:
        pool = pool[~torch.isin(pool, excluded)]
    if pool.numel() < m:  # too few firing latents: draw from all the others
        pool = order[~torch.isin(order, top)]
    gen = torch.Generator().manual_seed(seed)
    return [pool[torch.randperm(pool.numel(), generator=gen)[:m]].tolist() for _ in range(n_random)]
