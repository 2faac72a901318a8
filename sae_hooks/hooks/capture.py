"""Read activations out of a forward pass; optionally stop the pass once they are all read.

capture() is an observer by default: the forward runs to its end, code after the
model call runs, autograd is untouched. With stop_early=True (what capture_batch
uses) the stop is an exception raised by the hook of the last requested point to
fire and swallowed by the context manager, so "deepest" is whatever the forward
actually ran last: no table of module orders can get it wrong, and blocks after it
never run. The block's hooks are a :class:`~sae_hooks.hooks.lifetime.HookBlock`: they
act only in the thread that entered it and are gone after it, Ctrl-C included.

capture_batch returns an `ActivationBatch` (sae_hooks/activations.py: the one type of
rows with their metadata), importable from here as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from sae_hooks.activations import ActivationBatch
from sae_hooks.hooks.lifetime import HookBlock
from sae_hooks.hooks.points import is_transformer_lens, resolve_point

VIT_TOKENS = ("all", "cls", "patches")


class _StopForward(Exception):
    """Raised from a hook to end a forward pass early; never escapes :func:`capture`."""


def capture(
    model: nn.Module,
    points: str | Sequence[str],
    *,
    stop_early: bool = False,
    dtype: torch.dtype | None = None,
) -> Capture:
    """Collect the activations at ``points`` during the forward run inside the block.

    ``acts[point]`` is a detached copy (cast to ``dtype`` if given) of the activation,
    usually (B, T, d), left on the device where the model computed it. By default the
    block runs as written: the whole forward, the code after it, gradients as usual.
    ``stop_early=True`` is the speed path: the forward ends right after the last
    requested point fires, the block runs without autograd, and code after the model
    call inside the block is skipped. Only forwards of the thread that entered the block
    are read (see :mod:`sae_hooks.hooks.lifetime`).
    """
    return Capture(model, as_point_list(points), stop_early, dtype)


class Capture(HookBlock[dict[str, torch.Tensor]]):
    """What :func:`capture` returns: ``with capture(...) as acts`` gives the dict."""

    def __init__(
        self, model: nn.Module, points: list[str], stop_early: bool, dtype: torch.dtype | None
    ) -> None:
        self.acts: dict[str, torch.Tensor] = {}
        self.pending = set(points)
        self.stop_early, self.dtype = stop_early, dtype
        hooks = [
            (loc, self._reader(loc.point)) for loc in (resolve_point(model, p) for p in points)
        ]
        super().__init__(hooks, self.acts, [torch.no_grad()] if stop_early else [])

    def _reader(self, point: str):
        acts, pending, dtype, stop_early = self.acts, self.pending, self.dtype, self.stop_early

        def read(x: torch.Tensor) -> None:
            acts[point] = x.detach().to(dtype=dtype or x.dtype, copy=True)
            pending.discard(point)
            if stop_early and not pending:
                raise _StopForward

        return read

    def finish(self, exc: BaseException | None) -> bool:
        if isinstance(exc, _StopForward):
            return True
        if exc is None and self.pending:
            elsewhere = (
                f"; its hooks saw {self.foreign_calls} call(s) from other threads, and read "
                "only the forwards of the thread that entered the block"
                if self.foreign_calls
                else ""
            )
            raise RuntimeError(
                f"capture: {sorted(self.pending)} never fired; run a forward pass of the model "
                "inside the with block (a point the forward does not reach cannot be "
                f"captured){elsewhere}"
            )
        return False


def capture_batch(
    model: nn.Module,
    points: str | Sequence[str],
    inputs: Mapping[str, torch.Tensor] | torch.Tensor,
    *,
    drop_bos: bool = False,
    dtype: torch.dtype | None = None,
    vit_tokens: str = "all",
) -> ActivationBatch:
    """Run ``inputs`` through ``model`` up to the deepest point and keep the real rows.

    ``inputs``: a dict with ``input_ids`` (+ ``attention_mask``) or ``pixel_values``, or a
    tensor of token ids. Pad tokens (attention_mask 0, left or right) are dropped;
    ``drop_bos`` drops each sequence's first real token; ``vit_tokens`` picks the
    CLS token, the patches, or all tokens of an image. ``doc_index`` is the row's
    sequence within this batch (0..B-1); the store capture adds the batch's offset.
    """
    points = as_point_list(points)
    if vit_tokens not in VIT_TOKENS:
        raise ValueError(f"vit_tokens must be one of {VIT_TOKENS}, got {vit_tokens!r}")
    kwargs, args = model_call_args(model, inputs)

    with capture(model, points, stop_early=True, dtype=dtype) as acts:
        model(*args, **kwargs)

    first = acts[points[0]]
    if first.ndim != 3:
        raise ValueError(
            f"capture_batch needs (batch, tokens, d) activations; {points[0]!r} has shape "
            f"{tuple(first.shape)}"
        )
    batch, seq = first.shape[:2]
    for point, act in acts.items():
        if act.shape[:2] != (batch, seq):
            raise ValueError(
                f"{point!r} has shape {tuple(act.shape)}, not (batch={batch}, tokens={seq}, d)"
            )

    keep, token_ids, position = _real_tokens(kwargs, args, (batch, seq), drop_bos, vit_tokens)
    doc_index = torch.arange(batch).unsqueeze(1).expand(batch, seq)
    return ActivationBatch(
        acts={p: a[keep.to(a.device)] for p, a in acts.items()},
        token_ids=token_ids[keep],
        doc_index=doc_index[keep],
        position=position[keep].long(),
    )


def _real_tokens(
    kwargs: dict, args: tuple, shape: tuple[int, int], drop_bos: bool, vit_tokens: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows to keep, token ids, positions), each (batch, tokens), for the model inputs."""
    batch, seq = shape
    if "pixel_values" in kwargs:
        if drop_bos:
            raise ValueError("drop_bos is for text; for images use vit_tokens='patches'")
        position = torch.arange(seq).expand(batch, seq)
        keep = {"all": position >= 0, "cls": position == 0, "patches": position > 0}[vit_tokens]
        token_ids = torch.full((batch, seq), -1, dtype=torch.int64)
    else:
        ids = kwargs.get("input_ids", args[0] if args else None).detach().cpu().long()
        if ids.shape != (batch, seq):
            raise ValueError(
                f"input_ids {tuple(ids.shape)} do not match activations {(batch, seq)}"
            )
        mask = kwargs.get("attention_mask")
        keep = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.cpu().bool()
        position = keep.long().cumsum(1) - 1
        if drop_bos:
            keep = keep & (position > 0)
        token_ids = ids
    return keep, token_ids, position


