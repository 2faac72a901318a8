"""What `sae_hooks.train` needs to know about an SAE variant, declared by the variant.

The trainer holds no architecture name: it asks the SAE class for its sparsity
penalty and the TrainConfig coefficient that weights it, its Adam betas, whether
AuxK is on by default, how its top_k budget is counted, how it is built from a
TrainConfig, how its budget splits over data-parallel ranks, how it is
initialised from data, what a training batch holds (rows, or a pair of input and
target rows: transcoders) and its reconstruction loss (Matryoshka: summed over
prefixes). `SAE` inherits these defaults (those of a plain ReLU SAE with an L1
penalty); a variant overrides what differs, so adding one is one file
in sae/ and its `architecture` name (the registration). A variant's own settings
(top_k, JumpReLU's kernel, ...) are its `config_class` (sae/settings.py), which the run
carries as `variant`.

`config` below is a resolved run, `TrainRun`: what a variant reads of it. sae/ imports
nothing from train/; `sae_hooks.train.TrainConfig` is one such run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from .settings import VariantConfig

Gather = Callable[[torch.Tensor], torch.Tensor]
"""Every data-parallel rank's tensor concatenated along dim 0 (`ProcessRank.all_gather`)."""


def squared_error(err: torch.Tensor) -> torch.Tensor:
    """err.pow(2).sum(-1).mean() (N, d) -> (), whose backward is one pass, err * 2g / N:
    autograd's chain (mean, sum, pow) ran three over the batch, copying err once
    (2,048 x 768: 1.1 ms against 0.3, every step)."""
    return _SquaredError.apply(err)


class _SquaredError(torch.autograd.Function):
    @staticmethod
    def forward(err: torch.Tensor) -> torch.Tensor:
        return err.pow(2).sum(-1).mean()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (err,) = ctx.saved_tensors
        rows = err.numel() // err.shape[-1] if err.dim() else 1
        return err * (grad * (2 / max(rows, 1))).to(err.dtype)


class TrainRun(Protocol):
    """What a variant reads of the (resolved) run that trains it."""

    variant: VariantConfig  # the variant's own settings, an instance of its config_class
    nb_concepts: int | None
    device: str
    extra: dict[str, Any]  # constructor arguments no setting gives
    steps: int | None
    row_topk_warmup: float | None
    target_l0: float | None
    normalize_activations: bool


