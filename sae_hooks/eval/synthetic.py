"""Synthetic activations with a known dictionary, and how well an SAE recovers it.

In the spirit of SynthSAEBench: x = sum_i c_i f_i over unit-norm true features f_i,
where feature i fires with its own probability (Zipf-skewed frequencies), some
features are children that fire only with their parent (hierarchy), and firing
is correlated through a low-rank Gaussian copula. Because the dictionary is
known, recovery is measured directly:

- mean max-cosine (MMCS): for each true feature, the best cosine with any SAE atom;
- MCC: mean |cosine| of a one-to-one (greedy) matching of true features to atoms;
- F1 per true feature: the matched latent's firing against the feature's firing
  (precision = P(feature | latent fires), recall = P(latent fires | feature));
- absorption: a child feature's firing that its parent's latent misses while the
  child's latent fires (the parent's direction "absorbed" into the child latent).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from sae_hooks import metrics
from sae_hooks.sae.modes import eval_mode


@dataclass
class SyntheticFeatures:
    """A known dictionary and the law of its codes; `sample(n)` draws (x, codes)."""

    atoms: Tensor
    """(n_features, d) unit-norm true feature directions."""
    probs: Tensor
    """(n_features,) marginal firing probability of a root feature; for a child, its
    probability of firing given that its parent fires."""
    parent: Tensor
    """(n_features,) long: the parent feature's index, -1 for a root feature."""
    mixing: Tensor | None = None
    """(n_features, rank) loadings of the Gaussian copula that correlates firing; None
    for independent firing."""
    magnitude_std: float = 0.25
    """Code magnitudes are |N(1, magnitude_std^2)|."""
    seed: int = 0

    @property
    def d(self) -> int:
        return self.atoms.shape[1]

    @property
    def n_features(self) -> int:
        return self.atoms.shape[0]

    @torch.no_grad()
    def sample(self, n: int, *, seed: int | None = None) -> tuple[Tensor, Tensor]:
        """(x (n, d), codes (n, n_features)) drawn with the given seed (default: self.seed)."""
        gen = torch.Generator().manual_seed(self.seed if seed is None else seed)
        fires = correlated_firing(self.probs, self.mixing, n, gen)
        roots = self.parent < 0
        if not roots.all():  # a child fires only with its parent (one level deep)
            child = ~roots
            fires[:, child] &= fires[:, self.parent[child]]
        mags = (1 + self.magnitude_std * torch.randn(n, self.n_features, generator=gen)).abs()
        codes = fires * mags
        return codes @ self.atoms, codes

    def sample_x(self, n: int, *, seed: int | None = None) -> Tensor:
        """(n, d) rows only (a large world draws them in chunks to spare the codes)."""
        return self.sample(n, seed=seed)[0]


def correlated_firing(probs: Tensor, mixing: Tensor | None, n: int, gen: torch.Generator) -> Tensor:
    """(n, len(probs)) Bernoulli(probs) firing; correlated through a Gaussian copula
    g = mixing @ eps + noise when `mixing` is given (each marginal stays Bernoulli(p))."""
    if mixing is None:
        return torch.rand(n, probs.numel(), generator=gen) < probs
    rank = mixing.shape[1]
    g = torch.randn(n, rank, generator=gen) @ mixing.T
    g = g + torch.randn(n, probs.numel(), generator=gen) * (1 - mixing.pow(2).sum(1)).sqrt()
    cut = torch.special.ndtri(probs.clamp(1e-6, 1 - 1e-6))
    return g < cut


def uniform_features(
    d: int = 64, n_features: int = 256, active: float = 4.0, seed: int = 0
) -> SyntheticFeatures:
    """Independent features of equal frequency, `active` of them per row on average
    (the recovery test of issue 20: d = 64, 256 atoms, ~4 active)."""
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(n_features, d, generator=gen), dim=-1)
    probs = torch.full((n_features,), active / n_features)
    return SyntheticFeatures(atoms, probs, torch.full((n_features,), -1), seed=seed)


