"""The examples of each latent, with the latent's activation on the rows around them.

Two kinds, as sae_vis and Neuronpedia show them: the top activations, and
examples from several activation-quantile bins (drawn from the uniform sample
of firing rows the feature pass kept), so a latent's typical behaviour shows
next to its extreme one. No context is shown twice: a window overlapping an
already chosen one, or whose tokens equal a chosen one, is skipped.

A text example is a window of tokens from the same document around its row; an
image example is every kept token of that image (its patches and the CLS
token). Rows are document-major, so a window is a slice of rows filtered to one
`doc_index`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sae_hooks.report.features import FeatureStats, encode_rows
from sae_hooks.report.rows import Rows

TOP = "top"


@dataclass
class Example:
    """One activating row of a latent and its window."""

    row: int
    doc: int
    value: float
    rows: np.ndarray  # window rows, ascending
    acts: np.ndarray  # the latent's activation on each window row
    token_ids: np.ndarray
    positions: np.ndarray
    group: str = TOP  # "top", or the activation range of its quantile bin

    @property
    def center(self) -> int:
        """Index of the example's own row within the window."""
        return int(np.searchsorted(self.rows, self.row))


def _window(rows: Rows, r: int, left: int, right: int) -> np.ndarray:
    lo, hi = max(r - left, 0), min(r + right + 1, rows.n_rows)
    span = np.arange(lo, hi)
    return span[rows.doc_index[lo:hi] == rows.doc_index[r]]


class _Picker:
    """Chosen windows of one latent; refuses a row already shown or a repeated context."""

    def __init__(self, rows: Rows, left: int, right: int):
        self.rows, self.left, self.right = rows, left, right
        self.chosen: list[tuple[int, float, np.ndarray, str]] = []
        self.seen: set[bytes] = set()

    def offer(self, r: int, v: float, group: str) -> bool:
        w = _window(self.rows, r, self.left, self.right)
        if any(c[0] <= w[-1] and w[0] <= c[-1] for _, _, c, _ in self.chosen):
            return False  # overlaps a chosen window: some of its tokens are shown already
        key = self.rows.token_ids[w].tobytes() + np.int64(r - w[0]).tobytes()
        if not self.rows.is_vision and key in self.seen:
            return False  # the same text (boilerplate) from another document
        self.seen.add(key)
        self.chosen.append((r, v, w, group))
        return True


def quantile_bins(values: np.ndarray, n_bins: int) -> list[tuple[float, float]]:
    """Equal-count activation ranges over a latent's firing sample, lowest first."""
    v = np.sort(values[values > 0])
    if v.size == 0 or n_bins <= 0:
        return []
    edges = np.quantile(v, np.linspace(0, 1, n_bins + 1))
    return [(float(edges[i]), float(edges[i + 1])) for i in range(n_bins)]


def _pick(
    rows: Rows, stats: FeatureStats, latent: int, n_top: int, n_bins: int, per_bin: int, lr: tuple
) -> list[tuple[int, float, np.ndarray, str]]:
    picker = _Picker(rows, *lr)
    n = 0
    for r, v in zip(stats.top_rows[latent].tolist(), stats.top_values[latent].tolist()):
        if v <= 0 or n == n_top:
            break
        n += picker.offer(r, v, TOP)
    if stats.sample_values is None or per_bin <= 0:
        return picker.chosen
    sv = stats.sample_values[latent].numpy()
    sr = stats.sample_rows[latent].numpy()
    bins = quantile_bins(sv, n_bins)
    for b in reversed(range(len(bins))):  # highest bin first: the page reads top-down
        lo, hi = bins[b]
        label = f"{lo:.3g} – {hi:.3g}"
        inside = (sv > 0) & (sv >= lo) & ((sv <= hi) if b == len(bins) - 1 else (sv < hi))
        start, n = len(picker.chosen), 0
        for r, v in zip(sr[inside].tolist(), sv[inside].tolist()):  # a random draw
            if n == per_bin:
                break
            n += picker.offer(int(r), float(v), label)
        picker.chosen[start:] = sorted(picker.chosen[start:], key=lambda c: -c[1])
    return picker.chosen


def pair_activations(
    sae: nn.Module, rows: Rows, index: np.ndarray, latent: np.ndarray, chunk_rows: int = 2048
) -> np.ndarray:
    """z[index[j], latent[j]] for every pair j, encoding each distinct row once.

    Memory is one chunk of codes, never (rows x latents) for all the windows.
    """
    out = np.zeros(len(index), np.float32)
    if len(index) == 0:
        return out
    uniq, where = np.unique(index, return_inverse=True)
    order = np.argsort(where, kind="stable")
    bounds = np.searchsorted(where[order], np.arange(0, len(uniq) + chunk_rows, chunk_rows))
    for c, lo in enumerate(range(0, len(uniq), chunk_rows)):
        z = encode_rows(sae, rows.take(uniq[lo : lo + chunk_rows])).cpu()
        sel = order[bounds[c] : bounds[c + 1]]
        if sel.size:
            r = torch.from_numpy(where[sel] - lo)
            col = torch.from_numpy(latent[sel].astype(np.int64))
            out[sel] = z[r, col].numpy()
    return out


def gather_examples(
    sae: nn.Module,
    rows: Rows,
    stats: FeatureStats,
    latents: Sequence[int],
    *,
    n_examples: int = 8,
    left: int = 12,
    right: int = 4,
    n_bins: int = 3,
    per_bin: int = 3,
) -> dict[int, list[Example]]:
    """latent -> its top examples (best first), then `per_bin` from each of `n_bins`
    activation-quantile bins (highest bin first, each bin's examples highest first: the
    whole list descends); only rows where it fires.

    For images the window is the whole image.
    """
    if n_examples > stats.top_values.shape[1]:
        raise ValueError(
            f"n_examples={n_examples} but the feature pass kept only "
            f"{stats.top_values.shape[1]} examples per latent; collect with a larger k"
        )
    if rows.is_vision:
        left = right = int(rows.position.max())
    picked = {
        int(i): _pick(rows, stats, int(i), n_examples, n_bins, per_bin, (left, right))
        for i in latents
    }
    windows = [(latent, w) for latent, items in picked.items() for _, _, w, _ in items]
    index = np.concatenate([w for _, w in windows]) if windows else np.zeros(0, np.int64)
    owner = np.concatenate([np.full(len(w), i) for i, w in windows]) if windows else index
    acts = pair_activations(sae, rows, index, owner)
    out: dict[int, list[Example]] = {}
    at = 0
    for latent, items in picked.items():
        out[latent] = []
        for r, v, w, group in items:
            out[latent].append(
                Example(
                    row=r,
                    doc=int(rows.doc_index[r]),
                    value=v,
                    rows=w,
                    acts=acts[at : at + len(w)],
                    token_ids=rows.token_ids[w],
                    positions=rows.position[w],
                    group=group,
                )
            )
            at += len(w)
    return out
