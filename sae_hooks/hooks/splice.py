"""Put SAEs into the forward pass, optionally editing their latents on the way.

At each spliced point the activation x (…, d) is flattened to rows, encoded to z,
optionally edited, decoded and reshaped back, in the SAE's dtype and device and then
cast back to the model's. The SAE runs in eval mode unless asked otherwise. With ``error_term`` the output is
``x + (decode(z_edited) - decode(z))`` — algebraically x_hat_edited + (x - x_hat) but
exact where nothing is edited, so only the edits move the model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from sae_hooks.devices import sae_device_dtype
from sae_hooks.hooks.lifetime import HookBlock
from sae_hooks.hooks.points import resolve_point
from sae_hooks.sae.modes import module_mode

Positions = Sequence[int] | torch.Tensor | None


class LatentEdit:
    """Base of the latent edits: change columns ``latents`` of z, at ``positions`` only.

    ``positions``: token positions (ints, negatives count from the end) or a bool mask
    (T,) or (B, T); None edits every position. Subclasses define :meth:`edit`.
    """

    latents: int | Sequence[int]
    positions: Positions

    def edit(self, values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Apply to latents z of shape (B, T, n) or (N, n); returns a new tensor."""
        index = _latent_index(self.latents, z.shape[-1], z.device)
        old = z[..., index]
        new = self.edit(old).to(z.dtype)
        if self.positions is not None:
            new = torch.where(_position_mask(self.positions, z), new, old)
        z = z.clone()
        z[..., index] = new
        return z


