"""One hook API over Hugging Face modules and TransformerLens HookPoints.

Both backends are torch modules, so both take plain torch hooks: a HookPoint is an
identity module whose output is the activation. What differs is the shape of what
flows through a module (a Tensor, a tuple, a ModelOutput) and whether the activation
is a module's input or output; :func:`add_hook` hides both, so callers see one
``fn(x) -> replacement or None`` per point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from sae_hooks.hooks.points import HookLocation

HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]


class Handles:
    """Several hook handles removed as one (what :func:`add_hook` returns)."""

    def __init__(self, *handles: RemovableHandle) -> None:
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def add_hook(loc: HookLocation, fn: HookFn) -> RemovableHandle | Handles:
    """Call ``fn`` on the activation at ``loc``; a returned tensor replaces it."""
    if loc.flat_within is None:
        return _add_hook(loc, fn)
    lead: list[torch.Size] = []

    def record(module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        lead[:] = [x.shape[:-1]]

    def unflattened(x: torch.Tensor) -> torch.Tensor | None:
        new = fn(x.view(*lead[0], x.shape[-1]))
        return None if new is None else new.reshape(x.shape)

    shape_hook = loc.flat_within.register_forward_pre_hook(record, with_kwargs=True)
    return Handles(shape_hook, _add_hook(loc, unflattened))


def _add_hook(loc: HookLocation, fn: HookFn) -> RemovableHandle:
    if loc.site == "input":

        def pre_hook(module, args, kwargs):
            from_args = bool(args)
            x = args[0] if from_args else kwargs.get("hidden_states")
            if not isinstance(x, torch.Tensor):
                raise TypeError(
                    f"{loc.point!r}: expected the input of {loc.path} to be a Tensor "
                    f"(first positional argument or hidden_states=), got {type(x).__name__}"
                )
            if loc.inplace:
                return _write_into(x, fn)
            new = fn(x)
            if new is None:
                return None
            if from_args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        return loc.module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def hook(module, args, output):
        x = first_tensor(output, loc)
        if loc.inplace:
            return _write_into(x, fn)
        new = fn(x)
        return None if new is None else replace_first_tensor(output, new)

    return loc.module.register_forward_hook(hook)


def _write_into(x: torch.Tensor, fn: HookFn) -> None:
    """Replace x in place. Under autograd fn sees a copy: anything it saves for backward
    must not be the tensor about to be overwritten."""
    source = x.clone() if x.requires_grad and torch.is_grad_enabled() else x
    new = fn(source)
    if new is not None:
        x.copy_(new)


def first_tensor(output: Any, loc: HookLocation) -> torch.Tensor:
    """The activation inside a module output: a Tensor, a tuple's or a ModelOutput's first."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and output:
        first = next(iter(output.values()))
    elif isinstance(output, (tuple, list)) and output:
        first = output[0]
    else:
        first = None
    if not isinstance(first, torch.Tensor):
        raise TypeError(
            f"{loc.point!r}: the output of {loc.path} is a {type(output).__name__} whose "
            "first entry is not a Tensor; hook a module that outputs the activation"
        )
    return first


def replace_first_tensor(output: Any, new: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, Mapping):  # ModelOutput: a dict that also indexes like a tuple
        output[next(iter(output))] = new
        return output
    if hasattr(output, "_fields"):  # a NamedTuple
        return output._replace(**{output._fields[0]: new})
    return type(output)((new, *output[1:]))
