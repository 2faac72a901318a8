"""SAEBench's per-latent core details (eval_core.json's `eval_result_details`).

One record per latent, SAEBench's `CoreFeatureMetric`: how often it fires (share of
tokens), on how many tokens of a sequence once it fires there (the consistent activation
heuristic), and its encoder / decoder weights (bias, norm, encoder-decoder cosine, largest
cosine with another latent). A latent that never fired has no heuristic (NaN: 0 / 0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sae_hooks.eval.engine import Batch


class LatentStats:
    """Per-latent firing counts over the held-out tokens: tokens it fired on and
    sequences it fired in (a row without a sequence, as from a store, is its own)."""

    outputs = frozenset()

    def __init__(self) -> None:
        self.fired: Tensor | None = None
        self.sequences: Tensor | None = None
        self.tokens = 0

    def update(self, batch: Batch) -> None:
        on = (batch.out.z != 0).reshape(-1, batch.out.z.shape[-1])  # stays on its device
        fired = on.sum(0).double().cpu()
        in_seqs = fired.clone()  # rows without sequences: each row is its own
        if batch.sequence is not None and on.shape[0]:
            seq = batch.sequence.to(on.device)
            per_seq = torch.zeros(int(seq.max()) + 1, on.shape[1], device=on.device)
            per_seq.index_add_(0, seq, on.float())
            in_seqs = (per_seq > 0).sum(0).double().cpu()
        if self.fired is None:
            self.fired, self.sequences = fired, in_seqs
        else:
            self.fired += fired
            self.sequences += in_seqs
        self.tokens += on.shape[0]


def latent_details(sae: nn.Module, stats: LatentStats) -> list[dict[str, float]]:
    """SAEBench's `eval_result_details`: one record per latent (NaN where undefined)."""
    if stats.fired is None:
        return []
    n = stats.fired.numel()
    density = (stats.fired / max(stats.tokens, 1)).tolist()
    heuristic = (stats.fired / stats.sequences).tolist()  # 0 / 0 -> NaN for dead latents
    weights = weight_metrics(sae, n)
    return [
        {
            "index": i,
            "feature_density": density[i],
            "consistent_activation_heuristic": heuristic[i],
            **{key: values[i] for key, values in weights.items()},
        }
        for i in range(n)
    ]


def weight_metrics(sae: nn.Module, n: int) -> dict[str, list[float]]:
    """Encoder bias and norm, encoder-decoder cosine and the largest cosine with another
    latent's encoder / decoder row, per latent (NaN without such weights)."""
    enc = _rows(getattr(getattr(sae, "encoder", None), "weight", None), n)
    get = getattr(sae, "get_dictionary", None)
    dec = _rows(get() if callable(get) else None, n)
    bias = getattr(getattr(sae, "encoder", None), "bias", None)
    nan = [math.nan] * n
    return {
        "encoder_bias": _floats(bias, n) if enc is not None else nan,
        "encoder_norm": enc.norm(dim=-1).tolist() if enc is not None else nan,
        "encoder_decoder_cosine_sim": torch.nn.functional.cosine_similarity(enc, dec).tolist()
        if enc is not None and dec is not None and enc.shape == dec.shape
        else nan,
        "max_decoder_cosine_sim": max_cosine(dec).tolist() if dec is not None else nan,
        "max_encoder_cosine_sim": max_cosine(enc).tolist() if enc is not None else nan,
    }


def _rows(weight: object, n: int) -> Tensor | None:
    """A (n, d) weight as float rows on the CPU; None when there is no such matrix."""
    if not isinstance(weight, Tensor) or weight.ndim != 2 or weight.shape[0] != n:
        return None
    return weight.detach().float().cpu()


def _floats(bias: object, n: int) -> list[float]:
    """A latent bias as floats; zeros without one (SAEBench's choice for bias-free SAEs)."""
    if isinstance(bias, Tensor) and bias.numel() == n:
        return bias.detach().float().cpu().reshape(-1).tolist()
    return [0.0] * n


def max_cosine(rows: Tensor | None, chunk: int = 4096) -> Tensor:
    """Per row, the largest cosine with another row (NaN with fewer than 2 rows); chunked
    so a wide dictionary needs chunk x n floats, not n x n."""
    if rows is None or rows.ndim != 2 or rows.shape[0] < 2:
        n = 0 if rows is None or rows.ndim != 2 else rows.shape[0]
        return torch.full((n,), math.nan)
    unit = torch.nn.functional.normalize(rows.float(), dim=-1)
    out = []
    for start in range(0, unit.shape[0], chunk):
        cos = unit[start : start + chunk] @ unit.T
        idx = torch.arange(cos.shape[0])
        cos[idx, idx + start] = -math.inf
        out.append(cos.max(dim=1).values)
    return torch.cat(out)
