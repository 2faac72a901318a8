"""Input shapes and sizes: what the encoder reads, how x_hat goes back to the input's
shape, and the checks of the sizes an SAE is built with (`check_input_shape`,
`positive_int`).

input_shape is d, (seq, d) or (d, height, width) (overcomplete's convention: the
channel width d comes last for sequences, first for images). A row encoder reads
rows (N, d): tokens, or pixels moved channels-last. A structure encoder (attention,
ResNet, a user's module on a (seq, d) / (d, h, w) SAE) reads the batch in its own
shape, (B, seq, d) or (B, d, H, W), and returns one row of codes per token /
position. Either way the dictionary decodes rows, and x_hat is put back in x's shape.
"""

from __future__ import annotations

import torch

from .encoders import split_codes


def positive_int(name: str, value: object) -> int:
    """value, checked to be a positive int (not a bool): a size such as nb_concepts."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_input_shape(shape: object) -> tuple[int, ...]:
    """input_shape as a tuple: d, (seq, d) or (d, height, width) of positive ints."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if (
        isinstance(shape, (tuple, list, torch.Size))
        and 1 <= len(shape) <= 3
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    ):
        return tuple(shape)
    raise ValueError(
        "input_shape must be a positive int d, or a tuple (seq, d) or (d, height, width) "
        f"of positive ints, got {shape!r}"
    )


def channel_width(input_shape: tuple[int, ...]) -> int:
    """d: the width the dictionary decodes (first of three dims, else last)."""
    return input_shape[0] if len(input_shape) == 3 else input_shape[-1]


def encoder_input(
    x: object,
    input_shape: tuple[int, ...],
    structured: bool,
    owner: str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """x as the encoder reads it: rows (N, d), or (B, *input_shape) when `structured`,
    cast to the SAE's floating dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"SAE input must be a torch.Tensor, got {type(x).__name__}")
    d = channel_width(input_shape)
    if structured:
        axis = 1 if len(input_shape) == 3 else -1
        ok = x.dim() == len(input_shape) + 1 and x.shape[axis] == d
        out = x
    elif x.dim() == 2 and x.shape[1] == d:
        ok, out = True, x
    elif len(input_shape) == 3 and x.dim() == 4 and x.shape[1] == d:
        ok, out = True, x.movedim(1, -1).reshape(-1, d)
    elif len(input_shape) < 3 and x.dim() >= 1 and x.shape[-1] == d:
        ok, out = True, x.reshape(-1, d)
    else:
        ok = False
    if not ok:
        raise ValueError(
            f"{owner} expects input of shape {expected_shapes(input_shape, structured)}, "
            f"got {tuple(x.shape)}"
        )
    if out.dtype != dtype:
        if not out.is_floating_point():
            raise TypeError(f"SAE input must be floating point, got {out.dtype}")
        out = out.to(dtype)
    return out


def structured_codes(
    encoder: torch.nn.Module,
    x: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor,
    nb_concepts: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre_codes, codes) as rows from an encoder that reads (B, seq, d) / (B, d, H, W).

    The input is centred like the rows are (x * scale - b_dec, b_dec along the
    channel axis), and the codes must come back one row per token / position.
    """
    if bias is None:
        centred = x * scale
    else:
        b = bias.reshape(-1, 1, 1) if x.dim() == 4 else bias
        centred = torch.addcmul(-b, x, scale)
    pre, codes = split_codes(encoder(centred))
    n_rows = x.shape[0] * (x.shape[1] if x.dim() == 3 else x.shape[2] * x.shape[3])
    rows = []
    for name, t in (("pre_codes", pre), ("codes", codes)):
        if (
            not isinstance(t, torch.Tensor)
            or t.shape[-1] != nb_concepts
            or t.numel() != (n_rows * nb_concepts)
        ):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(
                f"the encoder must return {name} with one row of {nb_concepts} codes per "
                f"token / position, ({n_rows}, {nb_concepts}) for this batch, got {got}"
            )
        rows.append(t.reshape(n_rows, nb_concepts))
    return rows[0], rows[1]


def from_rows(rows: torch.Tensor, shape: torch.Size, d: int) -> torch.Tensor:
    """Decoded rows (N, d) back in the input's shape (images channels-first again)."""
    if rows.shape == shape:
        return rows
    if len(shape) == 4:
        b, _, h, w = shape
        return rows.reshape(b, h, w, d).movedim(-1, 1)
    return rows.reshape(shape)


def expected_shapes(input_shape: tuple[int, ...], structured: bool = False) -> str:
    d = channel_width(input_shape)
    if len(input_shape) == 3:
        _, h, w = input_shape
        if structured:
            return f"(B, {d}, H, W) e.g. (B, {d}, {h}, {w})"
        return f"(N, {d}) or (B, {d}, H, W) e.g. (B, {d}, {h}, {w})"
    if len(input_shape) == 2:
        if structured:
            return f"(B, T, {d}) e.g. (B, {input_shape[0]}, {d})"
        return f"(N, {d}) or (B, T, {d}) e.g. (B, {input_shape[0]}, {d})"
    return f"(N, {d}) or (..., {d})"
