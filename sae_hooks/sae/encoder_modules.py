"""overcomplete's TieableEncoder (the base of the linear and tied encoders) and the
deep encoders of the registry: MLPEncoder over rows, AttentionEncoder over
(seq, d) sequences, ResNetEncoder over (d, height, width) images, and their blocks.

Constructor arguments and parameter names are overcomplete 0.3's, so its encoders'
state_dicts load into these. Each returns (pre_codes, codes) as rows, one per token /
spatial position; encoders.py registers them by name ("mlp_ln_1", "attention_1b", ...).
"""

from __future__ import annotations

import inspect
import itertools
from abc import ABCMeta

import torch
import torch.nn.functional as F
from torch import nn

# overcomplete 0.3's TieableEncoder constructor: the interface a tieable encoder has
TIEABLE_ARGUMENTS = ("in_dimensions", "nb_concepts", "bias", "tied_to", "weight_init")


def has_tieable_interface(cls: type) -> bool:
    """Whether `cls` is an nn.Module built as overcomplete's TieableEncoder is (its
    constructor takes TIEABLE_ARGUMENTS, so instances carry `tied_to`, `weight` and
    `bias`) and defines its own forward (x -> (pre_codes, codes))."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        return False
    if getattr(cls, "forward", nn.Module.forward) is nn.Module.forward:
        return False
    try:
        parameters = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False
    return all(name in parameters for name in TIEABLE_ARGUMENTS)


class TieableEncoder(nn.Module, metaclass=ABCMeta):
    """overcomplete's linear encoder: pre = x @ W^T (+ bias), codes = ReLU(pre), where W
    is its own (nb_concepts, d) `weight`, or, with `tied_to` a DictionaryLayer, that
    dictionary's current atoms (then `weight` is None and nothing is copied).

    Same arguments as overcomplete 0.3 (weight_init: a (nb_concepts, d) tensor, else
    Xavier-uniform). The dictionary is held outside the module tree (`tied_to` reads it
    back), so a tied SAE's state_dict does not hold the atoms twice.

    isinstance / issubclass go by structure: overcomplete's own TieableEncoder (what its
    SAEs' `tied()` installs), or any module with the same constructor and a forward,
    counts as one, without sae-hooks importing overcomplete.
    """

    consumes_structure = False

    def __init__(
        self,
        in_dimensions: int,
        nb_concepts: int,
        bias: bool = False,
        tied_to: nn.Module | None = None,
        weight_init: torch.Tensor | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        self._tied = None if tied_to is None else (tied_to,)  # a tuple: not a submodule
        if tied_to is None:
            weight = torch.empty(nb_concepts, in_dimensions, device=device)
            with torch.no_grad():
                weight.copy_(weight_init) if weight_init is not None else nn.init.xavier_uniform_(
                    weight
                )
            self.weight = nn.Parameter(weight)
        elif not isinstance(getattr(type(self), "weight", None), property):
            self.register_parameter("weight", None)  # a subclass may read the atoms instead
        self.bias = nn.Parameter(torch.zeros(nb_concepts, device=device)) if bias else None

    @property
    def tied_to(self) -> nn.Module | None:
        """The dictionary whose atoms encode, None for an encoder with its own weight."""
        return None if self._tied is None else self._tied[0]

    def encoding_weight(self) -> torch.Tensor:
        """The (nb_concepts, d) matrix the forward uses."""
        return self.weight if self._tied is None else self._tied[0].get_dictionary()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = F.linear(x, self.encoding_weight(), self.bias)
        return pre, F.relu(pre)

    @classmethod
    def __subclasshook__(cls, subclass: type) -> bool:
        if cls is TieableEncoder and has_tieable_interface(subclass):
            return True
        return NotImplemented


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
