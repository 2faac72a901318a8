"""Encoder registry: the map from the centred input to (pre_codes, codes), one row per
token / spatial position.

Row encoders (linear, identity, the MLPs) read rows (N, d); structure encoders
(attention over (seq, d), ResNet over (channels, height, width)) read the batch in
its own shape and return rows. The linear, tied and identity encoders live here, the
MLP / attention / ResNet modules in encoder_modules.py. Names, constructor arguments and parameter names
follow overcomplete 0.3, so its encoders' state_dicts load into these (see
docs/architecture.md for the few places where the computation differs on purpose).

The default is "linear" (Linear with bias + ReLU), not Linear + BatchNorm as the
seed's prose says: BatchNorm makes a token's code depend on the other rows of its
batch (batch statistics in train mode), so a single sequence spliced into a model
would not see the codes it was trained with. "linear_bn" keeps the BatchNorm
encoder available by name for those who want it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .encoder_modules import AttentionEncoder, MLPEncoder, ResNetEncoder, TieableEncoder

__all__ = [
    "DEFAULT_ENCODER",
    "ENCODERS",
    "SHAPE_FACTORIES",
    "TIED_ENCODERS",
    "AttentionEncoder",
    "EncoderFactory",
    "IdentityEncoder",
    "LinearEncoder",
    "MLPEncoder",
    "ResNetEncoder",
    "TieableEncoder",
    "TiedEncoder",
    "build_encoder",
    "legacy_encoder",
    "register_encoder",
    "split_codes",
]

Factory = Callable[..., nn.Module]


class LinearEncoder(TieableEncoder):
    """pre = x @ weight.T + bias, codes = ReLU(pre); `weight` is (nb_concepts, d).

    `weight` has the dictionary's layout, so W_enc = W_dec^T is `weight.copy_(D)`.
    bias=False leaves `bias` None (what `SAE.untied(bias=False)` builds). An untied
    overcomplete TieableEncoder (`tied_to` None), initialised as nn.Linear is.
    """

    def __init__(
        self,
        input_size: int,
        nb_concepts: int,
        device: str | torch.device = "cpu",
        *,
        bias: bool = True,
    ):
        layer = nn.Linear(input_size, nb_concepts, bias=bias, device=device)
        super().__init__(input_size, nb_concepts, weight_init=layer.weight.data, device=device)
        self.bias = layer.bias

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = F.linear(x, self.weight, self.bias)
        return pre, F.relu(pre)


class TiedEncoder(TieableEncoder):
    """pre = x @ D^T (+ bias), D the dictionary's current atoms: no weight of its own.

    What `SAE.tied()` installs: overcomplete's tied TieableEncoder (`tied_to` is the
    dictionary, held outside the module tree so its parameters are not registered
    twice), whose `weight` reads the atoms rather than None.
    """

    def __init__(self, dictionary: nn.Module, bias: bool = False):
        atoms = dictionary.weight
        super().__init__(atoms.shape[1], atoms.shape[0], tied_to=dictionary, device=atoms.device)
        if bias:
            self.bias = nn.Parameter(
                torch.zeros(atoms.shape[0], device=atoms.device, dtype=atoms.dtype)
            )

    @property
    def weight(self) -> torch.Tensor:
        """D, (nb_concepts, d): the encoder's weight is the dictionary itself."""
        return self.encoding_weight()


class IdentityEncoder(nn.Module):
    """pre = codes = x: the input's own coordinates are the codes. n_components is
    ignored, as in overcomplete; an SAE built on it needs nb_concepts == d (build_encoder)."""

    consumes_structure = False

    def __init__(self, input_shape: int, n_components: int | None = None, device: Any = "cpu"):
        super().__init__()
        if not isinstance(input_shape, int) or isinstance(input_shape, bool):
            raise ValueError(
                f"IdentityEncoder reads rows: input_shape must be an int, got {input_shape!r}"
            )
        self.input_size = input_shape

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


class _Sequential(nn.Module):
    """A stack whose output is the pre-codes; codes are their ReLU (the "linear_bn" layout)."""

    consumes_structure = False

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


def _mlp(nb_blocks: int, norm: type[nn.Module]) -> Factory:
    def factory(input_size: int, nb_concepts: int, device: str | torch.device = "cpu", **kwargs):
        return MLPEncoder(
            input_size, nb_concepts, nb_blocks=nb_blocks, norm_layer=norm, device=device, **kwargs
        )

    return factory


def _structured(cls: type[nn.Module], nb_blocks: int) -> Factory:
    def factory(input_shape, nb_concepts: int, device: str | torch.device = "cpu", **kwargs):
        return cls(input_shape, nb_concepts, nb_blocks=nb_blocks, device=device, **kwargs)

    return factory


def _hidden_mlp(norm: type[nn.Module]) -> Factory:
    """The layout "mlp_ln_1" / "mlp_bn_1" had before they took overcomplete's meaning:
    Linear(d, d), norm, ReLU, Linear(d, n). Kept so SAEs saved with it still load."""

    def factory(input_size: int, nb_concepts: int, device: str | torch.device = "cpu"):
        return _Sequential(
            nn.Linear(input_size, input_size, device=device),
            norm(input_size, device=device),
            nn.ReLU(),
            nn.Linear(input_size, nb_concepts, device=device),
        )

    return factory


