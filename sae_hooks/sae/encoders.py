"""Encoder registry: the map from the centred input to (pre_codes, codes), one row per
token / spatial position.

Row encoders (linear, identity, the MLPs) read rows (N, d); structure encoders
(attention over (seq, d), ResNet over (channels, height, width)) read the batch in
its own shape and return rows. Names, constructor arguments and parameter names
follow overcomplete 0.3, so its encoders' state_dicts load into these (see
docs/architecture.md for the few places where the computation differs on purpose).

The default is "linear" (Linear with bias + ReLU), not Linear + BatchNorm as the
seed's prose says: BatchNorm makes a token's code depend on the other rows of its
batch (batch statistics in train mode), so a single sequence spliced into a model
would not see the codes it was trained with. "linear_bn" keeps the BatchNorm
encoder available by name for those who want it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Factory = Callable[..., nn.Module]


class LinearEncoder(nn.Module):
    """pre = x @ weight.T + bias, codes = ReLU(pre); `weight` is (nb_concepts, d).

    `weight` has the dictionary's layout, so W_enc = W_dec^T is `weight.copy_(D)`.
    bias=False leaves `bias` None (what `SAE.untied(bias=False)` builds).
    """

    consumes_structure = False

    def __init__(
        self,
        input_size: int,
        nb_concepts: int,
        device: str | torch.device = "cpu",
        *,
        bias: bool = True,
    ):
        super().__init__()
        layer = nn.Linear(input_size, nb_concepts, bias=bias, device=device)
        self.weight = layer.weight
        self.bias = layer.bias

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = F.linear(x, self.weight, self.bias)
        return pre, F.relu(pre)


class TiedEncoder(nn.Module):
    """pre = x @ D^T (+ bias), D the dictionary's current atoms: no weight of its own.

    What `SAE.tied()` installs; the dictionary is held outside the module tree so its
    parameters are not registered twice.
    """

    consumes_structure = False

    def __init__(self, dictionary: nn.Module, bias: bool = False):
        super().__init__()
        self._dictionary = (dictionary,)  # a tuple: not a submodule
        atoms = dictionary.weight
        self.bias = (
            nn.Parameter(torch.zeros(atoms.shape[0], device=atoms.device, dtype=atoms.dtype))
            if bias
            else None
        )

    @property
    def weight(self) -> torch.Tensor:
        """D, (nb_concepts, d): the encoder's weight is the dictionary itself."""
        return self._dictionary[0].get_dictionary()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = F.linear(x, self.weight, self.bias)
        return pre, F.relu(pre)


class IdentityEncoder(nn.Module):
    """pre = codes = x: the input's own coordinates are the codes (nb_concepts == d)."""

    consumes_structure = False

    def __init__(self, input_shape: int, n_components: int | None = None, device: Any = "cpu"):
        super().__init__()
        if not isinstance(input_shape, int) or isinstance(input_shape, bool):
            raise ValueError(
                f"IdentityEncoder reads rows: input_shape must be an int, got {input_shape!r}"
            )
        if n_components is not None and n_components != input_shape:
            raise ValueError(
                f"the identity encoder's codes are the input itself: nb_concepts must equal "
                f"the input width {input_shape}, got {n_components}"
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


class MLPEncoder(nn.Module):
    """Rows (N, d) -> nb_blocks - 1 hidden blocks (Linear, norm, activation), then
    Linear + norm to the codes (pre_codes), then output_activation (codes).

    overcomplete's arguments and parameter names: nb_blocks=1 is Linear + norm
    (no hidden layer); nb_blocks=0 is allowed and means the same; residual adds
    each hidden block's input to its output where the widths match.
    """

    consumes_structure = False

    def __init__(
        self,
        input_shape: int,
        n_components: int,
        hidden_dim: int | None = None,
        nb_blocks: int = 1,
        hidden_activation: type[nn.Module] = nn.ReLU,
        output_activation: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm1d,
        residual: bool = False,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        if not isinstance(input_shape, int) or isinstance(input_shape, bool):
            raise ValueError(
                f"MLPEncoder reads rows: input_shape must be an int, got {input_shape!r}"
            )
        if isinstance(nb_blocks, bool) or not isinstance(nb_blocks, int) or nb_blocks < 0:
            raise ValueError(f"nb_blocks must be an int >= 0, got {nb_blocks!r}")
        self.input_size, self.n_components = input_shape, n_components
        self.hidden_dim = input_shape if hidden_dim is None else hidden_dim
        self.nb_blocks, self.residual = nb_blocks, residual
        widths = [input_shape] + [self.hidden_dim] * max(nb_blocks - 1, 0)
        self.mlp_blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), norm_layer(b), hidden_activation()).to(device)
            for a, b in itertools.pairwise(widths)
        )
        self.final_block = nn.Sequential(
            nn.Linear(widths[-1], n_components), norm_layer(n_components)
        ).to(device)
        self.final_activation = output_activation()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 2:
            raise ValueError(f"MLPEncoder reads rows (N, d), got {tuple(x.shape)}")
        for block in self.mlp_blocks:
            y = block(x)
            x = x + y if self.residual and y.shape == x.shape else y
        pre = self.final_block(x)
        return pre, self.final_activation(pre)


