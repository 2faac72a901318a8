"""The one evaluation loop: a single pass over held-out data feeds every metric.

Per batch: one clean forward that captures every point the subjects read or replace;
each subject's forward on its rows (real tokens only); per replaced point, the zero- and
mean-ablation forwards, run once and shared by the subjects on that point; each subject
spliced in; then every accumulator of every subject sees the batch. Only the forwards
some accumulator asks for run (`Accumulator.outputs`).

`evaluate_reconstruction`, `evaluate_core`, `evaluate_many`, `evaluate_transcoder` and
the pipeline's eval step are this loop with different subjects and accumulators.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sae_hooks.devices import model_device, sae_device_dtype, to_device
from sae_hooks.hooks import capture, splice, splice_transcoder
from sae_hooks.model_outputs import run_model
from sae_hooks.sae import SAEOutput
from sae_hooks.sae.modes import eval_mode

SPLICED, ZERO, MEAN = "spliced", "zero", "mean"
"""The names of the model outputs with the replaced point: the subject spliced in, the
activation zeroed, the activation set to its mean."""


class ConstantReconstruction(nn.Module):
    """A stand-in "SAE" whose reconstruction is one fixed vector (zeros or the mean).

    Lets the zero- and mean-ablation baselines go through the very same splice as the SAE.
    """

    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value.detach().float().reshape(-1))
        self.input_size = self.nb_concepts = self.value.numel()  # its "latents": x itself

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, x

    def decode(self, z: Tensor) -> Tensor:
        return self.value.to(z.dtype).expand(z.shape[0], -1)

    def forward(self, x: Tensor) -> SAEOutput:
        return SAEOutput(x, x, self.decode(x))


@dataclass
class Batch:
    """What one batch gives the accumulators of one subject."""

    inputs: Mapping[str, Tensor]
    x: Tensor
    """The rows the subject reads, (N, d_in)."""
    y: Tensor
    """The rows it replaces, (N, d_out): x itself for an SAE, the MLP output for a transcoder."""
    out: SAEOutput
    """The subject's forward on x, in eval mode."""
    clean: Tensor | None = None
    """The model's output with nothing replaced (None without a model)."""
    outputs: dict[str, Tensor] = field(default_factory=dict)
    """The model's outputs with the point replaced, by name (SPLICED, ZERO, MEAN), as asked."""
    sequence: Tensor | None = None
    """The sequence (index in the batch) each row comes from; None: rows without sequences."""


class Accumulator(Protocol):
    """Running sums of one family of metrics over the batches of one subject."""

    outputs: frozenset[str]
    """Which replaced-point forwards (SPLICED, ZERO, MEAN) `update` reads."""

    def update(self, batch: Batch) -> None: ...


@dataclass
class Subject:
    """One dictionary under evaluation and the accumulators that measure it.

    An SAE reads and replaces `point`; a transcoder (`target` set) reads `point` and its
    prediction replaces `target`. `mean` (d_out,) is the mean-ablation baseline; None:
    each batch's own mean over its real rows.
    """

    sae: nn.Module
    point: str
    accumulators: Sequence[Accumulator]
    target: str | None = None
    mean: Tensor | None = None

    @property
    def replaces(self) -> str:
        return self.point if self.target is None else self.target

    @property
    def outputs(self) -> frozenset[str]:
        return frozenset().union(*(acc.outputs for acc in self.accumulators))

    def spliced(self, model: nn.Module) -> contextlib.AbstractContextManager:
        if self.target is None:
            return splice(model, self.point, self.sae)
        return splice_transcoder(model, self.point, self.target, self.sae)


def real_rows(
    inputs: Mapping[str, Tensor], x: Tensor, d: int, point: str, drop_bos: bool, caller: str
) -> Tensor:
    """The activation rows that count: real tokens (BOS optionally not), as (N, d)."""
    if x.shape[-1] != d:
        raise ValueError(
            f"{caller}: the activation at {point!r} has d={x.shape[-1]} "
            f"but the SAE's input_size is {d}"
        )
    if x.ndim != 3:
        return x.reshape(-1, d)
    return x[kept_tokens(inputs, x, drop_bos).to(x.device)]


