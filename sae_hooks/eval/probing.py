"""Sparse probing on local labelled data: do a few latents carry a known label?

For each class (one vs rest), on a fixed train / test split of the items:

- the k latents with the largest |mean code on the class - mean code on the rest| (on
  the training items) feed a logistic-regression probe, for k in KS; its test accuracy
  is `sae_top_{k}_test_accuracy`;
- a probe on all raw activations (`llm_test_accuracy`) and on all latents
  (`sae_test_accuracy`) are the references (SAEBench's sparse-probing names).

Accuracies are averaged over the classes. Items are whole documents / images: their
activations and codes mean-pooled over real tokens. The labelled sets ship offline:
CPython's pydoc topics grouped into four families (`pydoc_topic_texts`), and the
synthetic shape images labelled by colour (`labelled_shapes`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from sae_hooks.devices import model_device, sae_device_dtype, to_device
from sae_hooks.hooks import capture
from sae_hooks.model_outputs import run_model
from sae_hooks.sae.modes import eval_mode

KS = (1, 2, 5, 10, 20)

TOPIC_FAMILIES: dict[str, tuple[str, ...]] = {
    "statements": (
        "assert", "assignment", "augassign", "break", "continue", "del", "for", "global",
        "if", "import", "nonlocal", "pass", "raise", "return", "try", "while", "with",
        "compound", "else", "async", "await", "yield",
    ),
    "expressions": (
        "atom-identifiers", "atom-literals", "binary", "bitwise", "calls", "comparisons",
        "exprlists", "lambda", "operator-summary", "power", "shifting", "slicings",
        "subscriptions", "unary", "attribute-references", "booleans", "in", "conversions",
    ),
    "types": (
        "bltin-code-objects", "bltin-ellipsis-object", "bltin-null-object",
        "bltin-type-objects", "callable-types", "dict", "floating", "imaginary", "integers",
        "lists", "numbers", "numeric-types", "sequence-types", "string-methods", "strings",
        "types", "typesfunctions", "typesmapping", "typesmethods", "typesmodules", "typesseq",
        "typesseq-mutable", "truth", "formatstrings",
    ),
    "data model": (
        "attribute-access", "class", "customization", "specialattrs", "specialnames",
        "objects", "context-managers", "function", "id-classes", "identifiers", "naming",
        "execmodel", "dynamic-features", "exceptions", "debugger",
    ),
}  # fmt: skip
"""pydoc topic -> family, the labels of the offline text probing set."""


def pydoc_topic_texts(min_chars: int = 80) -> tuple[list[str], Tensor, list[str]]:
    """(paragraphs, family label per paragraph, family names) from CPython's pydoc topics."""
    from pydoc_data.topics import topics

    names = list(TOPIC_FAMILIES)
    family = {t: i for i, f in enumerate(names) for t in TOPIC_FAMILIES[f]}
    texts, labels = [], []
    for topic, body in sorted(topics.items()):
        if topic not in family:
            continue
        for para in body.split("\n\n"):
            if len(para.strip()) >= min_chars:
                texts.append(para.strip())
                labels.append(family[topic])
    return texts, torch.tensor(labels), names


def labelled_shapes(
    n: int, image_size: int, *, n_colors: int = 4, batch_size: int = 16, processor=None
):
    """(model-input batches of n synthetic shape images, colour label per image, colour
    names): sae_hooks.data.synthetic_images, image i in colour i % n_colors."""
    from sae_hooks.data.synthetic_images import palette, shape_batches

    colors = palette(n_colors)
    batches = shape_batches(
        n, colors, image_size=image_size, batch_size=batch_size, processor=processor
    )
    return batches, torch.arange(n) % n_colors, [str(c) for c in colors]


@torch.no_grad()
def pooled_activations(
    model: nn.Module, point: str, sae: nn.Module, batches: Iterable[Mapping[str, Tensor]]
) -> tuple[Tensor, Tensor]:
    """(activations (items, d), codes (items, nb_concepts)): each item's rows at `point`
    and their SAE codes, mean-pooled over its real tokens (attention_mask) or positions."""
    device, dtype = sae_device_dtype(sae)
    acts, codes = [], []
    with eval_mode(sae):
        for inputs in batches:
            inputs = to_device(inputs, model_device(model))
            with capture(model, point) as got:
                run_model(model, inputs)
            x = got[point].float()
            if x.ndim == 2:
                x = x[:, None]
            z = sae.encode(x.reshape(-1, x.shape[-1]).to(device, dtype))[1].float()
            z = z.reshape(*x.shape[:2], -1).to(x.device)
            mask = inputs.get("attention_mask")
            m = torch.ones(x.shape[:2], device=x.device) if mask is None else mask.float()
            m = m.to(x.device)[..., None]
            acts.append(((x * m).sum(1) / m.sum(1).clamp_min(1)).cpu())
            codes.append(((z * m).sum(1) / m.sum(1).clamp_min(1)).cpu())
    return torch.cat(acts), torch.cat(codes)


def _fit_accuracy(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, l2: float = 1e-3
) -> float:
    """Test accuracy of an L2-regularised logistic regression (LBFGS) on standardised inputs."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    a, b = (train_x - mean) / std, (test_x - mean) / std
    w = torch.zeros(a.shape[1], requires_grad=True)
    bias = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=100, line_search_fn="strong_wolfe")
    target = train_y.float()

    def closure():
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(a @ w + bias, target)
        loss = loss + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float((((b @ w + bias) > 0) == test_y.bool()).float().mean())


def split(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A fixed random (train idx, test idx) split of n items."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = n - max(1, round(n * test_fraction))
    return perm[:cut], perm[cut:]


def sparse_probing(
    acts: Tensor, codes: Tensor, labels: Tensor, *, ks: Sequence[int] = KS, seed: int = 0
) -> dict[str, float]:
    """SAEBench-named accuracies, mean over one-vs-rest classes: llm_test_accuracy (all raw
    activations), sae_test_accuracy (all latents), sae_top_{k}_test_accuracy; and
    majority_test_accuracy, always predicting the larger side (one-vs-rest classes are
    unbalanced: a probe is only as good as its margin over this)."""
    if not (acts.shape[0] == codes.shape[0] == labels.shape[0]):
        raise ValueError(
            f"acts, codes and labels must have one row per item, got {acts.shape[0]}, "
            f"{codes.shape[0]}, {labels.shape[0]}"
        )
    classes = labels.unique()
    if classes.numel() < 2:
        raise ValueError(f"sparse probing needs at least 2 classes, got {classes.tolist()}")
    tr, te = split(labels.shape[0], seed=seed)
    sums: dict[str, float] = {}
    for c in classes.tolist():
        y = labels == c
        share = float(y[te].float().mean())
        results = {
            "majority_test_accuracy": max(share, 1.0 - share),  # the floor a probe must beat
            "llm_test_accuracy": _fit_accuracy(acts[tr], y[tr], acts[te], y[te]),
            "sae_test_accuracy": _fit_accuracy(codes[tr], y[tr], codes[te], y[te]),
        }
        gap = (codes[tr][y[tr]].mean(0) - codes[tr][~y[tr]].mean(0)).abs()
        order = gap.argsort(descending=True)
        for k in ks:
            top = order[: min(k, codes.shape[1])]
            results[f"sae_top_{k}_test_accuracy"] = _fit_accuracy(
                codes[tr][:, top], y[tr], codes[te][:, top], y[te]
            )
        for key, value in results.items():
            sums[key] = sums.get(key, 0.0) + value
    return {k: v / classes.numel() for k, v in sums.items()}