@dataclass(frozen=True)
class ZeroLatents(LatentEdit):
    """Ablate: set the latents to 0."""

    latents: int | Sequence[int]
    positions: Positions = None

    def edit(self, values: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(values)


@dataclass(frozen=True)
class ClampLatents(LatentEdit):
    """Clamp: set the latents to ``value`` whether they fired or not."""

    latents: int | Sequence[int]
    value: float
    positions: Positions = None

    def edit(self, values: torch.Tensor) -> torch.Tensor:
        return torch.full_like(values, self.value)


@dataclass(frozen=True)
class ScaleLatents(LatentEdit):
    """Scale the latents by ``factor`` (0 ablates, >1 amplifies what fired)."""

    latents: int | Sequence[int]
    factor: float
    positions: Positions = None

    def edit(self, values: torch.Tensor) -> torch.Tensor:
        return values * self.factor


@dataclass(frozen=True)
class AddToLatents(LatentEdit):
    """Steer: add ``amount`` to the latents, i.e. ``amount`` times their decoder
    directions to the reconstruction (decode is linear in z)."""

    latents: int | Sequence[int]
    amount: float
    positions: Positions = None

    def edit(self, values: torch.Tensor) -> torch.Tensor:
        return values + self.amount


Edits = LatentEdit | Sequence[LatentEdit] | None


@dataclass
class Splice:
    """What a splice yields: ``latents[point]`` is the (edited) code z, shaped like the
    activation with d replaced by nb_concepts, of the latest forward (``record_latents``)."""

    points: tuple[str, ...]
    latents: dict[str, torch.Tensor] = field(default_factory=dict)


def splice(
    model: nn.Module,
    point_or_mapping: str | Mapping[str, nn.Module],
    sae: nn.Module | None = None,
    *,
    error_term: bool = False,
    edit: Edits | Mapping[str, Edits] = None,
    record_latents: bool = False,
    sae_mode: Literal["eval", "train"] = "eval",
) -> HookBlock[Splice]:
    """Replace the activation at a point (or at each point of a mapping point -> SAE)
    with its SAE reconstruction for every forward inside the block.

    ``edit``: one LatentEdit or a list applied in order, for every point, or a mapping
    point -> edits. The SAEs run in eval mode (BatchTopK: its running threshold, so a
    token's codes do not depend on the rest of the batch); ``sae_mode="train"`` runs
    them in train mode instead, e.g. to fine-tune an SAE end to end through the model.
    Hooks are removed and each SAE gets its previous mode back on every exit path,
    Ctrl-C included; only forwards of the thread that entered the block are spliced.
    ``with splice(...) as s`` gives a :class:`Splice`.
    """
    training = _training(sae_mode)
    saes = _sae_mapping(point_or_mapping, sae)
    edits = _edit_mapping(edit, saes)
    locations = [resolve_point(model, p) for p in saes]
    handle = Splice(points=tuple(saes))
    hooks = []
    for loc in locations:
        point = loc.point
        hooks.append(
            (loc, _splicer(point, saes[point], edits[point], handle, error_term, record_latents))
        )
    unique = {id(each): each for each in saes.values()}.values()
    return HookBlock(hooks, handle, [module_mode(each, training=training) for each in unique])


def _training(sae_mode: str) -> bool:
    if sae_mode not in ("eval", "train"):
        raise ValueError(f"sae_mode must be 'eval' or 'train', got {sae_mode!r}")
    return sae_mode == "train"


def _splicer(
    point: str,
    sae: nn.Module,
    edits: list[LatentEdit],
    handle: Splice,
    error_term: bool,
    record_latents: bool,
) -> Callable[[torch.Tensor], torch.Tensor | None]:
    """The hook of one point: x -> the (edited) reconstruction, or None to keep x."""

    def run(x: torch.Tensor) -> torch.Tensor | None:
        d = x.shape[-1]
        if d != sae.input_size:
            raise ValueError(
                f"splice {point!r}: the activation has d={d} but the SAE's input_size "
                f"is {sae.input_size}"
            )
        device, dtype = sae_device_dtype(sae, like=x)
        rows = x.reshape(-1, d).to(device=device, dtype=dtype)
        _, z = sae.encode(rows)
        z_edit = _edited(z, x.shape[:-1], edits)
        if record_latents:
            handle.latents[point] = z_edit.detach().reshape(*x.shape[:-1], z.shape[-1])
        if error_term:
            if not edits:
                return None  # x + (x_hat - x_hat): leave the activation as it is
            delta = sae.decode(z_edit) - sae.decode(z)
            return x + delta.reshape(x.shape).to(device=x.device, dtype=x.dtype)
        return sae.decode(z_edit).reshape(x.shape).to(device=x.device, dtype=x.dtype)

    return run


def _edited(z: torch.Tensor, lead: torch.Size, edits: list[LatentEdit]) -> torch.Tensor:
    """Codes z (N, n) after the edits, applied with the activation's leading shape."""
    if not edits:
        return z
    z_edit = z.reshape(*lead, z.shape[-1])
    for e in edits:
        z_edit = e(z_edit)
    return z_edit.reshape(z.shape)


def splice_transcoder(
    model: nn.Module,
    input_point: str,
    output_point: str,
    transcoder: nn.Module,
    *,
    error_term: bool = False,
    edit: Edits = None,
    record_latents: bool = False,
    sae_mode: Literal["eval", "train"] = "eval",
) -> HookBlock[Splice]:
    """Replace the activation at `output_point` (an MLP's output, ``mlp_out.L``) with a
    transcoder's prediction from the activation at `input_point` (``mlp_in.L``) of the
    same forward, for every forward inside the block.

    ``error_term``: output + (prediction from the edited codes - prediction), i.e.
    the edited prediction plus the transcoder's error (true output - prediction): the
    clean forward exactly where nothing is edited. ``edit`` / ``record_latents`` /
    ``sae_mode`` as in :func:`splice` (latents are recorded under `output_point`).
    """
    training = _training(sae_mode)
    _check_transcoder(transcoder)
    edits = _edit_list(edit)
    source, target = resolve_point(model, input_point), resolve_point(model, output_point)
    handle = Splice(points=(output_point,))
    pending: list[torch.Tensor] = []

    def read(x: torch.Tensor) -> None:
        if x.shape[-1] != transcoder.input_size:
            raise ValueError(
                f"splice_transcoder {input_point!r}: the activation has d={x.shape[-1]} but the "
                f"transcoder's input_size is {transcoder.input_size}"
            )
        pending[:] = [x]

    def write(y: torch.Tensor) -> torch.Tensor | None:
        if not pending:
            raise RuntimeError(
                f"splice_transcoder: {output_point!r} ran before {input_point!r} in this forward; "
                "the input point must come first (e.g. mlp_in.L -> mlp_out.L)"
            )
        x = pending.pop()
        if x.shape[:-1] != y.shape[:-1] or y.shape[-1] != transcoder.output_size:
            raise ValueError(
                f"splice_transcoder: {input_point!r} {tuple(x.shape)} and {output_point!r} "
                f"{tuple(y.shape)} do not pair up with a transcoder {transcoder.input_size} -> "
                f"{transcoder.output_size}"
            )
        latents = handle.latents if record_latents else None
        return _transcoded(transcoder, x, y, edits, error_term, latents, output_point)

    hooks = [(source, read), (target, write)]
    return HookBlock(hooks, handle, [module_mode(transcoder, training=training)])


def _check_transcoder(transcoder: nn.Module) -> None:
    """Fail at splice time, naming what is missing, rather than mid-forward when an SAE
    (which has no ``predict``) is passed where a transcoder is meant."""
    missing = [
        a for a in ("encode", "predict", "input_size", "output_size") if not hasattr(transcoder, a)
    ]
    if missing:
        raise TypeError(
            f"splice_transcoder: {type(transcoder).__name__} is not a transcoder (lacks "
            f"{', '.join(missing)}); use sae_hooks.sae.Transcoder or SkipTranscoder"
        )


def _transcoded(
    transcoder: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    edits: list[LatentEdit],
    error_term: bool,
    latents: dict[str, torch.Tensor] | None,
    point: str,
) -> torch.Tensor | None:
    """The replacement for output `y` given input `x` of the same forward, kept apart from
    the hook so the error-term arithmetic reads on its own; None keeps `y` unchanged.
    Records the (edited) codes into `latents` under `point` when given."""
    device, dtype = sae_device_dtype(transcoder, like=x)
    rows = x.reshape(-1, x.shape[-1]).to(device=device, dtype=dtype)
    _, z = transcoder.encode(rows)
    z_edit = _edited(z, x.shape[:-1], edits)
    if latents is not None:
        latents[point] = z_edit.detach().reshape(*x.shape[:-1], z.shape[-1])
    if error_term:
        if not edits:
            return None  # y + (prediction - prediction): the MLP's own output
        delta = transcoder.predict(rows, z_edit) - transcoder.predict(rows, z)
        return y + delta.reshape(y.shape).to(device=y.device, dtype=y.dtype)
    return transcoder.predict(rows, z_edit).reshape(y.shape).to(device=y.device, dtype=y.dtype)


def _sae_mapping(point_or_mapping, sae) -> dict[str, nn.Module]:
    if isinstance(point_or_mapping, str):
        if sae is None:
            raise TypeError(f"splice({point_or_mapping!r}) needs an SAE: splice(model, point, sae)")
        saes = {point_or_mapping: sae}
    elif isinstance(point_or_mapping, Mapping):
        if sae is not None:
            raise TypeError("pass either splice(model, point, sae) or splice(model, {point: sae})")
        saes = dict(point_or_mapping)
        if not saes:
            raise ValueError("splice: the mapping point -> SAE is empty")
    else:
        raise TypeError(
            f"splice takes a hook point (str) or a mapping point -> SAE, got "
            f"{type(point_or_mapping).__name__}"
        )
    for point, s in saes.items():
        missing = [a for a in ("encode", "decode", "input_size") if not hasattr(s, a)]
        if missing:
            raise TypeError(
                f"splice {point!r}: {type(s).__name__} is not an SAE (lacks {', '.join(missing)}); "
                "it needs encode(x) -> (z_pre, z), decode(z) and input_size"
            )
    return saes


def _edit_mapping(edit, saes: Mapping[str, nn.Module]) -> dict[str, list[LatentEdit]]:
    if isinstance(edit, Mapping):
        unknown = set(edit) - set(saes)
        if unknown:
            raise ValueError(f"edits for {sorted(unknown)}, which are not spliced: {list(saes)}")
        return {p: _edit_list(edit.get(p)) for p in saes}
    edits = _edit_list(edit)
    return {p: edits for p in saes}


def _edit_list(edit: Edits) -> list[LatentEdit]:
    if edit is None:
        return []
    edits = [edit] if isinstance(edit, LatentEdit) else list(edit)
    for e in edits:
        if not isinstance(e, LatentEdit):
            raise TypeError(
                f"an edit must be a LatentEdit (ZeroLatents, ClampLatents, ScaleLatents, "
                f"AddToLatents), got {type(e).__name__}"
            )
    return edits


def _latent_index(latents: int | Sequence[int], n: int, device) -> torch.Tensor:
    index = torch.as_tensor([latents] if isinstance(latents, int) else list(latents))
    if index.ndim != 1 or index.numel() == 0 or index.dtype != torch.int64:
        raise ValueError(f"latents must be an int or a non-empty list of ints, got {latents!r}")
    if index.min() < 0 or index.max() >= n:
        raise ValueError(f"latents {latents!r} out of range: the SAE has {n} (0..{n - 1})")
    return index.to(device)


def _position_mask(positions: Positions, z: torch.Tensor) -> torch.Tensor:
    """A bool mask broadcastable to z[..., index] (B, T, k)."""
    if z.ndim != 3:
        raise ValueError(
            f"positions need (batch, tokens, d) activations; this one is {tuple(z.shape[:-1])}"
        )
    seq = z.shape[1]
    if isinstance(positions, torch.Tensor) and positions.dtype == torch.bool:
        if positions.shape not in ((seq,), (z.shape[0], seq)):
            raise ValueError(
                f"a position mask must be (T,) or (B, T) = {(z.shape[0], seq)}, "
                f"got {tuple(positions.shape)}"
            )
        mask = positions
    else:
        index = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        if ((index < -seq) | (index >= seq)).any():
            raise ValueError(f"positions {positions!r} out of range for {seq} tokens")
        mask = torch.zeros(seq, dtype=torch.bool)
        mask[index] = True
    return mask.to(z.device).unsqueeze(-1)
