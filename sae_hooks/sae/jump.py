"""JumpReLU SAE (Rajamanoharan et al. 2024) with the paper's kernel pseudo-derivatives.

z = z_pre * H(z_pre - theta), one learned theta > 0 per latent, stored as log theta
so Adam moves it on a relative scale. The sparsity loss is L0 through the Heaviside
straight-through estimator on the pre-activations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import sparse as sparse_paths
from .base import SAE
from .jump_near import SplitSupport
from .kernels import DEFAULT_KERNEL, KERNEL_SUPPORT, KERNELS, Kernel, as_kernel, get_kernel
from .output import EncoderInputs, SAEOutput, TrainingSupport
from .settings import VariantConfig, check_float
from .sparse import (
    MAX_SPARSE_GRAD_DENSITY,
    LatentOrder,
    check_sparse_decode,
    decode_fixed,
    decode_pairs,
    row_top_k,
)
from .sparse_encoder import (
    batch_top_k,
    fixed_support,
    gather_pre_codes,
    pairs_at_least,
    support_codes,
)
from .training import firing_quantiles

DEFAULT_BANDWIDTH = 1e-3
"""The kernel bandwidth for inputs at E||x||^2 = 1 (the paper's); JumpReLUConfig scales
it to the trainer's E||x||^2 = d."""
INITIAL_THRESHOLD = 1e-3
MAX_SPARSE_SUPPORT_DENSITY = 0.12
"""Share of (row, latent) pairs within the kernel's reach of their threshold above which
JumpReLU trains densely. Higher than MAX_SPARSE_GRAD_DENSITY: a pair below its threshold
costs only its code's gradient (one M x d pass), a kept one four. At 768 -> 6144, 2048 rows,
k = 128 and 256 still train 2.7x and 1.6x faster sparse than dense (docs/benchmarks.md,
`bench_train.py --ratio --dense --variants jumprelu --ks 32,128,256`)."""


def _density(z_pre: torch.Tensor, threshold: torch.Tensor, kernel: Kernel, bandwidth: float):
    """K((z_pre - theta) / eps), a fresh tensor the caller may modify in place.

    The scalar factors of the pseudo-derivatives (-theta/eps, -1/eps) are applied
    after the sum over rows: one (n,) multiply instead of a pass over (rows, n).
    """
    return kernel(torch.sub(z_pre, threshold).div_(bandwidth))


class _ThresholdSTE(torch.autograd.Function):
    """What the straight-through estimators keep for their backward: z_pre, theta, K, eps."""

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        z_pre, threshold, kernel, bandwidth = inputs
        ctx.save_for_backward(z_pre, threshold)
        ctx.kernel, ctx.bandwidth = kernel, bandwidth


class JumpReLU(_ThresholdSTE):
    """z_pre * H(z_pre - theta); d/dz_pre = H, d/dtheta = -(theta/eps) K((z_pre - theta)/eps)."""

    @staticmethod
    def forward(z_pre: torch.Tensor, threshold: torch.Tensor, kernel: Kernel, bandwidth: float):
        return z_pre * (z_pre > threshold)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        z_pre, threshold = ctx.saved_tensors
        grad_z = grad_theta = None
        if ctx.needs_input_grad[0]:
            grad_z = grad * (z_pre > threshold)
        if ctx.needs_input_grad[1]:
            weighted = _density(z_pre, threshold, ctx.kernel, ctx.bandwidth).mul_(grad)
            grad_theta = weighted.sum_to_size(threshold.shape) * (-threshold / ctx.bandwidth)
        return grad_z, grad_theta, None, None


class Heaviside(_ThresholdSTE):
    """H(z_pre - theta); d/dz_pre = 0, d/dtheta = -(1/eps) K((z_pre - theta)/eps)."""

    @staticmethod
    def forward(z_pre: torch.Tensor, threshold: torch.Tensor, kernel: Kernel, bandwidth: float):
        return (z_pre > threshold).to(z_pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        z_pre, threshold = ctx.saved_tensors
        grad_theta = None  # d/dz_pre is 0: None says so without a (rows, n) tensor of zeros
        if ctx.needs_input_grad[1]:
            weighted = _density(z_pre, threshold, ctx.kernel, ctx.bandwidth).mul_(grad)
            grad_theta = weighted.sum_to_size(threshold.shape) * (-1.0 / ctx.bandwidth)
        return None, grad_theta, None, None


class JumpReLUWithL0(_ThresholdSTE):
    """(z_pre * H, H) together: JumpReLU and the Heaviside of the L0 loss share one
    kernel evaluation in the backward pass, where they would evaluate it twice apart.

    The gradients are exactly JumpReLU's and Heaviside's, summed: d/dtheta =
    -(1/eps) K(u) (theta * grad_z + grad_active), d/dz_pre = grad_z * H.
    """

    @staticmethod
    def forward(z_pre: torch.Tensor, threshold: torch.Tensor, kernel: Kernel, bandwidth: float):
        active = (z_pre > threshold).to(z_pre.dtype)
        return z_pre * active, active

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        _ThresholdSTE.setup_context(ctx, inputs, output)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None

    @staticmethod
    def backward(ctx: Any, grad_z: torch.Tensor | None, grad_active: torch.Tensor | None):
        z_pre, threshold = ctx.saved_tensors
        grad_pre = grad_theta = None
        if ctx.needs_input_grad[0] and grad_z is not None:
            grad_pre = grad_z * (z_pre > threshold)
        if ctx.needs_input_grad[1] and (grad_z is not None or grad_active is not None):
            weight = grad_z * threshold if grad_z is not None else grad_active.clone()
            if grad_z is not None and grad_active is not None:
                weight.add_(grad_active)
            weighted = _density(z_pre, threshold, ctx.kernel, ctx.bandwidth).mul_(weight)
            grad_theta = weighted.sum_to_size(threshold.shape) * (-1.0 / ctx.bandwidth)
        return grad_pre, grad_theta, None, None


class _SeedHeaviside(Heaviside):
    """Heaviside whose input gradient is a tensor of zeros rather than None, as
    overcomplete's public `heaviside` gives (x.grad reads 0, not None)."""

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        _, grad_theta, _, _ = Heaviside.backward(ctx, grad)
        grad_x = torch.zeros_like(ctx.saved_tensors[0]) if ctx.needs_input_grad[0] else None
        return grad_x, grad_theta, None, None


def jump_relu(x: torch.Tensor, threshold: torch.Tensor, kernel_fn: Any, bandwidth: Any):
    """x * H(x - theta) with the paper's pseudo-derivatives (overcomplete's public
    function and argument names). kernel_fn: a name in KERNELS, K(u), or an
    overcomplete-style kernel_fn(x, bandwidth); see kernels.as_kernel."""
    kernel, width = as_kernel(kernel_fn, bandwidth)
    return JumpReLU.apply(x, threshold, kernel, width)


def heaviside(x: torch.Tensor, threshold: torch.Tensor, kernel_fn: Any, bandwidth: Any):
    """H(x - theta) = (x > theta) with the kernel pseudo-derivative for theta and a zero
    gradient for x; arguments as jump_relu."""
    kernel, width = as_kernel(kernel_fn, bandwidth)
    return _SeedHeaviside.apply(x, threshold, kernel, width)


@dataclass
class JumpReLUConfig(VariantConfig):
    """JumpReLU's training settings, at the trainer's scale E||x||^2 = d.

    kernel: the pseudo-derivative kernel (one of KERNELS). bandwidth: None means
    DEFAULT_BANDWIDTH * sqrt(d), the paper's 0.001 at E||x||^2 = 1 rescaled.
    threshold_init: None (the default) sets each threshold from the data (the quantile
    of its latent's pre-codes at which it fires on target_l0 / nb_concepts of the init
    sample, `JumpSAE.init_from_data`); a number sets every threshold to it.
    """

    kernel: str = DEFAULT_KERNEL
    bandwidth: float | None = None
    threshold_init: float | None = None

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {list(KERNELS)}, got {self.kernel!r}")
        for name in ("bandwidth", "threshold_init"):
            value = getattr(self, name)
            check_float(name, value, 0.0, math.inf, lo_open=True, optional=True)

    def resolved(self, *, d_model: int, nb_concepts: int, rows: int | None) -> JumpReLUConfig:
        bandwidth = self.bandwidth or DEFAULT_BANDWIDTH * math.sqrt(d_model)
        return dataclasses.replace(self, bandwidth=bandwidth)

    def sae_kwargs(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "bandwidth": self.bandwidth}


class JumpSAE(SAE):
    """JumpReLU SAE. `bandwith` (the seed's spelling) and `bandwidth` are the same
    argument (default 1e-3, suited to inputs scaled to E||x||^2 = 1). kernel: one of
    KERNELS. A custom encoder's codes are ignored: JumpReLU acts on its pre-codes.
    """

    architecture = "jumprelu"
    selection = "JumpReLU: pre-codes >= each latent's learned threshold"
    config_class = JumpReLUConfig
    penalty_field = "l0_coefficient"
    default_adam_betas = (0.0, 0.999)
    default_row_topk_warmup = 0.5
    penalty_can_reward = True

    def __init__(
        self,
        input_shape: int | tuple[int, ...],
        nb_concepts: int,
        kernel: str = DEFAULT_KERNEL,
        bandwith: float | None = None,
        encoder_module: str | nn.Module | None = None,
        dictionary_params: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        *,
        bandwidth: float | None = None,
    ) -> None:
        kernel_fn, width = get_kernel(kernel), _bandwidth(bandwith, bandwidth)
        super().__init__(input_shape, nb_concepts, encoder_module, dictionary_params, device)
        self.kernel, self.kernel_fn, self.bandwidth = kernel, kernel_fn, width
        self.log_threshold = nn.Parameter(
            torch.full((nb_concepts,), math.log(INITIAL_THRESHOLD), device=device)
        )
        self._warm_k: int | None = None  # per-row top-k selection in training (step_phase)
        self._rethreshold_l0: float | None = None  # thresholds from this batch (step_phase)
        self._gather: Any = None  # every data-parallel rank's tensor (step_phase)

    @property
    def bandwith(self) -> float:
        """The seed's spelling of `bandwidth`."""
        return self.bandwidth

    @property
    def threshold(self) -> torch.Tensor:
        """theta = exp(log_threshold), (nb_concepts,); gradients reach log_threshold through it."""
        return self.log_threshold.exp()

    @contextlib.contextmanager
    def step_phase(self, step: int, config: Any, gather: Any = None) -> Iterator[None]:
        """The first `config.row_topk_warmup` of the run selects each row's target_l0
        largest codes (TopK, no threshold, no penalty); the first step after it sets
        every threshold from that batch's pre-codes so that L0 = target_l0, and the
        JumpReLU loss takes over with a dictionary that is already learnt.

        Started at its target L0 from a random dictionary, JumpReLU's reconstruction
        gradient raises the thresholds of the (still useless) atoms and L0 collapses
        to ~1 within 100 steps; the dictionary then learns slowly (0.67 mean max-cosine
        after 600 steps on the synthetic rows of docs/evaluation.md)."""
        warm_steps = round(config.row_topk_warmup * config.steps)
        l0 = config.target_l0 or DEFAULT_INIT_L0
        saved = self._warm_k, self._rethreshold_l0, self._gather
        self._warm_k = max(1, round(l0)) if step < warm_steps else None
        self._rethreshold_l0 = l0 if 0 < warm_steps == step else None
        self._gather = gather
        try:
            yield
        finally:
            self._warm_k, self._rethreshold_l0, self._gather = saved

    def _sparsify(self, pre: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return pre * (pre > self.threshold)
        if self._warm_k is not None:
            return self._warm_codes(pre)
        return self._jump_with_l0(pre)[0]

    def _warm_codes(self, pre: torch.Tensor) -> torch.Tensor:
        """The warm-up's selection (`step_phase`): each row's _warm_k largest codes after ReLU."""
        values, indices = pre.topk(min(self._warm_k, pre.shape[-1]), dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, F.relu(values))

    def _jump_with_l0(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, L0 per row averaged), sharing one kernel evaluation in the backward."""
        self._maybe_rethreshold(pre)
        z, active = JumpReLUWithL0.apply(pre, self.threshold, self.kernel_fn, self.bandwidth)
        return z, active.sum(dim=-1).mean()

    def _forward_dense(
        self, rows: torch.Tensor, found: tuple[torch.Tensor, EncoderInputs] | None = None
    ) -> SAEOutput:
        """Every code through JumpReLU (the warm-up's top-k in its phase), from the
        pre-codes `found` by the sparse encoder path when given. With a gradient, the
        output's support holds the forward's penalty for `sparsity_loss` (its L0, or 0
        in the warm-up) and the encoder inputs of `found`."""
        pre, inputs = found if found is not None else (self._pre_codes(rows)[0], None)
        if not torch.is_grad_enabled():
            z = self._sparsify(pre, pre)
            return SAEOutput(pre, z, self._decode_rows(z))
        if self._warm_k is not None:
            z = self._warm_codes(pre)
            x_hat = self._decode_rows(z)
            return SAEOutput(pre, z, x_hat, TrainingSupport(None, inputs, x_hat.new_zeros(())))
        z, l0 = self._jump_with_l0(pre)
        return SAEOutput(pre, z, self._decode_rows(z), TrainingSupport(None, inputs, l0))

    def _forward_rows(self, rows: torch.Tensor) -> SAEOutput:
        """With a gradient, through the codes' support when it is sparse.

        The backward needs a code where it is kept (z_pre > theta: the encoder's and the
        decoder's gradients) or within the kernel's reach of its threshold (theta's
        gradient, which reads d loss / d z there, zero code or not): z_pre >= theta - r,
        r = the kernel's support in pre-code units. Those pairs go through the sparse
        encoder backward and the sparse decoder, and JumpReLU runs on them alone; a
        pair outside has a zero gradient for every parameter (K is exactly 0 there).
        On the host the pairs below their threshold reach theta alone (`_forward_split`).
        The support is counted after the matmul (one host sync on CUDA); above
        MAX_SPARSE_SUPPORT_DENSITY, or for a kernel with unbounded support, the dense
        path runs.
        """
        if self._warm_k is not None:
            return self._forward_warm(rows)
        radius = self._kernel_radius()
        found = None if radius is None else self._sparse_pre_codes(rows, measured=True)
        if found is None:
            return self._forward_dense(rows)
        pre, inputs = found
        self._maybe_rethreshold(pre)
        theta, forced = self.threshold, self.sparse_encoder_grad
        cut = MAX_SPARSE_SUPPORT_DENSITY * pre.numel()
        # On the host the scan stops at the cut: no pair list for a dense support.
        # Elsewhere nonzero's own count is the step's one host sync.
        floor = (theta.detach() - radius).to(pre.dtype)
        near = pairs_at_least(pre.detach(), floor, cut if forced is None else math.inf)
        if near is None or (forced is None and near[1].numel() > cut):
            return self._forward_dense(rows, found)
        flat_rows, cols = near
        sparse_decode = self.sparse_decode is True or (
            self.sparse_decode is None and len(cols) <= cut
        )
        if pre.device.type in sparse_paths.HOST_DEVICES and sparse_decode:
            return self._forward_split(pre, inputs, SplitSupport(pre, flat_rows, cols, theta))
        # Elsewhere (no host sync to split the support) its pairs at 0 cost the decoder
        # one gradient each (`nonzero_pairs`); or the codes are decoded densely.
        order, at = LatentOrder(flat_rows, cols), theta.index_select(0, cols)
        pairs = gather_pre_codes(pre, flat_rows, cols, inputs, order)
        z_vals, active = JumpReLUWithL0.apply(pairs, at, self.kernel_fn, self.bandwidth)
        return self._codes_from_pairs(
            pre,
            inputs,
            flat_rows,
            cols,
            z_vals,
            max_density=MAX_SPARSE_SUPPORT_DENSITY,
            penalty=active.sum() / pre.shape[0],
            order=order,
        )

    def _forward_split(self, pre: torch.Tensor, inputs: EncoderInputs, split: SplitSupport):
        """`_forward_rows` on the host: the kept pairs through the sparse encoder backward,
        JumpReLU and the sparse decoder, the pairs below their threshold through theta's
        gradient alone (`jump_near`). The same codes, support and gradients."""
        theta, rows, cols, n_rows = self.threshold, split.kept_rows, split.kept_cols, len(pre)
        order, kernel, width = LatentOrder(rows, cols), self.kernel_fn, self.bandwidth
        pairs = gather_pre_codes(pre, rows, cols, inputs, order)
        z_kept, active = JumpReLUWithL0.apply(pairs, theta.index_select(0, cols), kernel, width)
        atoms, bias = self.get_dictionary(), self.dictionary.bias
        x_hat = decode_pairs(rows, cols, z_kept, atoms, bias, n_rows=n_rows, order=order)
        x_hat, z_near, active_near = split.near_codes(x_hat, theta, atoms, kernel, width)
        values = split.merged(z_kept, z_near)
        z, kept = support_codes(pre, split.rows, split.cols, values, sparse=self._sparse_codes)
        penalty = (active.sum() + active_near.sum()) / n_rows
        return SAEOutput(pre, z, x_hat, TrainingSupport(kept, inputs, penalty))

    def _forward_warm(self, rows: torch.Tensor) -> SAEOutput:
        """The warm-up's selection (`step_phase`): each row's _warm_k largest pre-codes
        after ReLU, TopK's sparse path where the density allows, no threshold, no L0."""
        k = min(self._warm_k, self.nb_concepts)
        sparse = k <= MAX_SPARSE_GRAD_DENSITY * self.nb_concepts
        found = self._sparse_pre_codes(rows, measured=True) if sparse else None
        if found is None:
            return self._forward_dense(rows)
        pre, inputs = found
        indices = row_top_k(pre.detach(), k)
        flat_rows, cols = fixed_support(indices)
        order = LatentOrder(flat_rows, cols)
        values = F.relu(gather_pre_codes(pre, flat_rows, cols, inputs, order)).view_as(indices)
        sparse_decode = check_sparse_decode(self.sparse_decode) is not False
        z, kept = support_codes(
            pre, flat_rows, cols, values.view(-1), sparse=self._sparse_codes and sparse_decode
        )
        if not sparse_decode:
            x_hat = self.dictionary.decode(z)
        else:
            atoms, bias = self.get_dictionary(), self.dictionary.bias
            x_hat = decode_fixed(indices, values, atoms, bias, order=order)
        return SAEOutput(pre, z, x_hat, TrainingSupport(kept, inputs, x_hat.new_zeros(())))

    @torch.no_grad()
    def _maybe_rethreshold(self, pre: torch.Tensor) -> None:
        """At the first step after the warm-up (`step_phase`), every threshold at the
        batch's target_l0 codes a row; once per forward."""
        if self._rethreshold_l0 is not None:
            theta = _batch_threshold(pre, self._rethreshold_l0, self._gather)
            self.log_threshold.copy_(theta.log())
            self._rethreshold_l0 = None

    def _kernel_radius(self) -> float | None:
        """The kernel's support in pre-code units, with a margin; None when unbounded
        or unknown (a custom kernel)."""
        if KERNELS.get(self.kernel) is not self.kernel_fn:
            return None
        support = KERNEL_SUPPORT.get(self.kernel)
        return None if support is None else support * self.bandwidth * (1.0 + 1e-3)

    def sparsity_loss(self, out: SAEOutput) -> torch.Tensor:
        """L0 per row, averaged: sum_i H(z_pre_i - theta_i) with the kernel STE.

        On the output of a training forward it returns the L0 that forward computed
        (`SAEOutput.support.penalty`), so the backward evaluates the kernel once for the
        codes and the L0 together.
        """
        support = out.support
        if support is not None and support.penalty is not None:
            return support.penalty  # this forward's own (0 in the warm-up)
        active = Heaviside.apply(out.z_pre, self.threshold, self.kernel_fn, self.bandwidth)
        return active.sum(dim=-1).mean()

    def _variant_config(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "bandwidth": self.bandwidth}

    @torch.no_grad()
    def init_from_data(self, sample: torch.Tensor, config: Any) -> None:
        """Thresholds at which every latent fires on the target share of the sample.

        theta_i = the (1 - L0 / nb_concepts) quantile of latent i's pre-codes on the
        sample, L0 being config.target_l0 (else DEFAULT_INIT_L0), so training starts
        at its target L0 instead of firing on almost everything (a fixed 0.001*sqrt(d)
        left L0 at ~200 of 512 for 600 steps: Adam moves log theta by ~lr per step).
        An explicit config.variant.threshold_init sets every threshold to that value
        instead (a structure encoder, which reads whole sequences, gets 0.001 * sqrt(d)).
        """
        fixed = getattr(config.variant, "threshold_init", None)
        if fixed is None and self._structured:  # a sequence encoder: no per-row pre-codes
            fixed = INITIAL_THRESHOLD * math.sqrt(self.input_size)
        if fixed is not None:
            self.log_threshold.fill_(math.log(fixed))
            return
        target = getattr(config, "target_l0", None) or DEFAULT_INIT_L0
        self.log_threshold.copy_(data_thresholds(self, sample, target).log())


DEFAULT_INIT_L0 = 32
"""The L0 the thresholds start at when no target_l0 is given (k_per_token's default)."""


@torch.no_grad()
def data_thresholds(sae: SAE, sample: torch.Tensor, l0: float) -> torch.Tensor:
    """(nb_concepts,) per-latent thresholds at which `sae` fires on l0 / nb_concepts of
    the sample's rows, floored at a small positive value (theta > 0 is the
    parametrisation's domain)."""
    return _positive(firing_quantiles(sae, sample, l0))


@torch.no_grad()
def _batch_threshold(pre: torch.Tensor, l0: float, gather: Any = None) -> torch.Tensor:
    """One threshold for every latent: the batch's (l0 * rows)-th largest pre-code, at
    which the batch fires l0 codes per row (BatchTopK's inference rule). Per-latent
    quantiles would assume every latent fires equally often; after a TopK warm-up the
    learnt features do not (on the synthetic rows they doubled the FVU).

    gather (data parallel): the global batch's threshold, the same on every rank: the
    global top-K lies in the union of each rank's top-K, so only those are gathered."""
    pre = pre.detach().float().flatten(0, -2)
    gather = gather or (lambda t: t)
    rows = int(gather(torch.tensor([pre.shape[0]], device=pre.device)).sum())
    k = max(round(l0 * rows), 1)  # of the global batch
    # batch_top_k: runs' maxima or per-row candidates first (a flat top-k of 65k over
    # 12.6M codes cost about 6 normal steps on CPU, issue 35)
    top = gather(batch_top_k(pre, min(k, pre.numel()))[0])
    t = top.topk(min(k, top.numel()), sorted=False).values.min()
    return _positive(t.expand(pre.shape[-1]))


def _positive(theta: torch.Tensor) -> torch.Tensor:
    """theta floored at a small positive value (theta > 0 is the parametrisation's domain)."""
    floor = max(float(theta.abs().mean()) * 1e-3, 1e-6)
    return theta.clamp_min(floor)


def _bandwidth(bandwith: float | None, bandwidth: float | None) -> float:
    if bandwith is not None and bandwidth is not None and bandwith != bandwidth:
        raise ValueError(
            f"bandwith={bandwith} and bandwidth={bandwidth} disagree; they are the same "
            "argument, pass one"
        )
    value = bandwidth if bandwidth is not None else bandwith
    if value is None:
        return DEFAULT_BANDWIDTH
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"bandwidth must be a positive finite number, got {value!r}")
    return float(value)
