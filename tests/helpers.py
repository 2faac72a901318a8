"""Helpers shared by several test files (import with `from helpers import ...`).

One section per concern, so that helpers added in parallel merge cleanly.
"""

from __future__ import annotations

import torch
from torch import nn

from sae_hooks.sae import SAEOutput

# ------------------------------------------------------------------ stand-in SAEs


class IdentitySAE(nn.Module):
    """A perfect "SAE" with the sae_hooks.sae contract: the latents are the coordinates.

    It reconstructs exactly (splice is a no-op, FVU 0), and on non-negative inputs its
    codes are the inputs themselves, so answers computed from its latents are known in
    advance. Its one parameter, a unit scale, gives code that looks up an SAE's device
    or dtype something to find.
    """

    def __init__(self, d: int = 64) -> None:
        super().__init__()
        self.input_size = self.nb_concepts = d
        self.scale = nn.Parameter(torch.ones(()))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def forward(self, x: torch.Tensor) -> SAEOutput:
        return SAEOutput(x, x, x)
