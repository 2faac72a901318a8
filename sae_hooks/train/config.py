"""TrainConfig: every knob of a training run, validated up front, JSON in and out.

Fields left as None are filled by `resolve(d_model)` once the activation width is
known; the resolved config is what a run directory records, so a run can be
reproduced (and resumed) from its `config.json` alone.

Scale conventions. With `normalize_activations` (the default) the trainer sees
rows scaled to E||x||^2 = d, so one coordinate is O(1) and the reconstruction
loss (summed over d, averaged over rows) is d times the per-coordinate MSE. The
defaults below are stated for that scale:

- `l0_coefficient`, `l1_coefficient`: trade-offs against the summed MSE; data
  dependent. `target_l0` replaces hand tuning for JumpReLU and ReLU: the
  coefficient is then adapted by a multiplicative integral controller,
  log(lambda) += target_l0_gain * clip(log(L0 / target_l0), -1, 1) after every
  step (on device, no host sync), starting from the given coefficient; the
  coefficient warm-up is not applied in that mode (the controller ramps itself).

A variant's own settings live in `variant`, an instance of the SAE class's
`config_class`, defined with its defaults in the variant's file: the top-k budget
(sae/topk.py: `top_k`, per row for TopK and per *batch* for BatchTopK, or
`k_per_token`), BatchTopK's `threshold_momentum`, JumpReLU's `kernel`, `bandwidth`,
`threshold_init` (sae/jump.py). The flat spellings of earlier versions (top_k=32,
`[train] top_k = 32`) still work: they are moved into `variant`, `config.top_k`
reads it back; another variant's setting is ignored, as it was, a budget refused.

Every architecture-dependent default (penalty field, Adam betas, AuxK weight,
budget) comes from the SAE class registered under `architecture`
(`sae_hooks.sae.training.TrainingContract`); this module names no variant.

Dead latents. A latent is dead once it has not fired for `dead_tokens` tokens.
Peers use 10M; a run shorter than 100M tokens could never see such a latent
revived, so the default is min(10M, total_tokens // 10) (at least one batch).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_hooks.jsonio import loads
from sae_hooks.sae import DEFAULT_ARCHITECTURE, SAE_REGISTRY
from sae_hooks.sae.settings import VariantConfig, check_float, check_int

from .variant_settings import as_variant, nest_flat_settings, variant_setting_types

B_DEC_INITS = ("geometric_median", "mean", "zeros")
DTYPES = ("float32", "bfloat16", "float64")
_DEFAULT_EXPANSION = 8

# Fields that may differ between a checkpoint's config and the config resuming it.
RESUME_FREE_FIELDS = frozenset(
    {"log_every", "val_every", "val_batches", "checkpoint_every", "device", "compile"}
    | {"progress", "tensorboard", "wandb_project", "autocast"}
    | {"loader_streams"}  # the checkpoint's loader position holds and checks it
)


@dataclass
class TrainConfig:
    """Hyper-parameters of one SAE training run (see the module docstring for scales)."""

    # What to train.
    architecture: str = DEFAULT_ARCHITECTURE
    point: str | None = None  # hook point to read from a store (not needed for in-memory rows)
    target_point: str | None = (
        None  # paired variants (transcoders): the point predicted from `point`
    )
    nb_concepts: int | None = None  # None -> expansion_factor * d
    expansion_factor: int | None = None  # None -> 8 (ignored when nb_concepts is set)
    # The variant's own settings (its config_class; a dict of its fields is converted).
    variant: VariantConfig | dict[str, Any] | None = None  # None -> the class's defaults
    row_topk_warmup: float | None = None  # None -> the SAE class's default

    # How long, how fast.
    batch_size: int = 4096
    steps: int | None = None  # give steps or total_tokens
    total_tokens: int | None = None
    lr: float | None = None  # None -> default_lr(nb_concepts, steps)
    warmup_steps: int | None = None  # None -> warmup_fraction * steps
    warmup_fraction: float = 0.01
    decay_fraction: float = 0.2  # linear decay to 0 over this last part of the run
    grad_clip: float | None = 1.0
    adam_betas: tuple[float, float] | None = None  # None -> the SAE class's default_adam_betas
    adam_eps: float = 1e-8

    # Sparsity penalties (JumpReLU: L0, ReLU: L1).
    l0_coefficient: float = 1.0
    l1_coefficient: float = 5.0
    sparsity_warmup_fraction: float = 0.05
    target_l0: float | None = None
    target_l0_gain: float = 0.05  # 0.01 took ~500 steps to undo a 10x-off start (issue 20)

    # Dead latents.
    aux_k: int | None = None  # None -> d // 2
    aux_coefficient: float | None = None  # None -> the SAE class's default_aux_coefficient
    dead_tokens: int | None = None  # None -> min(10M, total_tokens // 10)

    # Initialisation and input scale.
    normalize_activations: bool = True
    b_dec_init: str = "geometric_median"
    init_rows: int = 4096

    # Bookkeeping.
    log_every: int = 100
    val_every: int | None = 1000  # None or 0: only at the end
    val_batches: int = 4
    checkpoint_every: int | None = 1000  # None or 0: only at the end
    seed: int = 0
    data_seed: int | None = None  # order of the training batches; None -> seed
    loader_streams: int | None = None  # S of a store's loader (docs/scaling.md); None: auto
    device: str = "cpu"
    dtype: str = "float32"  # parameter dtype (and Adam's moments'): float32, bfloat16, float64
    autocast: bool | None = (
        None  # None -> bf16 autocast on CUDA, and in a bf16 SAE's dtype anywhere
    )
    compile: bool = False
    progress: bool = True
    tensorboard: bool = False
    wandb_project: str | None = None

    extra: dict[str, Any] = field(default_factory=dict)  # passed to the SAE constructor

    def __post_init__(self) -> None:
        if isinstance(self.adam_betas, list):
            self.adam_betas = tuple(self.adam_betas)
        _check_choice("architecture", self.architecture, sorted(SAE_REGISTRY))
        self.variant = as_variant(self.sae_class.config_class, self.variant)
        _validate(self)

    def __getattr__(self, name: str) -> Any:
        """The flat spelling of a variant setting (config.top_k) reads config.variant;
        None where the variant has no such setting, as the flat field read before."""
        if name in variant_setting_types():
            return getattr(self.__dict__.get("variant"), name, None)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ----------------------------------------------------------------- derived values

    def resolve(self, d_model: int) -> TrainConfig:
        """A copy with every None default filled in for activations of width d_model."""
        check_int("d_model", d_model, minimum=1)
        sae_class = self.sae_class
        nb = self.nb_concepts or (self.expansion_factor or _DEFAULT_EXPANSION) * d_model
        steps = self.steps or self.total_tokens // self.batch_size
        if steps < 1:
            raise ValueError(
                f"total_tokens={self.total_tokens} is less than one batch of {self.batch_size}"
            )
        total_tokens = steps * self.batch_size
        rows = sae_class.rows_per_budget(self.batch_size)
        return dataclasses.replace(
            self,
            nb_concepts=nb,
            expansion_factor=None,
            variant=self.variant.resolved(d_model=d_model, nb_concepts=nb, rows=rows),
            steps=steps,
            total_tokens=total_tokens,
            lr=self.lr or default_lr(nb, steps),
            warmup_steps=(
                self.warmup_steps
                if self.warmup_steps is not None
                else round(self.warmup_fraction * steps)
            ),
            adam_betas=self.adam_betas or sae_class.default_adam_betas,
            row_topk_warmup=(
                self.row_topk_warmup
                if self.row_topk_warmup is not None
                else sae_class.default_row_topk_warmup
            ),
            aux_k=min(self.aux_k or max(d_model // 2, 1), nb),
            aux_coefficient=(
                self.aux_coefficient
                if self.aux_coefficient is not None
                else sae_class.default_aux_coefficient
            ),
            dead_tokens=self.dead_tokens
            or max(min(10_000_000, total_tokens // 10), self.batch_size),
        )

    @property
    def sae_class(self) -> type:
        """The SAE class registered under `architecture`: it declares how it trains."""
        return SAE_REGISTRY[self.architecture]

    @property
    def batch_seed(self) -> int:
        """The seed of the training batches' order: data_seed, else seed. SAEs that share
        it (and batch_size) on one point see the same batches, so train_many can share them."""
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def is_resolved(self) -> bool:
        return self.nb_concepts is not None and self.steps is not None and self.lr is not None

    # ----------------------------------------------------------------- (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields; `variant` nested as a dict of its settings."""
        out = dataclasses.asdict(self)
        if out["adam_betas"] is not None:
            out["adam_betas"] = list(out["adam_betas"])
        return out

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        """Every key a config file or from_dict takes -> its type: the fields, then the
        flat spellings of the variants' settings (top_k, kernel, ...)."""
        hints = typing.get_type_hints(cls)
        own = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
        return {**own, **{k: v for k, v in variant_setting_types().items() if k not in own}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """From to_dict's output, or a flat dict of an earlier version (top_k=... at the top)."""
        if not isinstance(data, dict):
            raise TypeError(f"TrainConfig.from_dict expects a dict, got {type(data).__name__}")
        valid = list(cls.field_types())
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; valid keys: {valid}")
        return cls(**data)

    def to_json(self, path: str | Path | None = None) -> str:
        """The config as JSON text; also written to `path` when given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> TrainConfig:
        """From JSON text, or from a file when given a Path or the name of an existing file."""
        text = str(text_or_path)
        if isinstance(text_or_path, Path) or not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(loads(text, str(text_or_path)[:200]))


_fields_init = TrainConfig.__init__
_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(TrainConfig))


@functools.wraps(_fields_init)
def _init(self: TrainConfig, *args: Any, **kwargs: Any) -> None:
    _fields_init(self, *args, **nest_flat_settings(kwargs, _FIELD_NAMES))


TrainConfig.__init__ = _init  # TrainConfig(top_k=...) and dataclasses.replace(c, top_k=...)


# --------------------------------------------------------------------- validation


SHORT_RUN_STEPS = 7500
"""Runs shorter than this get a larger default lr (see `default_lr`)."""
MAX_SHORT_RUN_FACTOR = 4.0
"""At most this times the width rule (reached below ~470 steps: a smoke test of a few
steps is not meant to move far)."""


def default_lr(nb_concepts: int, steps: int) -> float:
    """Gao et al.'s width rule, 2e-4 / sqrt(n / 2**14), raised by sqrt(SHORT_RUN_STEPS /
    steps) (at most MAX_SHORT_RUN_FACTOR) for runs shorter than SHORT_RUN_STEPS.

    The width rule was fitted to runs of many thousand steps. Adam moves a weight by
    about lr a step, so a short run at that rate cannot turn a random dictionary into
    the data's: on synthetic rows with a known dictionary (d = 64, 512 latents, 600
    steps) it left BatchTopK at 0.67-0.79 mean max-cosine and TopK at 0.97, where 3.5x
    the rate (what this gives at 600 steps) recovers 0.97-0.99 with every variant
    (docs/evaluation.md). Long runs keep the width rule unchanged."""
    width_rule = 2e-4 / math.sqrt(nb_concepts / 2**14)
    return width_rule * min(MAX_SHORT_RUN_FACTOR, max(1.0, math.sqrt(SHORT_RUN_STEPS / steps)))


def _validate(c: TrainConfig) -> None:
    _check_choice("b_dec_init", c.b_dec_init, B_DEC_INITS)
    if c.dtype == "float16":
        raise ValueError(
            "dtype float16 cannot train an SAE: Adam's moments are kept in the parameters' "
            "dtype, where squared gradients (and its eps, 1e-8) underflow to 0, so its steps "
            "blow up to inf / NaN within a few dozen steps; use bfloat16 (the same memory, "
            "float32's range) or float32 (bf16 compute through autocast=True)"
        )
    _check_choice("dtype", c.dtype, DTYPES)
    if c.point is not None and (not isinstance(c.point, str) or not c.point):
        raise ValueError(f"point must be a non-empty hook-point name or None, got {c.point!r}")
    _validate_target(c)
    _validate_counts(c)
    _validate_run_length(c)
    _validate_sparsity(c)
    _validate_rates(c)
    _validate_switches(c)


def _validate_target(c: TrainConfig) -> None:
    """target_point exactly for the paired variants (transcoders), which need one."""
    paired = [a for a, cls in sorted(SAE_REGISTRY.items()) if cls.paired]
    if c.target_point is not None and (not isinstance(c.target_point, str) or not c.target_point):
        raise ValueError(
            f"target_point must be a non-empty hook-point name or None, got {c.target_point!r}"
        )
    if c.sae_class.paired and c.target_point is None:
        raise ValueError(
            f"{c.architecture!r} predicts one activation from another: set target_point (the "
            "output it predicts, e.g. 'mlp_out.3') and point (its input, e.g. 'mlp_in.3')"
        )
    if c.sae_class.paired and c.target_point == c.point:
        raise ValueError(
            f"target_point={c.target_point!r} is the transcoder's own input point; a "
            "transcoder predicts another point's activation (e.g. point='mlp_in.3', "
            "target_point='mlp_out.3'); to reconstruct one point, train an SAE"
        )
    if not c.sae_class.paired and c.target_point is not None:
        raise ValueError(
            f"target_point={c.target_point!r} applies to {paired}, not {c.architecture!r}, "
            "which reconstructs its own input"
        )


def _validate_counts(c: TrainConfig) -> None:
    for name in ("nb_concepts", "expansion_factor", "steps"):
        check_int(name, getattr(c, name), minimum=1, optional=True)
    for name in ("total_tokens", "aux_k", "dead_tokens"):
        check_int(name, getattr(c, name), minimum=1, optional=True)
    for name in ("batch_size", "log_every", "val_batches", "init_rows"):
        check_int(name, getattr(c, name), minimum=1)
    for name in ("warmup_steps", "val_every", "checkpoint_every"):
        check_int(name, getattr(c, name), minimum=0, optional=True)
    check_int("seed", c.seed, minimum=0)
    check_int("data_seed", c.data_seed, minimum=0, optional=True)
    check_int("loader_streams", c.loader_streams, minimum=1, optional=True)


def _validate_run_length(c: TrainConfig) -> None:
    if c.steps is None and c.total_tokens is None:
        raise ValueError("give the run length: steps=... or total_tokens=...")
    if (
        c.steps is not None
        and c.total_tokens is not None
        and c.steps * c.batch_size != c.total_tokens
    ):
        raise ValueError(
            f"steps={c.steps} and total_tokens={c.total_tokens} disagree at batch_size="
            f"{c.batch_size}; give only one"
        )


def _validate_sparsity(c: TrainConfig) -> None:
    """The variant's budget agrees with the batch size; target_l0 only for penalised variants."""
    sae_class = c.sae_class
    penalised = [a for a, cls in sorted(SAE_REGISTRY.items()) if cls.penalty_field]
    c.variant.check_budget(sae_class.rows_per_budget(c.batch_size), c.architecture)
    if c.target_l0 is not None and sae_class.penalty_field is None:
        raise ValueError(
            f"target_l0 applies to {penalised}; {c.architecture!r} fixes L0 with "
            "top_k / k_per_token"
        )
    target = c.target_l0
    number = isinstance(target, (int, float)) and not isinstance(target, bool)
    if number and c.nb_concepts is not None and target > c.nb_concepts:
        raise ValueError(
            f"target_l0={target:g} exceeds nb_concepts={c.nb_concepts}: an SAE cannot keep "
            "more codes per token than it has latents"
        )
    for name in ("l0_coefficient", "l1_coefficient", "target_l0_gain"):
        check_float(name, getattr(c, name), 0.0, math.inf)
    check_float("aux_coefficient", c.aux_coefficient, 0.0, math.inf, optional=True)