def as_point_list(points: str | Sequence[str]) -> list[str]:
    """One point or several, in order, without duplicates."""
    if isinstance(points, str):
        points = [points]
    elif not isinstance(points, Sequence) or not all(isinstance(p, str) for p in points):
        raise TypeError(f"points must be a str or a sequence of str, got {points!r}")
    points = list(dict.fromkeys(points))
    if not points:
        raise ValueError("points is empty: name at least one hook point")
    return points


def model_call_args(model: nn.Module, inputs) -> tuple[dict, tuple]:
    """(kwargs, args) to call the model with; TransformerLens takes tokens positionally."""
    if isinstance(inputs, torch.Tensor):
        inputs = {"input_ids": inputs}
    if not isinstance(inputs, Mapping):
        raise TypeError(
            f"inputs must be a dict of tensors or a tensor of token ids, got {type(inputs).__name__}"
        )
    kwargs = dict(inputs)
    if "input_ids" not in kwargs and "pixel_values" not in kwargs:
        raise ValueError(f"inputs need input_ids or pixel_values, got keys {sorted(kwargs)}")
    if "input_ids" in kwargs:
        check_token_ids(model, kwargs["input_ids"], kwargs.get("attention_mask"))
    if is_transformer_lens(model) and "input_ids" in kwargs:
        tokens = kwargs.pop("input_ids")
        return kwargs, (tokens,)
    return kwargs, ()


def check_token_ids(model: nn.Module, ids: object, mask: object = None) -> None:
    """Refuse token inputs the model would fail on deep inside (an embedding IndexError)."""
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dtype == torch.bool:
        what = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise TypeError(f"input_ids must be an integer tensor of token ids, got {what}")
    if ids.ndim == 0 or ids.numel() == 0:
        raise ValueError(
            f"input_ids of shape {tuple(ids.shape)} hold no tokens; give (batch, seq) token "
            "ids with batch >= 1 and seq >= 1"
        )
    if isinstance(mask, torch.Tensor) and mask.shape != ids.shape:
        raise ValueError(
            f"attention_mask has shape {tuple(mask.shape)} but input_ids {tuple(ids.shape)}; "
            "they must match"
        )
    context = _model_limit(model, "n_ctx", ("n_positions", "max_position_embeddings", "n_ctx"))
    if context is not None and ids.ndim and ids.shape[-1] > context:
        raise ValueError(
            f"sequences of {ids.shape[-1]} tokens are longer than the model's context of "
            f"{context} tokens; cut them to at most {context} (text_batches(context_length=...))"
        )
    vocab = _model_limit(model, "d_vocab", ("vocab_size",))
    if vocab is not None and ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(
                f"token ids must lie in 0..{vocab - 1} (the model's vocabulary), got ids from "
                f"{lo} to {hi}; were the inputs made by this model's tokenizer?"
            )


def _model_limit(model: nn.Module, tl_name: str, hf_names: tuple[str, ...]) -> int | None:
    """A size from a TransformerLens cfg or a Hugging Face config, when the model has one."""
    if is_transformer_lens(model):
        value = getattr(model.cfg, tl_name, None)
        return value if isinstance(value, int) and value > 0 else None
    config = getattr(model, "config", None)
    for name in hf_names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
