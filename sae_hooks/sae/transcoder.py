"""Transcoders (Dunefsky, Chlenski & Nanda 2024): an SAE that reads a layer's MLP
input and predicts its MLP output, y_hat = D z(x) + b_dec, so the MLP can be replaced
by a sparse map; and skip transcoders (Paulo, Shabalin & Belrose 2025), which add a
linear term W_skip x learnt jointly: y_hat = D z(x) + W_skip x + b_dec.

A transcoder is a variant's selection applied to a paired model: `PairedMixin` (here)
holds everything paired (the output width, the two scales, the skip term, the
training pairs) and goes in front of any SAE variant's class, which keeps its codes,
its penalty or budget and its training contract. `Transcoder` / `SkipTranscoder` are
the ReLU ones, z = ReLU(W_enc x s + b_enc) with the L1 penalty (or `target_l0`);
sae/transcoder_variants.py composes TopK, BatchTopK and JumpReLU the same way. Unlike
an SAE the encoder does not centre its input on b_dec: b_dec lives in the output
space, whose width `output_size` may differ.
`input_scale` s scales both sides (the trainer uses one scale for the input and
the target) and `output_scale` r rescales the target on top of it, set from
data so that the target too has E||y s r||^2 = d_out in training: an MLP's output is
often far smaller than its (normalised) input. In training (`set_input_scale(1,
training=True)`) the prediction D z + W_skip x s + b_dec is compared with y s r as it
is; a trained transcoder maps raw MLP inputs to raw MLP outputs:
y_hat = (D z + W_skip x s + b_dec) / (s r), so its FVU on raw rows is the val/fvu
of its training log.

Training batches are `RowPair`s (x, y) of input and target rows (TrainConfig.point
and target_point; sae_hooks/activations.py); see `training_pair`. Splice with
`sae_hooks.hooks.splice_transcoder`, evaluate with `sae_hooks.eval.evaluate_transcoder`.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import SAE, SAEOutput
from .dictionary import DictionaryLayer
from .encoders import LinearEncoder
from .shapes import positive_int


class PairedMixin:
    """Makes the SAE variant after it in the bases a transcoder: x (N, input_size) ->
    codes z (N, nb_concepts) -> y_hat (N, output_size).

    encode / decode / forward / get_dictionary keep the SAE API (forward's `x_hat` is
    the predicted output); `predict(x, z)` is the output for input rows x with codes z
    (edited, for a splice). Only the default linear encoder is supported. The
    variant's constructor takes its own arguments; `output_size` is keyword-only here.
    """

    synthetic_opt_out = (
        "it predicts a target from paired data, not a reconstruction; "
        "tests/test_transcoder.py checks it recovers a known sparse map"
    )
    paired = True
    skip_connection = False
    """True for a skip transcoder: a linear term W_skip x s (output_size, input_size),
    initialised at zero and trained with the rest, is added to the prediction."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A class that does not write its own __init__ gets the variant's signature
        plus the keyword `output_size`: `from_config` (saving.py) reads the saved
        config's keys off the constructor's signature."""
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__ or PairedMixin not in cls.__bases__:
            return
        variant = next(
            c for c in cls.__mro__[cls.__mro__.index(PairedMixin) + 1 :] if "__init__" in c.__dict__
        )
        signature = inspect.signature(variant.__init__)
        output_size = inspect.Parameter(
            "output_size", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="int | None"
        )

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            PairedMixin.__init__(self, *args, **kwargs)

        __init__.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*signature.parameters.values(), output_size]
        )
        __init__.__doc__ = f"{variant.__name__}'s arguments, and output_size (default: d)."
        cls.__init__ = __init__  # type: ignore[method-assign]

    def __init__(
        self,
        input_shape: int | tuple[int, ...],
        nb_concepts: int,
        *args: Any,
        output_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        encoder = kwargs.get("encoder_module")
        if encoder not in (None, "linear"):
            raise ValueError(
                f"a transcoder has the default linear encoder; got encoder_module={encoder!r}"
            )
        super().__init__(input_shape, nb_concepts, *args, **kwargs)
        if type(self.encoder) is not LinearEncoder:  # given positionally
            raise ValueError("a transcoder has the default linear encoder")
        if len(self.input_shape) != 1:
            raise ValueError(
                f"a transcoder reads rows: input_shape must be an int d, got {input_shape!r}"
            )
        self.output_size = (
            self.input_size if output_size is None else positive_int("output_size", output_size)
        )
        device = self.dictionary.weight.device
        if self.output_size != self.input_size:
            self.dictionary = _output_dictionary(self.dictionary, self.output_size, kwargs)
        self.register_buffer("output_scale", torch.ones((), device=device))
        self._training_scale = False  # outputs in the training targets' scale (y s r)
        if self.skip_connection:
            shape = (self.output_size, self.input_size)
            self.W_skip = nn.Parameter(torch.zeros(shape, device=device))

    # -- the model -------------------------------------------------------------------

    def _pre_codes(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.encoder
        pre = F.linear(self.scaled(rows), enc.weight, enc.bias)
        return pre, F.relu(pre)

    def _input_centre(self) -> None:
        return None  # b_dec is in the output space

    def _forward_rows(self, rows: torch.Tensor) -> SAEOutput:
        """The variant's forward (its selection, its sparse paths), plus the skip term."""
        out = super()._forward_rows(rows)
        if not self.skip_connection:
            return out
        return SAEOutput(out.z_pre, out.z, out.x_hat + self._skip(rows), out.support)

    def _skip(self, rows: torch.Tensor) -> torch.Tensor | float:
        """The linear skip term in the training scale; none for a plain transcoder."""
        if not self.skip_connection:
            return 0.0
        return F.linear(self.scaled(rows), self.W_skip)

    def forward(self, x: torch.Tensor) -> SAEOutput:
        out = self._forward_rows(self._to_rows(x))
        y = self._raw(out.x_hat).reshape(*x.shape[:-1], self.output_size)
        return SAEOutput(out.z_pre, out.z, y, out.support)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """D z + b_dec in the raw output scale (no skip term: see `predict`)."""
        return self._raw(self._decode_rows(z, from_forward=False))

    def _raw(self, y: torch.Tensor) -> torch.Tensor:
        """The prediction in the output's scale: raw (divided by s r), or in training
        that of `training_pair`'s targets (y s r, input_scale = 1: unchanged)."""
        if self._training_scale:
            return self.unscaled(y)
        return y / (self.input_scale * self.output_scale)

    def set_input_scale(self, scale: float, *, training: bool = False) -> None:
        super().set_input_scale(scale, training=training)
        self._training_scale = training

    def predict(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """The predicted output (N, output_size) for input rows x (raw scale), from codes
        z when given (e.g. edited), else from x's own codes."""
        rows = self._to_rows(x)
        if z is None:
            z = self._encode_rows(rows)[1]
        return self._raw(self._decode_rows(z, from_forward=False) + self._skip(rows))

    def _to_rows(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"{type(self).__name__} reads rows of width input_size={self.input_size}, "
                f"got {tuple(x.shape)}"
            )
        return x.reshape(-1, self.input_size).to(self.dictionary.weight.dtype)

    # -- training ----------------------------------------------------------------------

    def training_pair(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """A RowPair (x, y) of input and target rows -> (x, y in the training scale)."""
        x, y = batch if isinstance(batch, tuple) and len(batch) == 2 else (batch, None)
        widths = (self.input_size, self.output_size)
        if y is None or (x.shape[-1], y.shape[-1]) != widths:
            got = f"widths {(x.shape[-1], y.shape[-1])}" if y is not None else "one tensor"
            raise ValueError(
                f"a transcoder trains on (input, target) row pairs of widths {widths}, got "
                f"{got}: train it on a paired source (TrainConfig.point and target_point, or "
                "an (inputs, targets) tensor pair)"
            )
        return x, y * self.output_scale

    @torch.no_grad()
    def init_from_data(self, sample: Any, config: Any) -> None:
        """output_scale r so that the (already scaled) targets have E||y r||^2 = d_out;
        b_dec, set by the trainer from the targets at r = 1, is scaled along. Then the
        variant's own init (thresholds, encoder bias) from the input rows."""
        x, y = self.training_pair(sample)
        if getattr(config, "normalize_activations", True):
            msn = float(y.double().pow(2).sum(-1).mean())
            if msn > 0:
                r = (self.output_size / msn) ** 0.5
                self.output_scale.mul_(r)
                if self.dictionary.bias is not None:
                    self.dictionary.bias.mul_(r)
        super().init_from_data(x, config)

    @torch.no_grad()
    def tie_encoder_to_dictionary_(self, *, warn: bool = True) -> bool:
        """W_enc = W_dec^T is an SAE's init, meaningless between two spaces: a transcoder
        keeps its own encoder init (the trainer calls this for every variant)."""
        return False

    def _variant_config(self) -> dict[str, Any]:
        return {**super()._variant_config(), "output_size": self.output_size}


def _output_dictionary(
    dictionary: DictionaryLayer, output_size: int, kwargs: dict[str, Any]
) -> DictionaryLayer:
    """A dictionary like `dictionary` (same normalisation, bias, multiplier and the
    given initializer) whose atoms have the output's width."""
    params = dict(kwargs.get("dictionary_params") or {})
    params.pop("device", None)
    return DictionaryLayer(
        output_size,
        dictionary.nb_concepts,
        normalization=params.get("normalization", dictionary.normalization),
        initializer=params.get("initializer"),
        use_multiplier=dictionary.use_multiplier,
        device=dictionary.weight.device,
        use_bias=dictionary.use_bias,
    )


class Transcoder(PairedMixin, SAE):
    """A ReLU transcoder (L1 penalty or target_l0); see `PairedMixin`."""

    architecture = "transcoder"

    def __init__(
        self,
        input_shape: int | tuple[int, ...],
        nb_concepts: int,
        output_size: int | None = None,
        encoder_module: str | nn.Module | None = None,
        dictionary_params: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(
            input_shape,
            nb_concepts,
            output_size=output_size,
            encoder_module=encoder_module,
            dictionary_params=dictionary_params,
            device=device,
        )


class SkipTranscoder(Transcoder):
    """A transcoder plus a linear skip connection from input to output, W_skip
    (output_size, input_size), initialised at zero and trained with the rest."""

    architecture = "skip_transcoder"
    skip_connection = True