def _validate_rates(c: TrainConfig) -> None:
    for name in ("lr", "target_l0"):
        check_float(name, getattr(c, name), 0.0, math.inf, lo_open=True, optional=True)
    for name in ("warmup_fraction", "decay_fraction", "sparsity_warmup_fraction"):
        check_float(name, getattr(c, name), 0.0, 1.0)
    check_float("row_topk_warmup", c.row_topk_warmup, 0.0, 1.0, optional=True)
    if c.warmup_fraction + c.decay_fraction > 1.0:
        raise ValueError(
            f"warmup_fraction + decay_fraction must be <= 1, got "
            f"{c.warmup_fraction} + {c.decay_fraction}"
        )
    check_float("grad_clip", c.grad_clip, 0.0, math.inf, lo_open=True, optional=True)
    check_float("adam_eps", c.adam_eps, 0.0, math.inf, lo_open=True)
    if c.adam_betas is not None:
        betas = c.adam_betas
        if (
            not isinstance(betas, tuple)
            or len(betas) != 2
            or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas)
        ):
            raise ValueError(f"adam_betas must be two floats in [0, 1), got {betas!r}")


def _validate_switches(c: TrainConfig) -> None:
    for name in ("normalize_activations", "compile", "progress", "tensorboard"):
        if not isinstance(getattr(c, name), bool):
            raise TypeError(f"{name} must be a bool, got {getattr(c, name)!r}")
    if c.autocast is not None and not isinstance(c.autocast, bool):
        raise TypeError(f"autocast must be True, False or None (auto), got {c.autocast!r}")
    if not isinstance(c.device, str) or not c.device:
        raise ValueError(
            f"device must be a device string such as 'cpu' or 'cuda', got {c.device!r}"
        )
    if c.wandb_project is not None and not isinstance(c.wandb_project, str):
        raise TypeError(f"wandb_project must be a str or None, got {c.wandb_project!r}")
    _validate_extra(c)


def _validate_extra(c: TrainConfig) -> None:
    """`extra` holds constructor arguments of the SAE class that no TrainConfig field sets."""
    if not isinstance(c.extra, dict):
        raise TypeError(f"extra must be a dict of SAE constructor arguments, got {c.extra!r}")
    sae_class = c.sae_class
    params = inspect.signature(sae_class.__init__).parameters
    by_config = {"input_shape", "nb_concepts", "device"} | set(sae_class.train_kwargs(c))
    valid = sorted(set(params) - {"self"} - by_config)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(k for k in c.extra if k not in params and not takes_any)
    if unknown:
        raise ValueError(
            f"extra has {unknown}, which {sae_class.__name__} ({c.architecture!r}) does not take; "
            f"valid extra keys: {valid}"
        )
    shadowed = sorted(k for k in c.extra if k in by_config)
    if shadowed:
        raise ValueError(
            f"extra sets {shadowed}, which TrainConfig sets itself for {c.architecture!r} "
            f"(they would be ignored): use the TrainConfig fields; valid extra keys: {valid}"
        )


def _check_choice(name: str, value: object, choices: list[str] | tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