def benchmark_features(
    d: int = 64,
    n_features: int = 256,
    active: float = 5.0,
    *,
    zipf: float = 0.5,
    n_parents: int = 16,
    children_per_parent: int = 3,
    child_prob: float = 0.3,
    correlation_rank: int = 8,
    correlation: float = 0.3,
    seed: int = 0,
) -> SyntheticFeatures:
    """Frequency skew (p_i ~ (i+1)^-zipf), a hierarchy of `n_parents` parents with
    `children_per_parent` children each, and copula-correlated firing; scaled so a
    row holds about `active` features."""
    if n_parents * (1 + children_per_parent) > n_features:
        raise ValueError(
            f"n_parents * (1 + children_per_parent) = {n_parents * (1 + children_per_parent)} "
            f"exceeds n_features={n_features}"
        )
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(n_features, d, generator=gen), dim=-1)
    parent = torch.full((n_features,), -1)
    n_roots = n_features - n_parents * children_per_parent
    children = torch.arange(n_roots, n_features)
    parent[children] = torch.arange(n_parents).repeat_interleave(children_per_parent)
    weights = (torch.arange(n_roots) + 1.0).pow(-zipf)
    weights = weights[torch.randperm(n_roots, generator=gen)]
    weights[:n_parents] = weights.max()  # parents are among the most frequent features
    # expected active: sum root p + sum_parents p_parent * children * child_prob
    per_weight = weights.sum() + weights[:n_parents].sum() * children_per_parent * child_prob
    root_probs = (weights * active / per_weight).clamp(max=0.5)
    probs = torch.cat([root_probs, torch.full((n_features - n_roots,), child_prob)])
    mixing = None
    if correlation_rank > 0 and correlation > 0:
        raw = torch.randn(n_features, correlation_rank, generator=gen)
        mixing = math.sqrt(correlation) * torch.nn.functional.normalize(raw, dim=-1)
    return SyntheticFeatures(atoms, probs, parent, mixing, seed=seed)


# --------------------------------------------------------------------- recovery


def _atoms(sae: torch.nn.Module) -> Tensor:
    return torch.nn.functional.normalize(sae.get_dictionary().detach().float().cpu(), dim=-1)


def max_cosine(true_atoms: Tensor, atoms: Tensor) -> Tensor:
    """(n_true,) best cosine of each true atom with any of `atoms` (both row-normalised)."""
    return (true_atoms @ atoms.T).max(dim=1).values


@torch.no_grad()
def mean_max_cosine(features: SyntheticFeatures | Tensor, sae: torch.nn.Module) -> float:
    """Mean over true features of the best cosine with any SAE atom (MMCS)."""
    true = features.atoms if isinstance(features, SyntheticFeatures) else features
    return float(max_cosine(true, _atoms(sae)).mean())


def match(true_atoms: Tensor, atoms: Tensor) -> tuple[Tensor, Tensor]:
    """One-to-one matching of true atoms to SAE atoms by |cosine|, greedily: the best
    remaining pair first (within a few per cent of the Hungarian optimum when most
    features are recovered; no scipy needed). Computed in rounds that take every pair
    that is the best of both its row and its column at once (the same matching as one
    pair at a time, without ties), so thousands of features match in seconds.
    Returns (true idx, atom idx), in the order greedy would pick them."""
    cos = (true_atoms @ atoms.T).abs().clone()
    n = min(cos.shape)
    rows, cols, vals = [], [], []
    while sum(r.numel() for r in rows) < n:
        best_col = cos.argmax(dim=1)
        best_row = cos.argmax(dim=0)
        r = (best_row[best_col] == torch.arange(cos.shape[0])).nonzero().flatten()
        r = r[cos[r, best_col[r]] >= 0]
        c = best_col[r]
        rows.append(r)
        cols.append(c)
        vals.append(cos[r, c].clone())
        cos[r, :] = -1.0
        cos[:, c] = -1.0
    order = torch.cat(vals).argsort(descending=True, stable=True)
    return torch.cat(rows)[order][:n], torch.cat(cols)[order][:n]


@torch.no_grad()
def recovery(
    features: SyntheticFeatures, sae: torch.nn.Module, *, rows: int = 8192, seed: int = 12345
) -> dict[str, float]:
    """MMCS, MCC, mean F1 and absorption of `sae` against the true features, on `rows`
    fresh held-out rows (drawn with `seed`, not the training seed)."""
    true, atoms = features.atoms, _atoms(sae)
    ti, li = match(true, atoms)
    cos = (true[ti] * atoms[li]).sum(-1)
    x, codes = features.sample(rows, seed=seed)
    with eval_mode(sae):
        z = sae.encode(x.to(_device(sae)))[1].float().cpu()
    truth = codes[:, ti] > 0
    fired = z[:, li] != 0
    both = (truth & fired).sum(0).float()
    precision = both / fired.sum(0).clamp_min(1)
    recall = both / truth.sum(0).clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    present = truth.any(0)
    out = {
        "mmcs": float(max_cosine(true, atoms).mean()),
        "mcc": float(cos.abs().mean()),
        "f1": float(f1[present].mean()) if present.any() else float("nan"),
        "l0": float(metrics.l0(z)),
        "fvu": _fvu(sae, x),
    }
    out.update(absorption(features, codes, z, ti, li))
    return out


