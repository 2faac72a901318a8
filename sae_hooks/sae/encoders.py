"""Encoder registry: the map from centred input rows (N, d) to (pre_codes, codes).

The default is "linear" (Linear with bias + ReLU), not Linear + BatchNorm as the
seed's prose says: BatchNorm makes a token's code depend on the other rows of its
batch (batch statistics in train mode), so a single sequence spliced into a model
would not see the codes it was trained with. "linear_bn" keeps the BatchNorm
encoder available by name for those who want it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

EncoderFactory = Callable[..., nn.Module]


class LinearEncoder(nn.Module):
    """pre = x @ weight.T + bias, codes = ReLU(pre); `weight` is (nb_concepts, d).

    `weight` has the dictionary's layout, so W_enc = W_dec^T is `weight.copy_(D)`.
    """

    def __init__(self, input_size: int, nb_concepts: int, device: str | torch.device = "cpu"):
        super().__init__()
        layer = nn.Linear(input_size, nb_concepts, device=device)
        self.weight = layer.weight
        self.bias = layer.bias

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = F.linear(x, self.weight, self.bias)
        return pre, F.relu(pre)


class _Sequential(nn.Module):
    """A stack whose output is the pre-codes; codes are their ReLU."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = self.net(x)
        return pre, F.relu(pre)


def linear_bn(input_size: int, nb_concepts: int, device: str | torch.device = "cpu") -> nn.Module:
    return _Sequential(
        nn.Linear(input_size, nb_concepts, device=device),
        nn.BatchNorm1d(nb_concepts, device=device),
    )


def _mlp(norm: type[nn.Module]) -> EncoderFactory:
    def factory(input_size: int, nb_concepts: int, device: str | torch.device = "cpu"):
        return _Sequential(
            nn.Linear(input_size, input_size, device=device),
            norm(input_size, device=device),
            nn.ReLU(),
            nn.Linear(input_size, nb_concepts, device=device),
        )

    return factory


ENCODERS: dict[str, EncoderFactory] = {
    "linear": LinearEncoder,
    "linear_bn": linear_bn,
    "mlp_bn_1": _mlp(nn.BatchNorm1d),  # one hidden layer of width d, BatchNorm
    "mlp_ln_1": _mlp(nn.LayerNorm),  # one hidden layer of width d, LayerNorm
}

DEFAULT_ENCODER = "linear"


def register_encoder(name: str, factory: EncoderFactory, *, overwrite: bool = False) -> None:
    """Make `factory(input_size, nb_concepts, device=...)` available as `encoder_module=name`.

    Registered names survive save/load; a bare nn.Module passed to an SAE does not.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"encoder name must be a non-empty str, got {name!r}")
    if not callable(factory):
        raise TypeError(f"encoder factory must be callable, got {type(factory).__name__}")
    if name in ENCODERS and not overwrite:
        raise ValueError(f"encoder {name!r} is already registered; pass overwrite=True")
    ENCODERS[name] = factory


def build_encoder(
    spec: str | nn.Module | None,
    input_size: int,
    nb_concepts: int,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, str | None]:
    """The encoder module and its registry name (None for a user-supplied module)."""
    if spec is None:
        spec = DEFAULT_ENCODER
    if isinstance(spec, nn.Module):
        return spec.to(device), None
    if isinstance(spec, str):
        if spec not in ENCODERS:
            raise ValueError(f"unknown encoder {spec!r}; registered: {sorted(ENCODERS)}")
        return ENCODERS[spec](input_size, nb_concepts, device=device), spec
    raise TypeError(
        f"encoder_module must be None, a registered name {sorted(ENCODERS)} or an nn.Module, "
        f"got {type(spec).__name__}"
    )


def split_codes(out: torch.Tensor | tuple | list) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept an encoder output of (pre_codes, codes) or plain pre_codes (codes = ReLU)."""
    if isinstance(out, torch.Tensor):
        return out, F.relu(out)
    if isinstance(out, (tuple, list)) and len(out) == 2:
        return out[0], out[1]
    raise TypeError(
        "an encoder must return a tensor of pre-codes or a pair (pre_codes, codes), "
        f"got {type(out).__name__}" + (f" of length {len(out)}" if hasattr(out, "__len__") else "")
    )
