"""The top examples of each latent, with the latent's activation on the rows around them.

A text example is a window of tokens from the same document around the max
token; an image example is every kept token of that image (its patches and the
CLS token). Rows are document-major, so a document's rows are contiguous and a
window is a slice of rows filtered to one `doc_index`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from sae_hooks.report.features import FeatureStats, window_activations
from sae_hooks.report.rows import Rows


@dataclass
class Example:
    """One top-activating row of a latent and its window."""

    row: int
    doc: int
    value: float
    rows: np.ndarray  # window rows, ascending
    acts: np.ndarray  # the latent's activation on each window row
    token_ids: np.ndarray
    positions: np.ndarray

    @property
    def center(self) -> int:
        """Index of the example's own row within the window."""
        return int(np.searchsorted(self.rows, self.row))


def _window(rows: Rows, r: int, left: int, right: int) -> np.ndarray:
    lo, hi = max(r - left, 0), min(r + right + 1, rows.n_rows)
    span = np.arange(lo, hi)
    return span[rows.doc_index[lo:hi] == rows.doc_index[r]]


def gather_examples(
    sae: nn.Module,
    rows: Rows,
    stats: FeatureStats,
    latents: Sequence[int],
    *,
    n_examples: int = 8,
    left: int = 12,
    right: int = 4,
) -> dict[int, list[Example]]:
    """latent -> its top examples (only rows where it fires), best first.

    Examples are drawn from all k rows the feature pass kept, skipping rows that
    fall inside a better example's window, so one hot document (or image) does not
    fill every slot. For images the window is the whole image.
    """
    if n_examples > stats.top_values.shape[1]:
        raise ValueError(
            f"n_examples={n_examples} but the feature pass kept only "
            f"{stats.top_values.shape[1]} examples per latent; collect with a larger k"
        )
    if rows.is_vision:
        left = right = int(rows.position.max())
    picked: dict[int, list[tuple[int, float, np.ndarray]]] = {}
    for latent in latents:
        chosen: list[tuple[int, float, np.ndarray]] = []
        for r, v in zip(stats.top_rows[latent].tolist(), stats.top_values[latent].tolist()):
            if v <= 0 or len(chosen) == n_examples:
                break
            if any(w[0] <= r <= w[-1] for _, _, w in chosen):
                continue  # already shown, highlighted, inside a better example's window
            chosen.append((r, v, _window(rows, r, left, right)))
        picked[latent] = chosen
    windows = [w for items in picked.values() for _, _, w in items]
    index = np.unique(np.concatenate(windows)) if windows else np.zeros(0, np.int64)
    acts = window_activations(sae, rows, index, list(picked)).numpy()
    out: dict[int, list[Example]] = {}
    for col, (latent, items) in enumerate(picked.items()):
        out[latent] = [
            Example(
                row=r,
                doc=int(rows.doc_index[r]),
                value=v,
                rows=w,
                acts=acts[np.searchsorted(index, w), col],
                token_ids=rows.token_ids[w],
                positions=rows.position[w],
            )
            for r, v, w in items
        ]
    return out