ENCODERS: dict[str, Factory] = {
    "identity": IdentityEncoder,
    "linear": LinearEncoder,
    "linear_nobias": partial(LinearEncoder, bias=False),  # what untied(bias=False) builds
    "linear_bn": linear_bn,
    "mlp_ln_1": _mlp(1, nn.LayerNorm),  # Linear + LayerNorm
    "mlp_ln_3": _mlp(3, nn.LayerNorm),  # two hidden (Linear, LayerNorm, ReLU) blocks first
    "mlp_bn_1": _mlp(1, nn.BatchNorm1d),
    "mlp_bn_3": _mlp(3, nn.BatchNorm1d),
    "mlp_ln_hidden": _hidden_mlp(nn.LayerNorm),
    "mlp_bn_hidden": _hidden_mlp(nn.BatchNorm1d),
    "resnet_1b": _structured(ResNetEncoder, 1),
    "resnet_3b": _structured(ResNetEncoder, 3),
    "attention_1b": _structured(AttentionEncoder, 1),
    "attention_3b": _structured(AttentionEncoder, 3),
}

SHAPE_FACTORIES: set[str] = {"resnet_1b", "resnet_3b", "attention_1b", "attention_3b"}
"""Factories called with the SAE's whole input_shape (as given: an int for 1-d), not
with the channel width d; their modules read the input in that shape."""

LEGACY_LAYOUTS = {"mlp_ln_1": "mlp_ln_hidden", "mlp_bn_1": "mlp_bn_hidden"}
"""name in an old config.json -> the factory that rebuilds the layout its weights have."""

TIED_ENCODERS = {"tied": False, "tied_bias": True}
"""Names (not factories: they need the dictionary) for an encoder that is the
dictionary's transpose, with or without a bias; see SAE.tied()."""

DEFAULT_ENCODER = "linear"


def register_encoder(
    name: str, factory: Factory, *, overwrite: bool = False, takes_shape: bool = False
) -> None:
    """Make `factory(input_size, nb_concepts, device=...)` available as `encoder_module=name`.

    takes_shape=True: the factory gets the SAE's input_shape instead of d (an int for
    1-d inputs, else the tuple, as overcomplete's registry passes it) and the module
    reads the input in that shape. Registered names survive save/load; a bare
    nn.Module passed to an SAE does not.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"encoder name must be a non-empty str, got {name!r}")
    if not callable(factory):
        raise TypeError(f"encoder factory must be callable, got {type(factory).__name__}")
    if name in ENCODERS and not overwrite:
        raise ValueError(f"encoder {name!r} is already registered; pass overwrite=True")
    ENCODERS[name] = factory
    if takes_shape:
        SHAPE_FACTORIES.add(name)
    else:
        SHAPE_FACTORIES.discard(name)


class EncoderFactory:
    """overcomplete's registry interface over ENCODERS: `register_module(name)` as a
    decorator (its factories take the input_shape as given), `create_module`, `list_modules`.
    `create_module` takes overcomplete's keywords (input_shape=, n_components=) as well as
    ours (nb_concepts=) or positional (input_shape, n_components)."""

    @staticmethod
    def register_module(name: str) -> Callable[[Factory], Factory]:
        def decorator(func: Factory) -> Factory:
            register_encoder(name, func, overwrite=True, takes_shape=True)
            return func

        return decorator

    @staticmethod
    def create_module(name: str, *args: Any, **kwargs: Any) -> nn.Module:
        if name not in ENCODERS:
            raise ValueError(f"unknown encoder {name!r}; registered: {sorted(ENCODERS)}")
        leading = list(args)
        for key in ("input_shape", "n_components"):
            alias = "nb_concepts" if key == "n_components" else None
            if key in kwargs or alias in kwargs:
                if len(leading) > (key == "n_components"):
                    raise TypeError(f"create_module({name!r}): {key} given twice")
                leading.append(kwargs.pop(key) if key in kwargs else kwargs.pop(alias))
        return ENCODERS[name](*leading, **kwargs)

    @staticmethod
    def list_modules() -> list[str]:
        return list(ENCODERS)


def build_encoder(
    spec: str | nn.Module | None,
    input_shape: tuple[int, ...],
    nb_concepts: int,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, str | None, bool]:
    """(module, registry name or None for a user's module, whether it reads the input
    in its own shape rather than as rows)."""
    if spec is None:
        spec = DEFAULT_ENCODER
    structured_input = len(input_shape) > 1
    if isinstance(spec, nn.Module):
        return spec.to(device), None, structured_input and _declared(spec, True)
    if isinstance(spec, str):
        if spec not in ENCODERS:
            known = sorted([*ENCODERS, *TIED_ENCODERS])
            raise ValueError(f"unknown encoder {spec!r}; registered: {known}")
        if spec in SHAPE_FACTORIES:
            shape = input_shape[0] if len(input_shape) == 1 else tuple(input_shape)
            module = ENCODERS[spec](shape, nb_concepts, device=device)
            return module, spec, structured_input and _declared(module, True)
        d = input_shape[0] if len(input_shape) == 3 else input_shape[-1]
        if spec == "identity" and nb_concepts != d:
            raise ValueError(
                f"the identity encoder's codes are the input itself: nb_concepts must equal "
                f"the input width {d}, got {nb_concepts}"
            )
        return ENCODERS[spec](d, nb_concepts, device=device), spec, False
    raise TypeError(
        f"encoder_module must be None, a registered name {sorted(ENCODERS)} or an nn.Module, "
        f"got {type(spec).__name__}"
    )


def _declared(module: nn.Module, default: bool) -> bool:
    return bool(getattr(module, "consumes_structure", default))


def legacy_encoder(name: str | None, keys: Iterable[str]) -> str | None:
    """The factory for weights saved under `name` in its old layout, or None."""
    if name in LEGACY_LAYOUTS and any(k.startswith("encoder.net.") for k in keys):
        return LEGACY_LAYOUTS[name]
    return None


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
