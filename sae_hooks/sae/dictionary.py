"""The decoder: a dictionary of atoms, normalised on the fly, plus the decoder bias b_dec.

The raw parameter `weight` is what the optimiser moves; `get_dictionary()` is what
decodes. Normalising in the forward pass keeps the atoms' scale fixed whatever the
trainer does, so sparsity penalties cannot be gamed by shrinking codes and growing atoms.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .shapes import positive_int

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


class NormalizationName(str):
    """A built-in normalization's name that also applies it: `layer.normalization` is
    'l2' to this project's configs and a callable to overcomplete's code (whose
    DictionaryLayer holds the function there)."""

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        return NORMALIZATIONS[str(self)](weight)


class DictionaryLayer(nn.Module):
    """Atoms (nb_concepts, in_dimensions) and bias (in_dimensions,):
    `decode(z) = z @ get_dictionary() + bias`.

    The signature and positional order are overcomplete's
    (in_dimensions, nb_concepts, normalization, initializer, use_multiplier, device);
    `use_bias` (the decoder bias b_dec, absent from overcomplete) is this project's
    extension and keyword-only.
    normalization: 'l2' (unit-norm rows, default), 'max_l2' (each row's norm <= 1),
    'l1', 'max_l1', 'identity', or a callable mapping the raw (nb_concepts,
    in_dimensions) weight to the atoms. initializer: a (nb_concepts, in_dimensions)
    tensor, or an in-place init function such as `nn.init.orthogonal_`; by default
    random unit-norm directions. use_multiplier: learn a scalar m, atoms =
    normalization(weight) * exp(m) (overcomplete's log-multiplier); without it
    `multiplier` is a non-persisted zero, so saved files keep their keys.
    """

    def __init__(
        self,
        in_dimensions: int,
        nb_concepts: int,
        normalization: Normalization = "l2",
        initializer: Initializer | None = None,
        use_multiplier: bool = False,
        device: str | torch.device = "cpu",
        *,
        use_bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_dimensions = positive_int("in_dimensions", in_dimensions)
        self.nb_concepts = positive_int("nb_concepts", nb_concepts)
        d = self.in_dimensions
        self._normalize = _normalization(normalization)
        self.normalization: Normalization = (
            NormalizationName(normalization) if isinstance(normalization, str) else normalization
        )
        self.use_bias = bool(use_bias)
        self.use_multiplier = bool(use_multiplier)
        self.device = device

        self.weight = nn.Parameter(_initial_weight(initializer, nb_concepts, d, device))
        self.bias = nn.Parameter(torch.zeros(d, device=device)) if self.use_bias else None
        if self.use_multiplier:
            self.multiplier = nn.Parameter(torch.zeros((), device=device))
        else:
            self.register_buffer("multiplier", torch.zeros((), device=device), persistent=False)

        if not isinstance(normalization, str):
            self._check_custom_normalization()

    @torch.no_grad()
    def _check_custom_normalization(self) -> None:
        out = self._normalize(self.weight)
        if not isinstance(out, torch.Tensor) or out.shape != self.weight.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                "custom normalization must return a tensor of shape "
                f"{tuple(self.weight.shape)}, got {got}"
            )

    @property
    def _weights(self) -> nn.Parameter:
        """overcomplete's name of the raw atoms parameter (`weight` here)."""
        return self.weight

    @property
    def d(self) -> int:
        """Alias of in_dimensions (the width of the rows it decodes)."""
        return self.in_dimensions

    def get_dictionary(self) -> torch.Tensor:
        """The normalised atoms (times exp(multiplier) when learnt), (nb_concepts, d)."""
        unit = self._rows_kept_unit and self.normalization == "l2"
        atoms = self.weight if unit else self._normalize(self.weight)
        return atoms * self.multiplier.exp() if self.use_multiplier else atoms

    _rows_kept_unit = False

    @contextlib.contextmanager
    def rows_kept_unit(self) -> Iterator[DictionaryLayer]:
        """Inside, 'l2' atoms are the raw rows themselves, not weight / |weight|.

        For a trainer that renormalises the raw rows to unit norm after every step and
        projects their gradient onto the sphere's tangent space (train/constraints.py):
        at |w| = 1, w / |w| = w and the normalisation's backward is that projection,
        (I - w w^T) g, so skipping both gives the same atoms and, once projected, the
        same gradient, without ~6 passes over the (nb_concepts, d) weight per step.
        The caller guarantees the unit rows; outside the context nothing is assumed.
        """
        previous, self._rows_kept_unit = self._rows_kept_unit, True
        try:
            yield self
        finally:
            self._rows_kept_unit = previous

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        atoms = self.get_dictionary()
        if self.bias is None:
            return z @ atoms
        return torch.addmm(self.bias, z, atoms) if z.dim() == 2 else z @ atoms + self.bias

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z)

    def extra_repr(self) -> str:
        norm = self.normalization if isinstance(self.normalization, str) else "custom"
        return (
            f"in_dimensions={self.in_dimensions}, nb_concepts={self.nb_concepts}, "
            f"normalization={norm}, bias={self.use_bias}, multiplier={self.use_multiplier}"
        )

    def config(self) -> dict[str, object]:
        """The JSON-able keyword arguments that rebuild this layer (saved as dictionary_params)."""
        if not isinstance(self.normalization, str):
            raise ValueError(
                "a callable dictionary normalization cannot be saved; use one of "
                f"{sorted(NORMALIZATIONS)}"
            )
        params: dict[str, object] = {
            "normalization": str(self.normalization),
            "use_bias": self.use_bias,
        }
        if self.use_multiplier:
            params["use_multiplier"] = True
        return params


DICTIONARY_PARAMS = ("normalization", "initializer", "use_multiplier", "device", "use_bias")
"""The keys `dictionary_params` may hold: DictionaryLayer's keyword arguments."""


def dictionary_kwargs(params: object, device: str | torch.device) -> dict[str, Any]:
    """Validate an SAE's `dictionary_params` and add the SAE's device.

    A `device` inside dictionary_params must name the SAE's device: encoder and
    dictionary live together.
    """
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise TypeError(f"dictionary_params must be a dict, got {type(params).__name__}")
    unknown = sorted(set(params) - set(DICTIONARY_PARAMS))
    if unknown:
        raise ValueError(
            f"unknown dictionary_params {unknown}; accepted: {sorted(DICTIONARY_PARAMS)}"
        )
    kwargs = dict(params)
    own = kwargs.pop("device", None)
    if own is not None and torch.device(own) != torch.device(device):
        raise ValueError(
            f"dictionary_params device {own!r} differs from the SAE's device {device!r}; "
            "pass device= to the SAE instead"
        )
    return {**kwargs, "device": device}


def _normalization(normalization: Normalization) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(normalization, str):
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"unknown dictionary normalization {normalization!r}; "
                f"valid: {sorted(NORMALIZATIONS)} or a callable"
            )
        return NORMALIZATIONS[normalization]
    if callable(normalization):
        return normalization
    raise TypeError(
        f"normalization must be a name in {sorted(NORMALIZATIONS)} or a callable, "
        f"got {type(normalization).__name__}"
    )


def _initial_weight(
    initializer: Initializer | None, nb_concepts: int, d: int, device: str | torch.device
) -> torch.Tensor:
    if initializer is None:
        return _l2(torch.randn(nb_concepts, d, device=device))
    if isinstance(initializer, torch.Tensor):
        if tuple(initializer.shape) != (nb_concepts, d):
            raise ValueError(
                f"dictionary initializer must have shape (nb_concepts, in_dimensions) = "
                f"({nb_concepts}, {d}), got {tuple(initializer.shape)}"
            )
        return initializer.detach().to(device=device, dtype=torch.float32).clone()
    if callable(initializer):
        weight = torch.empty(nb_concepts, d, device=device)
        with torch.no_grad():
            initializer(weight)
        return weight
    raise TypeError(
        "dictionary initializer must be a (nb_concepts, in_dimensions) tensor or an "
        f"in-place init function, got {type(initializer).__name__}"
    )
