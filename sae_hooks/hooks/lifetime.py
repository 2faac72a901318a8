"""Hooks that live exactly as long as their ``with`` block, and act only in its thread.

A capture or splice block must leave the model as it found it however the block is
left. An exception in the block is the easy case: ``__exit__`` runs. A Ctrl-C is
harder, because Python raises it between any two bytecodes: after
``register_forward_hook`` stored a hook but before its handle was kept, after
``__enter__`` installed the hooks but before the ``with`` statement took charge of
them (then ``__exit__`` never runs), or at the first bytecode of ``__exit__`` (a
SIGINT that arrives during the block's last forward is handled there, and then
``__exit__`` never runs either). Two measures close these gaps:

- While a block is open in the main thread, SIGINT goes to a handler that defers the
  KeyboardInterrupt when it finds a block's ``__enter__`` or ``__exit__`` on the stack
  of the interrupted frame, and raises it when that method is done: after the hooks
  are in and the ``with`` statement owns them, or after they are all out. Everywhere
  else (the forward, the code in the block) Ctrl-C raises at once, as before.
- Every hook checks the thread id stored on its block. It acts only in the thread
  that entered the block (and in autograd's backward, where gradient checkpointing
  recomputes the forward), and only while the block is open: another thread's forward
  on the same model sees none of it, and a hook that some other asynchronous error
  left behind is inert.
"""

from __future__ import annotations

import signal
import threading
import warnings
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, ExitStack
from types import FrameType, TracebackType
from typing import Any, Generic, TypeVar

import torch
from torch.utils.hooks import RemovableHandle

from sae_hooks.hooks.backends import HookFn, add_hook
from sae_hooks.hooks.points import HookLocation

try:  # the C functions: signal.signal's enum conversions cost ~10 us a call
    from _signal import getsignal as _get_handler
    from _signal import signal as _set_handler
except ImportError:  # pragma: no cover - an interpreter without CPython's _signal
    from signal import getsignal as _get_handler
    from signal import signal as _set_handler

T = TypeVar("T")
_get_ident = threading.get_ident
_graph_task = getattr(torch._C, "_current_graph_task_id", lambda: -1)


class HookBlock(Generic[T]):
    """A context manager that installs ``hooks`` and enters ``contexts`` (grad mode, an
    SAE's train/eval mode) on ``__enter__``, yields ``value``, and undoes all of it on
    ``__exit__``, Ctrl-C included.

    Subclasses judge how the block ended in :meth:`finish`; they never override
    ``__enter__``/``__exit__``, which the SIGINT handler recognises by their code.
    """

    def __init__(
        self,
        hooks: Sequence[tuple[HookLocation, HookFn]],
        value: T,
        contexts: Iterable[AbstractContextManager] = (),
    ) -> None:
        self._hooks = list(hooks)
        self._value = value
        self._contexts = list(contexts)
        self._owner: int | None = None
        self._handles: list[RemovableHandle] = []
        self._undo = ExitStack()
        self._entered = self._guarded = False
        self.fired = False  # a hook acted (in the block's thread)
        self.foreign_calls = 0  # hook calls skipped: another thread's forward, or too late

    def finish(self, exc: BaseException | None) -> bool:
        """Called once the hooks are out; True swallows ``exc`` (the block's exception).
        By default: warn when the hooks saw forwards of other threads only."""
        if exc is None and self.foreign_calls and not self.fired:
            warnings.warn(
                f"the hooks of this {type(self).__name__} saw {self.foreign_calls} call(s) from "
                "other threads and none from the thread that entered the block, and acted on "
                "none: a block acts only on the forwards of its own thread; enter it in the "
                "thread that runs the model",
                RuntimeWarning,
                stacklevel=3,
            )
        return False

    def _guard(self, fn: HookFn) -> HookFn:
        def guarded(x: torch.Tensor) -> torch.Tensor | None:
            if self._owner == _get_ident() or (self._owner is not None and _graph_task() != -1):
                self.fired = True
                return fn(x)
            self.foreign_calls += 1
            return None

        return guarded

    def __enter__(self) -> T:
        if self._entered:
            raise RuntimeError(
                f"a {type(self).__name__} is entered once; call capture(...) / splice(...) again"
            )
        self._entered = True
        self._guarded = _SIGINT.acquire()
        try:
            self._owner = _get_ident()
            for context in self._contexts:
                self._undo.enter_context(context)
            for loc, fn in self._hooks:
                self._handles.append(add_hook(loc, self._guard(fn)))
        except BaseException:
            self._remove()
            _SIGINT.deliver()
            raise
        if self._guarded and _SIGINT.pending is not None:  # Ctrl-C while the hooks went in:
            self._remove()  # out again, then raise it
            _SIGINT.deliver()
        return self._value

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        try:
            self._remove()
            return self.finish(exc)
        finally:
            _SIGINT.deliver()

    def _remove(self) -> None:
        self._owner = None  # from here on every hook of this block is inert
        try:
            while self._handles:
                self._handles.pop().remove()
            self._undo.close()
        finally:
            if self._guarded:
                self._guarded = False
                _SIGINT.release()


_CRITICAL = {HookBlock.__enter__.__code__, HookBlock.__exit__.__code__}


class _SigintDeferral:
    """The process's SIGINT handler while hook blocks are open in the main thread."""

    def __init__(self) -> None:
        self.depth = 0
        self.previous: Any = None  # the handler to call, now or when a deferral ends
        self.pending: FrameType | None = None  # set: a Ctrl-C waits for a block method's end

    def acquire(self) -> bool:
        """Route SIGINT through :meth:`handle`; False where Python cannot or need not."""
        if _get_ident() != threading.main_thread().ident:
            return False  # signal handlers belong to the main thread, and so do its interrupts
        if self.depth == 0:
            current = _get_handler(signal.SIGINT)
            if not callable(current):  # SIG_IGN, SIG_DFL or a handler set from C
                return False
            self.previous = current
            _set_handler(signal.SIGINT, _on_sigint)
        self.depth += 1
        return True

    def release(self) -> None:
        self.depth -= 1
        if self.depth == 0:
            current = _set_handler(signal.SIGINT, self.previous)
            if current is not _on_sigint and current is not None:
                _set_handler(signal.SIGINT, current)  # set inside the block: the owner's to keep

    def handle(self, signum: int, frame: FrameType | None) -> None:
        probe = frame
        while probe is not None:
            if probe.f_code in _CRITICAL:
                self.pending = frame
                return
            probe = probe.f_back
        self.previous(signum, frame)

    def deliver(self) -> None:
        """Raise (through the handler it was meant for) a Ctrl-C deferred until now."""
        if self.pending is None or _get_ident() != threading.main_thread().ident:
            return
        frame, self.pending = self.pending, None
        self.previous(signal.SIGINT, frame)


_SIGINT = _SigintDeferral()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _SIGINT.handle(signum, frame)