class TrainingContract:
    """Class-level training defaults and hooks; mixed into `SAE`."""

    config_class: ClassVar[type[VariantConfig]] = VariantConfig
    """The variant's own training settings (TrainConfig.variant is one): their fields,
    defaults, checks and the constructor arguments they give. A subclass of
    `VariantConfig` declared in the variant's file; the base has no settings."""

    penalty_field: ClassVar[str | None] = "l1_coefficient"
    """The TrainConfig field weighting `sparsity_loss` in the training loss (the one
    `target_l0` adapts, and the log key it is reported under); None for a variant
    that is sparse by construction and takes no penalty."""

    penalty_can_reward: ClassVar[bool] = False
    """True where, under target_l0, the penalty weight may turn negative (a bounded
    reward for firing) because the variant's own loss can settle below the target L0
    with no penalty at all (JumpReLU: its reconstruction gradient raises thresholds that
    admit interference); False keeps the multiplicative, positive controller."""

    default_adam_betas: ClassVar[tuple[float, float]] = (0.9, 0.999)
    """Adam betas when TrainConfig.adam_betas is None."""

    paired: ClassVar[bool] = False
    """True for a variant that predicts one activation from another (a transcoder): it
    trains on (input, target) row pairs, `RowPair` (TrainConfig.target_point names the
    target)."""

    default_aux_coefficient: ClassVar[float] = 0.0
    """AuxK weight when TrainConfig.aux_coefficient is None: > 0 where a dead latent gets
    no gradient otherwise (a top-k selection never picks it)."""

    default_row_topk_warmup: ClassVar[float] = 0.0
    """TrainConfig.row_topk_warmup when it is None: the fraction of the run during which
    a batch-budget variant keeps each row's own share of the budget (TopK selection)
    before the batch budget takes over (see `step_phase`); 0 for every other variant."""

    synthetic_opt_out: ClassVar[str | None] = None
    """Why this variant cannot take the default-settings recovery test on synthetic rows
    (tests/test_train_defaults.py), e.g. "a transcoder needs paired input / output
    data"; None (the default) takes the test."""

    dense_codes_in_loss: ClassVar[bool] = False
    """True where `reconstruction_loss` or `sparsity_loss` reads the codes z as a dense
    (N, n) matrix (a loss that slices z by latent, say) rather than through the support
    the forward records (`SAEOutput.support`, sae/output.py); such a variant's training
    forward keeps dense codes inside `sparse_codes`."""

    _sparse_codes: bool = False

    @contextlib.contextmanager
    def sparse_codes(self) -> Iterator[None]:
        """While active, a forward that selects its codes through a kept support and
        decodes that support returns z as a sparse COO tensor of the same codes, the
        support recorded in the output (`SAEOutput.support`). The trainer's forward
        runs inside: its losses and fire counts read the support alone, and dense codes
        would cost a zero fill, a scatter and a (rows x n) matrix of memory a step."""
        previous = self._sparse_codes
        self._sparse_codes = not self.dense_codes_in_loss
        try:
            yield
        finally:
            self._sparse_codes = previous

    @classmethod
    def rows_per_budget(cls, batch_size: int) -> int | None:
        """How many rows one `top_k` budget covers (1: per row, batch_size: per batch),
        so top_k = k_per_token * rows_per_budget; None when the variant has no top_k."""
        return None

    @classmethod
    def train_kwargs(cls, config: TrainRun) -> dict[str, Any]:
        """Constructor arguments of this variant taken from the run's settings."""
        return config.variant.sae_kwargs()

    @classmethod
    def from_train_config(cls, config: TrainRun, d_model: int) -> nn.Module:
        """A fresh SAE for rows of width d_model; `config.extra` adds constructor arguments."""
        kwargs = {**config.extra, **cls.train_kwargs(config)}
        return cls(d_model, config.nb_concepts, device=config.device, **kwargs)

    @property
    def budget_per_row(self) -> bool:
        """Whether top_k counts codes per row (TopK), not per batch (BatchTopK) or none."""
        return self.rows_per_budget(2) == 1

    def train_budget(self, batch_size: int) -> dict[str, int]:
        """The variant settings (top_k) that describe this built SAE's budget; {} if none."""
        return {}

    @contextlib.contextmanager
    def rank_share(self, world: int) -> Iterator[None]:
        """While active, this replica trains as one of `world` data-parallel ranks, each
        on batch_size // world rows of every global batch. Nothing changes by default:
        a per-row budget or a mean-over-rows penalty already scales with the local batch."""
        yield

    @contextlib.contextmanager
    def step_phase(
        self, step: int, config: TrainRun, gather: Gather | None = None
    ) -> Iterator[None]:
        """While active, the SAE trains as at `step` of the run `config` describes (the
        trainer wraps every step's forward in it). gather: every data-parallel rank's
        tensor concatenated (the identity alone), for a value that the SAE sets from
        its rows at a phase change and that must agree on every rank. Nothing changes
        by default."""
        yield

    def set_input_scale(self, scale: float, *, training: bool = False) -> None:
        """input_scale = scale. training=True (the trainer, from `start_fit` on): rows come
        already in the training scale and the outputs must be in the scale of
        `training_pair`'s targets; False (the saved SAE): raw activations in and out."""
        self.input_scale.fill_(scale)

    def training_pair(self, rows: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the SAE reads, what it must reconstruct) of a batch of training rows:
        (rows, rows) for an SAE; a paired variant takes its loaders' (x, y) pairs."""
        return rows, rows

    def reconstruction_loss(self, err: torch.Tensor, out: Any) -> torch.Tensor:
        """The training loss's reconstruction term from err = target - x_hat (N, d) and
        the forward's SAEOutput: the squared error summed over d, mean over rows."""
        return squared_error(err)

    @torch.no_grad()
    def init_from_data(self, sample: torch.Tensor, config: TrainRun) -> None:
        """Variant-specific initialisation from a sample of (normalised) training rows,
        after the trainer has tied the encoder and set b_dec.

        A penalised variant (a ReLU SAE) with a linear encoder bias starts at its target
        L0: b_enc is lowered so that latent i fires on target_l0 / nb_concepts of the
        sample (its pre-codes' matching quantile becomes 0), instead of on about half the
        rows, which the penalty then takes hundreds of steps to undo. Nothing otherwise
        (no target_l0, no penalty, or no encoder bias)."""
        bias = getattr(self.encoder, "bias", None)
        target = getattr(config, "target_l0", None)
        structured = getattr(self, "_structured", False)  # its encoder reads sequences
        if self.penalty_field is None or target is None or structured:
            return
        if not isinstance(bias, torch.Tensor):
            return
        bias.sub_(firing_quantiles(self, sample, target).to(bias.dtype))


INIT_CHUNK_ROWS = 4096


@torch.no_grad()
def firing_quantiles(sae: Any, sample: torch.Tensor, l0: float) -> torch.Tensor:
    """(nb_concepts,) the value each latent's pre-code exceeds on l0 / nb_concepts of the
    sample's rows: where to put a threshold (or a bias) so that, on this sample, the SAE
    fires `l0` latents per row on average, spread evenly over the latents."""
    rows = sample.reshape(-1, sample.shape[-1]).float()
    pre = torch.cat([sae.encode(chunk)[0].float() for chunk in rows.split(INIT_CHUNK_ROWS)])
    density = min(max(l0 / sae.nb_concepts, 1.0 / pre.shape[0]), 1.0)
    return torch.quantile(pre, 1.0 - density, dim=0)