def kept_tokens(inputs: Mapping[str, Tensor], x: Tensor, drop_bos: bool) -> Tensor:
    """Which (sequence, position) of a (B, T, d) activation count: the attention mask's
    real tokens, without each sequence's first one when `drop_bos`."""
    mask = inputs.get("attention_mask")
    keep = torch.ones(x.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
    if drop_bos:
        keep = keep & (keep.long().cumsum(1) > 1)
    return keep


@torch.no_grad()
def run_pass(
    model: nn.Module,
    subjects: Sequence[Subject],
    data: Iterable[Mapping[str, Tensor]],
    *,
    max_batches: int | None = None,
    drop_bos: bool = False,
    progress: bool = True,
    caller: str = "evaluation",
) -> int:
    """Feed every subject's accumulators from one pass over `data` (batches of model
    inputs); returns the number of batches. The subjects run in eval mode and get their
    previous mode back afterwards. `drop_bos` leaves each sequence's first real token
    out of the rows; `caller` names the public function in error messages."""
    if not subjects:
        raise ValueError(f"{caller} needs at least one SAE")
    points = list(dict.fromkeys(p for s in subjects for p in (s.point, s.target) if p))
    n_batches = 0
    with contextlib.ExitStack() as modes:
        for sae in {id(s.sae): s.sae for s in subjects}.values():
            modes.enter_context(eval_mode(sae))
        for inputs in _limited(data, max_batches, progress):
            inputs = to_device(inputs, model_device(model))
            with capture(model, points) as acts:
                clean = run_model(model, inputs)
            baselines: dict[tuple, Tensor] = {}
            for subject in subjects:
                batch = _subject_batch(subject, inputs, acts, drop_bos, caller)
                batch.clean = clean
                batch.outputs = _outputs(model, subject, batch, baselines)
                for acc in subject.accumulators:
                    acc.update(batch)
            n_batches += 1
    return n_batches


def _limited(data: Iterable, max_batches: int | None, progress: bool) -> Iterator:
    """At most `max_batches` of `data`, with a progress bar."""
    for i, inputs in enumerate(tqdm(data, desc="eval", disable=not progress, total=max_batches)):
        if max_batches is not None and i >= max_batches:
            return
        yield inputs


def _subject_batch(
    subject: Subject,
    inputs: Mapping[str, Tensor],
    acts: Mapping[str, Tensor],
    drop_bos: bool,
    caller: str,
) -> Batch:
    """The subject's rows and its forward on them."""
    sae = subject.sae
    x = real_rows(inputs, acts[subject.point], sae.input_size, subject.point, drop_bos, caller)
    y = x
    if subject.target is not None:
        size = sae.output_size
        y = real_rows(inputs, acts[subject.target], size, subject.target, drop_bos, caller)
    device, dtype = sae_device_dtype(sae)
    batch = Batch(inputs, x, y, sae(x.to(device=device, dtype=dtype)))
    act = acts[subject.point]
    if act.ndim == 3:
        batch.sequence = kept_tokens(inputs, act, drop_bos).nonzero()[:, 0].cpu()
    return batch


def _outputs(
    model: nn.Module, subject: Subject, batch: Batch, baselines: dict[tuple, Tensor]
) -> dict[str, Tensor]:
    """The replaced-point forwards the subject's accumulators ask for; the zero and mean
    baselines run once per replaced point (and given mean) and are shared through
    `baselines`: the subjects on one point see the same rows there."""
    wanted = subject.outputs
    outputs: dict[str, Tensor] = {}
    if SPLICED in wanted:
        with subject.spliced(model):
            outputs[SPLICED] = run_model(model, batch.inputs)
    for name in (ZERO, MEAN):
        if name not in wanted:
            continue
        mean = None if name == ZERO or subject.mean is None else id(subject.mean)
        key = (subject.replaces, name, mean)
        if key not in baselines:
            if name == ZERO:
                value = torch.zeros(batch.y.shape[-1])
            else:
                value = batch.y.float().mean(0) if subject.mean is None else subject.mean
            device, _ = sae_device_dtype(subject.sae)
            with splice(model, subject.replaces, ConstantReconstruction(value).to(device)):
                baselines[key] = run_model(model, batch.inputs)
        outputs[name] = baselines[key]
    return outputs
