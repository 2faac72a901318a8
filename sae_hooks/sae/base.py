"""The SAE base class (a plain ReLU SAE), its output type, and the registry of variants.

Variants override one step, `_sparsify(pre_codes, codes) -> z`; everything else
(reshaping to rows, centring and scaling the input, decoding) lives here, config / save
in the SAEPersistence mixin (saving.py); `load_sae` reads a saved SAE back through the
registry (persistence.py, above this module).
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from . import shapes, sparse
from .dictionary import DictionaryLayer, dictionary_kwargs
from .encoders import (
    TIED_ENCODERS,
    LinearEncoder,
    TiedEncoder,
    build_encoder,
    split_codes,
)
from .output import EncoderInputs, SAEOutput, TrainingSupport, kept_support
from .saving import FORMAT_VERSION as FORMAT_VERSION  # re-exported: base's old name
from .saving import SAEPersistence
from .sparse import (
    MAX_SPARSE_DENSITY,
    MAX_SPARSE_GRAD_DENSITY,
    LatentOrder,
    check_sparse_decode,
    decode_fixed,
    decode_pairs,
    decode_ragged,
)
from .sparse_encoder import PreCodeBuffer, encoder_pre_codes, gather_pre_codes, support_codes
from .training import TrainingContract

__all__ = ["SAE", "SAE_REGISTRY", "SAEOutput"]

SAE_REGISTRY: dict[str, type[SAE]] = {}
"""architecture name -> class; filled by every SAE subclass that sets `architecture`."""


class SAE(SAEPersistence, TrainingContract, nn.Module):
    """Sparse autoencoder with ReLU codes: z = ReLU(W_enc (x*s - b_dec) + b_enc).

    input_shape: d, (seq, d) or (d, height, width). A row encoder (the default) reads
    rows of d (channels-first images moved channels-last; any sequence length or
    image size, only d is checked); a structure encoder (attention, ResNet, or a
    user's module when input_shape is a tuple) reads (B, seq, d) / (B, d, H, W) and
    returns one row per token / position (see shapes.py). `z_pre` and `z` are rows
    (N, nb_concepts); `x_hat` comes back in the input's shape for a row encoder and as
    rows (N, d) beside the codes for a structure encoder, as overcomplete's SAEs (and its
    train_sae / losses) have it; `reconstruct(x)` is x_hat in x's shape for every encoder.
    encoder_module: None ("linear"), a name registered in ENCODERS, or an nn.Module
    whose forward returns (pre_codes, codes) or just pre_codes.
    dictionary_params: keyword arguments of DictionaryLayer (normalization,
    initializer, use_multiplier, device, use_bias).
    `input_scale` (buffer): the encoder sees x * input_scale - b_dec and x_hat is
    divided by it, so an SAE trained on normalised rows runs on raw activations.
    How the trainer treats a variant (penalty, budget, init) is declared through
    `TrainingContract` (sae/training.py); config / save / from_config / load_weights
    come from `SAEPersistence` (sae/saving.py).
    """

    architecture: ClassVar[str] = "relu"
    selection: ClassVar[str] = "ReLU: codes > 0"
    """How the variant picks its codes at inference (eval mode), in words: `sae-hooks
    eval` prints it next to L0."""
    sparse_decode: bool | None = None
    """None: decode only the active latents when the variant's code density is known
    to be at most MAX_SPARSE_DENSITY (TopK, BatchTopK); True / False force it on / off
    where the result cannot differ (see `_decodes_sparsely`). A speed switch only."""
    check_finite: bool = False
    """True: encode / forward refuse input holding NaN or inf with a ValueError. Off by
    default: the check waits for the device once per call. Training never needs it (stores
    and the train sources refuse non-finite rows), nor does `load_sae` (it refuses
    non-finite weights); turn it on for activations of unknown origin."""
    sparse_encoder_grad: bool | None = None
    """The encoder's twin of sparse_decode: None: back-propagate into the linear encoder
    through the kept codes only (sae/sparse_encoder.py) when the variant's code density
    is at most MAX_SPARSE_GRAD_DENSITY; True / False force it on / off. Variants that
    select codes (TopK, BatchTopK, JumpReLU) use it; a speed switch only."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("architecture")
        if name is not None:
            if name in SAE_REGISTRY and SAE_REGISTRY[name].__qualname__ != cls.__qualname__:
                raise ValueError(
                    f"architecture {name!r} is already registered by {SAE_REGISTRY[name]}"
                )
            SAE_REGISTRY[name] = cls

    def __init__(
        self,
        input_shape: int | tuple[int, ...],
        nb_concepts: int,
        encoder_module: str | nn.Module | None = None,
        dictionary_params: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        self.input_shape = shapes.check_input_shape(input_shape)
        self.input_size = shapes.channel_width(self.input_shape)
        self.nb_concepts = shapes.positive_int("nb_concepts", nb_concepts)
        tied = isinstance(encoder_module, str) and encoder_module in TIED_ENCODERS
        self.encoder, self._encoder_name, self._structured = build_encoder(
            None if tied else encoder_module, self.input_shape, nb_concepts, device
        )
        params = dictionary_kwargs(dictionary_params, device)
        self.dictionary = DictionaryLayer(self.input_size, nb_concepts, **params)
        if tied:
            self.tied(bias=TIED_ENCODERS[encoder_module])
        self.register_buffer("input_scale", torch.ones((), device=device))

    # -- the model ---------------------------------------------------------------

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_pre, z), both (N, nb_concepts) with one row per token / pixel of x."""
        return self._encode_rows(self._to_rows(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Rows (N, d) in the scale of the raw input."""
        return self.unscaled(self._decode_rows(z, from_forward=False))

    def forward(self, x: torch.Tensor) -> SAEOutput:
        """SAEOutput(z_pre, z, x_hat), with its `support` where the forward recorded one."""
        out = self._forward_rows(self._to_rows(x))
        x_hat = self.unscaled(out.x_hat)
        if not self._structured:
            x_hat = self._from_rows(x_hat, x.shape)
        return SAEOutput(out.z_pre, out.z, x_hat, out.support)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x_hat in x's shape (images channels-first), whatever the encoder's layout."""
        return self._from_rows(self(x).x_hat, x.shape)

    def get_dictionary(self) -> torch.Tensor:
        """The normalised atoms, (nb_concepts, d)."""
        return self.dictionary.get_dictionary()

    def sparsity_loss(self, out: SAEOutput) -> torch.Tensor:
        """L1 of the codes weighted by their atoms' norms, summed over latents, mean over rows
        (over the kept codes alone when the forward recorded them: no (rows, n) pass)."""
        norms = self.get_dictionary().norm(dim=-1)
        support = kept_support(out)
        if support is not None:
            weighted = support.values * norms.index_select(0, support.cols)
            return weighted.sum() / max(out.z.shape[0], 1)
        return (out.z * norms).sum(dim=-1).mean()

    def scaled(self, rows: torch.Tensor) -> torch.Tensor:
        """rows * input_scale, or rows themselves where the scale is 1 on the host (the
        trainer's): the multiply and its backward are two passes over the batch for an
        identity (2,048 x 768: ~0.7 ms of a step). Elsewhere reading the scale would
        make the host wait for the device."""
        return rows if self._unit_scale() else rows * self.input_scale

    def unscaled(self, rows: torch.Tensor) -> torch.Tensor:
        """rows / input_scale, or rows themselves where the scale is 1 on the host."""
        return rows if self._unit_scale() else rows / self.input_scale

    def _unit_scale(self) -> bool:
        scale = self.input_scale
        if scale.device.type not in sparse.HOST_DEVICES or torch.compiler.is_compiling():
            return False  # reading it: a device sync, or a graph break under torch.compile
        return scale.item() == 1.0

    def _encode_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre, codes = self._pre_codes(rows)
        return pre, self._sparsify(pre, codes)

    def _pre_codes(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bias = self.dictionary.bias
        scale = self.input_scale
        enc = self.encoder
        if self._structured:
            return shapes.structured_codes(enc, rows, bias, scale, self.nb_concepts)
        if type(enc) is LinearEncoder and bias is not None and not _autocasting(rows):
            # W (x s - b_dec) + b_enc, with b_dec folded into the encoder's bias: b_dec's
            # gradient is then one (n,) @ (n, d) product, where centring the input first
            # makes autograd run a full (rows, n) @ (n, d) matmul for it. Under autocast
            # the input is centred instead (below): a large activation mean would cancel
            # between W x and W b_dec after their rounding to bf16.
            b_enc = -(enc.weight @ bias) if enc.bias is None else enc.bias - enc.weight @ bias
            pre = F.linear(self.scaled(rows), enc.weight, b_enc)
            return pre, F.relu(pre)
        centred = rows * scale if bias is None else torch.addcmul(-bias, rows, scale)
        return split_codes(enc(centred))

    def _sparsify(self, pre: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return codes

    def _sparse_pre_codes(
        self, rows: torch.Tensor, *, measured: bool = False
    ) -> tuple[torch.Tensor, EncoderInputs] | None:
        """(pre, inputs): dense pre-codes (N, n) whose kept entries the variant reads with
        `sparse_encoder.gather_pre_codes(pre, rows, cols, inputs)`, so that the encoder's
        gradient is computed from them alone; None where that path does not apply
        (another encoder, a structured input, no gradient wanted, or a density above the
        cut-off). The forward's output carries `inputs` on (AuxK reads through them).
        measured: the variant counts its support after the matmul and falls back to
        the dense path itself (JumpReLU), so no density by construction is needed.

        Under autocast the input is centred in fp32 before the matmul (exact under bf16
        autocast); outside it, in the parameters' dtype (`_to_rows` cast it), which the
        matmul's weights share. b_dec's gradient is then -(per-latent sums of the kept
        gradients) @ W_enc.
        """
        enc, bias = self.encoder, self._input_centre()
        if self._structured or type(enc) is not LinearEncoder or not torch.is_grad_enabled():
            return None
        forced = check_sparse_decode(self.sparse_encoder_grad, "sparse_encoder_grad")
        if forced is False or rows.dim() != 2 or rows.shape[0] == 0:
            return None
        if forced is None and not measured:
            density = self._code_density(rows.new_empty(()).expand(len(rows), self.nb_concepts))
            if density is None or density > MAX_SPARSE_GRAD_DENSITY:
                return None
        if _autocasting(rows):  # centred in fp32, then autocast's matmul rounds it once
            rows = rows.to(torch.promote_types(rows.dtype, torch.float32))
        scaled = self.scaled(rows)
        buffer = self._pre_codes_buffer if self._sparse_codes else None  # the trainer's steps
        pre = encoder_pre_codes(scaled, bias, enc.weight, enc.bias, buffer)
        return pre, EncoderInputs(scaled, bias, enc.weight, enc.bias)

    @property
    def _pre_codes_buffer(self) -> PreCodeBuffer:
        """The matrix the trainer's forwards write their pre-codes into (sparse_encoder.py)."""
        buffer = self.__dict__.get("_pre_buffer")
        if buffer is None:
            buffer = self.__dict__["_pre_buffer"] = PreCodeBuffer()
        return buffer

    def _input_centre(self) -> torch.Tensor | None:
        """What the encoder subtracts from the scaled input: b_dec (None for a variant
        whose b_dec lives in another space, a transcoder's output)."""
        return self.dictionary.bias

    # -- decoding, dense or sparse ---------------------------------------------------

    def _forward_rows(self, rows: torch.Tensor) -> SAEOutput:
        """SAEOutput(z_pre, z, x_hat before dividing by input_scale, support); TopK
        overrides it to decode from the top-k indices it already has."""
        through_support = self._relu_through_support(rows)
        if through_support is not None:
            return through_support
        z_pre, z = self._encode_rows(rows)
        return SAEOutput(z_pre, z, self._decode_rows(z))

    def _relu_through_support(self, rows: torch.Tensor) -> SAEOutput | None:
        """A ReLU SAE with a gradient, through its positive codes when they are few.

        ReLU passes gradient only where z_pre > 0, so those pairs alone go through the
        sparse encoder backward and the sparse decoder (a trained ReLU SAE fires a few
        dozen of thousands of latents); the positive codes are counted after the matmul
        (one host sync on CUDA). None (the dense path) for a variant with its own
        selection, another encoder, or above MAX_SPARSE_GRAD_DENSITY of the codes."""
        if type(self)._sparsify is not SAE._sparsify:
            return None
        found = self._sparse_pre_codes(rows, measured=True)
        if found is None:
            return None
        pre, inputs = found
        with torch.no_grad():
            positive = pre.detach() > 0
            # count_nonzero: a bool tensor's sum() widens it to int64 first (two
            # (rows, n) fp32 matrices of memory, 9x the time here)
            dense = int(positive.count_nonzero()) > MAX_SPARSE_GRAD_DENSITY * pre.numel()
        if dense and self.sparse_encoder_grad is None:  # counted first: no huge nonzero
            z = F.relu(pre)
            return SAEOutput(pre, z, self._decode_rows(z), TrainingSupport(encoder_inputs=inputs))
        flat_rows, cols = positive.nonzero(as_tuple=True)
        order = LatentOrder(flat_rows, cols)
        values = gather_pre_codes(pre, flat_rows, cols, inputs, order)  # all > 0: ReLU is identity
        return self._codes_from_pairs(pre, inputs, flat_rows, cols, values, order=order)

    def _codes_from_pairs(
        self,
        pre: torch.Tensor,
        inputs: EncoderInputs,
        rows: torch.Tensor,
        cols: torch.Tensor,
        values: torch.Tensor,
        *,
        max_density: float = MAX_SPARSE_DENSITY,
        penalty: torch.Tensor | None = None,
        order: LatentOrder | None = None,
    ) -> SAEOutput:
        """The output from the kept (row, col, value) pairs of a measured support: the
        codes with their support recorded (and the variant's penalty, if any), the pairs
        decoded sparsely unless sparse_decode is False or (by default) they exceed
        max_density of the codes."""
        dense_decode = check_sparse_decode(self.sparse_decode) is False or (
            self.sparse_decode is None and cols.numel() > max_density * pre.numel()
        )
        sparse = self._sparse_codes and not dense_decode
        z, kept = support_codes(pre, rows, cols, values, sparse=sparse)
        support = TrainingSupport(kept, inputs, penalty)
        if dense_decode:
            return SAEOutput(pre, z, self.dictionary.decode(z), support)
        atoms, bias = self.get_dictionary(), self.dictionary.bias
        x_hat = decode_pairs(rows, cols, values, atoms, bias, n_rows=pre.shape[0], order=order)
        return SAEOutput(pre, z, x_hat, support)

    def _decode_rows(
        self,
        z: torch.Tensor,
        support: tuple[torch.Tensor, ...] | None = None,
        *,
        from_forward: bool = True,
        order: LatentOrder | None = None,
    ) -> torch.Tensor:
        """z @ atoms + b_dec; support, when the caller knows it: (indices, values), k per
        row (N, k) each, or (rows, cols, values), flat and row-major; order: its pairs'
        `LatentOrder` when the encoder's backward sorts them too."""
        if not self._decodes_sparsely(z, from_forward):
            return self.dictionary.decode(z)
        atoms, bias = self.get_dictionary(), self.dictionary.bias
        if support is not None and len(support) == 3:
            return decode_pairs(*support, atoms, bias, n_rows=z.shape[0], order=order)
        if support is not None:
            return decode_fixed(*support, atoms, bias, order=order)
        rows = decode_ragged(z.reshape(-1, z.shape[-1]), atoms, bias)
        return rows.reshape(*z.shape[:-1], rows.shape[-1])

    def _decodes_sparsely(self, z: torch.Tensor, from_forward: bool) -> bool:
        forced = check_sparse_decode(self.sparse_decode)
        if z.numel() == 0 or z.shape[-1] != self.nb_concepts:
            return False  # nothing to gain; a wrong width gets the dense path's error
        density = self._code_density(z)
        # The sparse path's gradient reaches only the non-zero codes (and the atoms).
        # Inside forward that is the whole gradient for TopK / BatchTopK: their selection
        # passes none to the other codes. Not so for codes the caller of decode(z)
        # differentiates (d x_hat / d z_j is atom j, active or not), nor for JumpReLU,
        # whose threshold gradient reads the zeroed codes just below the threshold.
        exact_grad_needed = not (from_forward and density is not None)
        if exact_grad_needed and z.requires_grad and torch.is_grad_enabled():
            return False
        if forced is not None:
            return forced
        return density is not None and density <= MAX_SPARSE_DENSITY

    def _code_density(self, z: torch.Tensor) -> float | None:
        """Share of non-zero codes by construction; None when only the data decides (ReLU)."""
        return None

    @torch.no_grad()
    def tie_encoder_to_dictionary_(self, *, warn: bool = True) -> bool:
        """W_enc = W_dec^T and b_enc = 0, the init every strong SAE recipe uses.

        Applies to an encoder whose `weight` has the dictionary's (nb_concepts, d)
        layout (the default linear encoder, an nn.Linear); for any other nothing
        changes and False comes back, with a warning unless warn=False.
        """
        weight = getattr(self.encoder, "weight", None)
        atoms = self.get_dictionary()
        if not isinstance(weight, torch.Tensor) or weight.shape != atoms.shape:
            if warn:
                warnings.warn(
                    f"tie_encoder_to_dictionary_: the encoder ({type(self.encoder).__name__}) "
                    f"has no weight of shape {tuple(atoms.shape)}; nothing was tied",
                    stacklevel=2,
                )
            return False
        weight.copy_(atoms)
        bias = getattr(self.encoder, "bias", None)
        if isinstance(bias, torch.Tensor):
            bias.zero_()
        return True

    # -- rows in, rows out ---------------------------------------------------------

    def _to_rows(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder reads: rows (N, d), or (B, *input_shape) for a structure encoder."""
        if self.check_finite and isinstance(x, torch.Tensor) and not bool(x.isfinite().all()):
            raise ValueError(
                f"{type(self).__name__} input holds {int((~x.isfinite()).sum())} NaN or "
                f"infinite values (check_finite=True); shape {tuple(x.shape)}"
            )
        return shapes.encoder_input(
            x, self.input_shape, self._structured, type(self).__name__, self.dictionary.weight.dtype
        )

    def _from_rows(self, rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return shapes.from_rows(rows, shape, self.input_size)

    # -- seed API: tied / untied encoders ------------------------------------------------

    def tied(self, bias: bool = False) -> SAE:
        """Encode with the dictionary's transpose, pre = (x s - b_dec) @ D^T (+ a bias):
        the encoder has no weight of its own from now on. Returns self."""
        self.encoder = TiedEncoder(self.dictionary, bias=bias)
        self._encoder_name, self._structured = ("tied_bias" if bias else "tied"), False
        return self

    @torch.no_grad()
    def untied(self, bias: bool = False, copy_from_dictionary: bool = True) -> SAE:
        """A linear encoder with its own weight: a copy of the current atoms, or a fresh
        Xavier-uniform init when copy_from_dictionary=False; a zero bias if bias. Returns self."""
        atoms = self.get_dictionary()
        enc = LinearEncoder(self.input_size, self.nb_concepts, device=atoms.device, bias=bias).to(
            atoms.dtype
        )
        if copy_from_dictionary:
            enc.weight.copy_(atoms)
        else:
            nn.init.xavier_uniform_(enc.weight)
        if enc.bias is not None:
            enc.bias.zero_()
        self.encoder = enc
        self._encoder_name = "linear" if bias else "linear_nobias"
        self._structured = False
        return self


SAE_REGISTRY[SAE.architecture] = SAE


def _autocasting(rows: torch.Tensor) -> bool:
    return torch.is_autocast_enabled(rows.device.type)
