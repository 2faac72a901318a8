"""The decoder: a dictionary of atoms, normalised on the fly, plus the decoder bias b_dec.

The raw parameter `weight` is what the optimiser moves; `get_dictionary()` is what
decodes. Normalising in the forward pass keeps the atoms' scale fixed whatever the
trainer does, so sparsity penalties cannot be gamed by shrinking codes and growing atoms.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Normalization = str | Callable[[torch.Tensor], torch.Tensor]

_EPS = 1e-12


def _l2(w: torch.Tensor) -> torch.Tensor:
    return w / w.norm(dim=-1, keepdim=True).clamp_min(_EPS)


def _max_l2(w: torch.Tensor) -> torch.Tensor:
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1.0)


def _l1(w: torch.Tensor) -> torch.Tensor:
    return w / w.abs().sum(dim=-1, keepdim=True).clamp_min(_EPS)


def _max_l1(w: torch.Tensor) -> torch.Tensor:
    return w / w.abs().sum(dim=-1, keepdim=True).clamp_min(1.0)


def _identity(w: torch.Tensor) -> torch.Tensor:
    return w


NORMALIZATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "l2": _l2,
    "max_l2": _max_l2,
    "l1": _l1,
    "max_l1": _max_l1,
    "identity": _identity,
}

Initializer = torch.Tensor | Callable[[torch.Tensor], object]


class DictionaryLayer(nn.Module):
    """Atoms (nb_concepts, d) and bias (d,): `decode(z) = z @ get_dictionary() + bias`.

    normalization: 'l2' (unit-norm rows, default), 'max_l2' (norm <= 1), 'l1',
    'max_l1', 'identity', or a callable mapping the raw (nb_concepts, d) weight to
    the atoms. initializer: a (nb_concepts, d) tensor, or an in-place init function
    such as `nn.init.orthogonal_`; by default random unit-norm directions.
    """

    def __init__(
        self,
        nb_concepts: int,
        d: int,
        normalization: Normalization = "l2",
        initializer: Initializer | None = None,
        use_bias: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        self.nb_concepts = _positive_int("nb_concepts", nb_concepts)
        self.d = _positive_int("d", d)
        if isinstance(normalization, str):
            if normalization not in NORMALIZATIONS:
                raise ValueError(
                    f"unknown dictionary normalization {normalization!r}; "
                    f"valid: {sorted(NORMALIZATIONS)} or a callable"
                )
            self._normalize = NORMALIZATIONS[normalization]
        elif callable(normalization):
            self._normalize = normalization
        else:
            raise TypeError(
                f"normalization must be a name in {sorted(NORMALIZATIONS)} or a callable, "
                f"got {type(normalization).__name__}"
            )
        self.normalization = normalization
        self.use_bias = bool(use_bias)

        if initializer is None:
            weight = _l2(torch.randn(nb_concepts, d, device=device))
        elif isinstance(initializer, torch.Tensor):
            if tuple(initializer.shape) != (nb_concepts, d):
                raise ValueError(
                    f"dictionary initializer must have shape ({nb_concepts}, {d}), "
                    f"got {tuple(initializer.shape)}"
                )
            weight = initializer.detach().to(device=device, dtype=torch.float32).clone()
        elif callable(initializer):
            weight = torch.empty(nb_concepts, d, device=device)
            with torch.no_grad():
                initializer(weight)
        else:
            raise TypeError(
                "dictionary initializer must be a (nb_concepts, d) tensor or an in-place "
                f"init function, got {type(initializer).__name__}"
            )
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(d, device=device)) if self.use_bias else None

        if not isinstance(normalization, str):
            with torch.no_grad():
                out = self._normalize(self.weight)
            if not isinstance(out, torch.Tensor) or out.shape != self.weight.shape:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(
                    f"custom normalization must return a tensor of shape {(nb_concepts, d)}, "
                    f"got {got}"
                )

    def get_dictionary(self) -> torch.Tensor:
        """The normalised atoms, (nb_concepts, d)."""
        return self._normalize(self.weight)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        atoms = self.get_dictionary()
        if self.bias is None:
            return z @ atoms
        return torch.addmm(self.bias, z, atoms) if z.dim() == 2 else z @ atoms + self.bias

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z)

    def extra_repr(self) -> str:
        norm = self.normalization if isinstance(self.normalization, str) else "custom"
        return f"nb_concepts={self.nb_concepts}, d={self.d}, normalization={norm}, bias={self.use_bias}"


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value