class AttentionBlock(nn.Module):
    """Pre-norm transformer block over (B, T, d): x + attn(LN(x)), then x + MLP(LN(x)).

    The LayerNorms normalise over (T, d) together, as overcomplete's do (so their
    parameters have shape (T, d)). Attention runs over the T tokens of each sequence
    (batch_first), never across the batch.
    """

    def __init__(
        self,
        dims: tuple[int, int],
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        self.seq_len, self.embed_dim = dims
        hidden = int(self.embed_dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(tuple(dims), device=device)
        self.attn = nn.MultiheadAttention(
            self.embed_dim, num_heads, dropout=attn_drop, batch_first=True, device=device
        )
        self.norm2 = nn.LayerNorm(tuple(dims), device=device)
        self.mlp = nn.Sequential(
            nn.Linear(self.embed_dim, hidden),
            act_layer(),
            nn.Dropout(drop),
            nn.Linear(hidden, self.embed_dim),
            nn.Dropout(drop),
        ).to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class AttentionEncoder(nn.Module):
    """(B, T, d) -> nb_blocks attention blocks -> per token Linear + norm (pre_codes)
    -> output_activation (codes); codes come back as rows (B * T, n_components).

    overcomplete's arguments; `hidden_dim` and `residual` are accepted for signature
    parity and unused there too (the blocks keep width d and are always residual).
    """

    consumes_structure = True

    def __init__(
        self,
        input_shape: tuple[int, int],
        n_components: int,
        hidden_dim: int | None = None,
        nb_blocks: int = 1,
        output_activation: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        residual: bool = True,
        attention_heads: int = 4,
        mlp_ratio: float = 4.0,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        if not _is_shape(input_shape, 2):
            raise ValueError(
                f"AttentionEncoder reads (seq, d) inputs: input_shape must be (seq, d), got "
                f"{input_shape!r}"
            )
        if isinstance(nb_blocks, bool) or not isinstance(nb_blocks, int) or nb_blocks < 1:
            raise ValueError(f"nb_blocks must be an int >= 1, got {nb_blocks!r}")
        d = input_shape[1]
        if d % attention_heads:
            raise ValueError(f"d={d} must be divisible by attention_heads={attention_heads}")
        self.input_size, self.n_components = tuple(input_shape), n_components
        self.hidden_dim, self.nb_blocks, self.residual = hidden_dim, nb_blocks, residual
        self.attention_heads, self.mlp_ratio = attention_heads, mlp_ratio
        self.attention_blocks = nn.ModuleList(
            AttentionBlock(tuple(input_shape), attention_heads, mlp_ratio, device=device)
            for _ in range(nb_blocks)
        )
        self.final_block = nn.Sequential(nn.Linear(d, n_components), norm_layer(n_components)).to(
            device
        )
        self.final_activation = output_activation()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 3:
            raise ValueError(f"AttentionEncoder reads (B, T, d), got {tuple(x.shape)}")
        for block in self.attention_blocks:
            x = block(x)
        pre = self.final_block(x.reshape(-1, x.shape[-1]))
        return pre, self.final_activation(pre)


class ResNetBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual (1x1 projection when the
    width or stride changes), activation after the sum."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        activation: type[nn.Module] = nn.GELU,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False, device=device)
        self.norm1 = nn.BatchNorm2d(out_channels, device=device)
        self.act = activation()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False, device=device)
        self.norm2 = nn.BatchNorm2d(out_channels, device=device)
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            ).to(device)
        else:
            self.downsample = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))
        return self.act(out + self.downsample(x))


class ResNetEncoder(nn.Module):
    """(B, C, H, W) -> nb_blocks ResNet blocks of width hidden_dim (default C) -> per
    position Linear + BatchNorm (pre_codes) -> output_activation (codes); codes come
    back as rows (B * H * W, n_components), row order (b, h, w)."""

    consumes_structure = True

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        n_components: int,
        hidden_dim: int | None = None,
        nb_blocks: int = 1,
        output_activation: type[nn.Module] = nn.ReLU,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        if not _is_shape(input_shape, 3):
            raise ValueError(
                "ResNetEncoder reads images: input_shape must be (channels, height, width), "
                f"got {input_shape!r}"
            )
        if isinstance(nb_blocks, bool) or not isinstance(nb_blocks, int) or nb_blocks < 1:
            raise ValueError(f"nb_blocks must be an int >= 1, got {nb_blocks!r}")
        self.input_channels, self.spatial_dims = input_shape[0], tuple(input_shape[1:])
        self.hidden_dim = input_shape[0] if hidden_dim is None else hidden_dim
        self.n_components, self.nb_blocks = n_components, nb_blocks
        widths = [self.input_channels] + [self.hidden_dim] * nb_blocks
        self.resnet_blocks = nn.Sequential(
            *(ResNetBlock(a, b, device=device) for a, b in itertools.pairwise(widths))
        )
        self.final_block = nn.Sequential(
            nn.Linear(widths[-1], n_components), nn.BatchNorm1d(n_components)
        ).to(device)
        self.final_activation = output_activation()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"ResNetEncoder reads (B, C, H, W), got {tuple(x.shape)}")
        x = self.resnet_blocks(x)
        pre = self.final_block(x.movedim(1, -1).reshape(-1, x.shape[1]))
        return pre, self.final_activation(pre)


def _is_shape(shape: object, n: int) -> bool:
    return (
        isinstance(shape, (tuple, list))
        and len(shape) == n
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    )


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
    decorator (its factories take the input_shape as given), `create_module`, `list_modules`."""

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
        return ENCODERS[name](*args, **kwargs)

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