def absorption(
    features: SyntheticFeatures, codes: Tensor, z: Tensor, true_idx: Tensor, latent_idx: Tensor
) -> dict[str, float]:
    """Share of (parent & child) rows where the parent's matched latent stays silent while
    the child's fires (the child latent absorbed the parent), and the share of parent
    rows its latent misses at all. NaN without a hierarchy."""
    latent_of = torch.full((features.n_features,), -1)
    latent_of[true_idx] = latent_idx
    child = (features.parent >= 0).nonzero().flatten()
    if child.numel() == 0:
        return {"absorption": float("nan"), "parent_recall": float("nan")}
    absorbed = total = parent_missed = parent_rows = 0
    for c in child.tolist():
        p = int(features.parent[c])
        lp, lc = int(latent_of[p]), int(latent_of[c])
        rows = (codes[:, c] > 0) & (codes[:, p] > 0)
        total += int(rows.sum())
        absorbed += int((rows & (z[:, lp] == 0) & (z[:, lc] != 0)).sum())
    for p in features.parent[child].unique().tolist():
        on = codes[:, p] > 0
        parent_rows += int(on.sum())
        parent_missed += int((on & (z[:, int(latent_of[p])] == 0)).sum())
    return {
        "absorption": absorbed / max(total, 1),
        "parent_recall": 1 - parent_missed / max(parent_rows, 1),
    }


def _device(sae: torch.nn.Module) -> torch.device:
    return next(sae.parameters()).device


def _fvu(sae: torch.nn.Module, x: Tensor) -> float:
    with eval_mode(sae):
        x_hat = sae(x.to(_device(sae))).x_hat.float().cpu()
    return float(metrics.fvu(x, x_hat))


# --------------------------------------------------------------------- the benchmark


def sparsity_fields(architecture: str, l0: float) -> dict[str, float | int]:
    """The TrainConfig field that asks `architecture` for `l0` codes per row: k_per_token
    for a variant with a top-k budget, target_l0 for a penalised one, nothing otherwise."""
    from sae_hooks.sae import SAE_REGISTRY

    cls = SAE_REGISTRY[architecture]
    if cls.rows_per_budget(1) is not None:
        return {"k_per_token": max(1, round(l0))}
    if cls.penalty_field is not None:
        return {"target_l0": float(l0)}
    return {}


def train_on_synthetic(
    architecture: str,
    features: SyntheticFeatures,
    run_dir: str,
    *,
    l0: float,
    steps: int = 600,
    batch_size: int = 512,
    rows: int = 200_000,
    seed: int = 0,
    **overrides: object,
) -> torch.nn.Module:
    """Train `architecture` at its DEFAULT settings (only the sparsity target, run length
    and batch size given) on rows drawn from `features`."""
    from sae_hooks.train import TrainConfig, train

    x = features.sample_x(rows, seed=features.seed + 1 + seed)
    fields = {
        "log_every": max(steps // 10, 1),
        "val_every": 0,
        "checkpoint_every": 0,
        **sparsity_fields(architecture, l0),
        **overrides,  # any field, including those above
    }
    config = TrainConfig(
        architecture=architecture,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        progress=False,
        **fields,
    )
    return train(config, x, run_dir)


def run_benchmark(
    architectures: list[str],
    out_dir: str,
    *,
    steps: int = 1000,
    batch_size: int = 512,
    seed: int = 0,
    features: SyntheticFeatures | None = None,
    extra_metrics: Callable[[SyntheticFeatures, torch.nn.Module], dict[str, float]] | None = None,
    rows: int = 200_000,
) -> list[dict[str, object]]:
    """Train each variant on the SynthSAEBench-style features (skew, hierarchy,
    correlation) and measure recovery on fresh rows; one result row per variant.
    `extra_metrics(features, sae)` adds columns (e.g. the paper's Hungarian MCC)."""
    import time
    from pathlib import Path

    features = features or benchmark_features(seed=seed)
    _, codes = features.sample(20_000, seed=999)
    l0 = float((codes > 0).sum(-1).float().mean())
    results: list[dict[str, object]] = []
    for arch in architectures:
        t0 = time.perf_counter()
        sae = train_on_synthetic(
            arch,
            features,
            str(Path(out_dir) / arch),
            l0=l0,
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            rows=rows,
        )
        row: dict[str, object] = {"architecture": arch, "true_l0": l0}
        row.update(recovery(features, sae))
        if extra_metrics is not None:
            row.update(extra_metrics(features, sae))
        row["seconds"] = time.perf_counter() - t0
        results.append(row)
    return results


BENCH_COLUMNS = ("mmcs", "mcc", "f1", "absorption", "parent_recall", "l0", "fvu")


def format_benchmark(
    results: list[dict[str, object]], columns: tuple[str, ...] = BENCH_COLUMNS
) -> str:
    """A Markdown table of the benchmark rows (the one docs/evaluation.md records)."""
    head = "| variant | " + " | ".join(columns) + " | s |"
    lines = [head, "|" + "---|" * (len(columns) + 2)]
    for r in results:
        cells = [f"{float(r[c]):.3f}" for c in columns]
        lines.append(f"| {r['architecture']} | " + " | ".join(cells) + f" | {r['seconds']:.0f} |")
    return "\n".join(lines)
