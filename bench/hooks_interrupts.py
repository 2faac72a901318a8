"""Hooks under a real Ctrl-C at a random instant, and two threads on one model.

One command: `.venv/bin/python bench/hooks_interrupts.py` (5,000 blocks a model, about
a minute on an idle 2-core CPU). Figures go to docs/reliability.md; the quick version
of both checks is tests/test_hooks_interrupts.py, which imports this file.

Interrupts. Each block (a `capture`, `capture_batch`, `splice` on one or two points
with edits, `splice_transcoder`, a capture nested in a splice) runs once per
iteration, with an interval timer armed at a random delay drawn over the block's
typical duration (a third of the draws inside its first and last 15%, where the hooks
are installed and removed). The timer's SIGALRM handler raises a real SIGINT, so the
interpreter handles it exactly as it handles Ctrl-C: at its next check between two
bytecodes, wherever the block then is (installing hook 1 or 2, inside
`__enter__`/`__exit__`, in the forward). The harness catches the KeyboardInterrupt,
keeps it (as Jupyter keeps the last traceback) and counts what the block left behind:
hooks on any module (`_forward_hooks`, `_forward_pre_hooks`, TransformerLens
HookPoints included), a leaked hook that still changes the output, the grad mode, the
SAE's train/eval mode, the SIGINT handler. A SIGINT that never became a
KeyboardInterrupt is counted as lost.

Threads. Two threads share one model: one runs `splice` forwards (an SAE whose
reconstruction changes the logits), the other plain forwards and `capture` /
`capture_batch` blocks, 100 each, started together; every output is compared with the
same call made alone beforehand.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from sae_hooks.hooks import (  # noqa: E402
    ZeroLatents,
    capture,
    capture_batch,
    splice,
    splice_transcoder,
)
from sae_hooks.sae import TopKSAE, Transcoder  # noqa: E402

Block = Callable[[], object]


def hook_ids(modules: list[nn.Module]) -> set[tuple[int, str, int]]:
    """(module index, kind, hook id) of every forward hook and pre-hook on these modules
    (HookPoints are modules too). Compared with the set before the run: transformers 5
    installs hooks of its own (output_hidden_states) that are not ours to count."""
    return {
        (i, kind, key)
        for i, m in enumerate(modules)
        for kind, hooks in (("hook", m._forward_hooks), ("pre", m._forward_pre_hooks))
        for key in hooks
    }


def logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The model's logits, HF (a ModelOutput) or TransformerLens (a Tensor)."""
    out = model(tokens)
    return getattr(out, "logits", out)


def changes_output(model: nn.Module, tokens: torch.Tensor, clean: torch.Tensor) -> bool:
    """Whether the model's output differs from `clean` (or the forward now fails)."""
    try:
        with torch.no_grad():
            return not torch.equal(logits(model, tokens), clean)
    except Exception:  # e.g. a transcoder's output hook left without its input hook
        return True


def strip_hooks(modules: list[nn.Module], ids: set[tuple[int, str, int]]) -> None:
    """Remove these hooks (after counting a leak, so the next block starts clean)."""
    for i, kind, key in ids:
        m = modules[i]
        if kind == "hook":
            for hooks in (m._forward_hooks, m._forward_hooks_with_kwargs):
                hooks.pop(key, None)
            m._forward_hooks_always_called.pop(key, None)
        else:
            for hooks in (m._forward_pre_hooks, m._forward_pre_hooks_with_kwargs):
                hooks.pop(key, None)


def make_blocks(model: nn.Module, d: int, tokens: torch.Tensor) -> tuple[dict[str, Block], list]:
    """The blocks under test, by name, and the SAEs they splice (whose mode is checked)."""
    torch.manual_seed(0)
    sae = TopKSAE(d, 4 * d, top_k=8)
    transcoder = Transcoder(d, 4 * d)
    sae.train(), transcoder.train()  # splice runs them in eval mode and must put this back
    with torch.no_grad():  # a visible reconstruction error: a leaked splice moves the logits
        sae.get_dictionary().mul_(3.0)

    def run() -> object:
        return model(tokens)

    def skip() -> None:
        return None

    def blocks_running(body: Callable[[], object]) -> dict[str, Block]:
        def plain_capture():
            points = ["resid_post.0", "resid_pre.2"]
            # "never fired" when there is no forward
            with contextlib.suppress(RuntimeError), capture(model, points):
                body()

        def one_splice():
            with splice(model, "resid_post.1", sae):
                body()

        def two_point_splice():
            points = {"resid_post.0": sae, "resid_mid.2": sae}
            with splice(model, points, edit=ZeroLatents([1, 2]), record_latents=True):
                body()

        def transcoded():
            with splice_transcoder(model, "mlp_in.1", "mlp_out.1", transcoder):
                body()

        def nested():
            spliced, captured = splice(model, "resid_post.0", sae), capture(model, "resid_post.2")
            with contextlib.suppress(RuntimeError), spliced, captured:
                body()

        return {
            "capture": plain_capture,
            "splice": one_splice,
            "splice 2 points + edit": two_point_splice,
            "splice_transcoder": transcoded,
            "splice + capture nested": nested,
        }

    blocks = {f"{name}, forward": b for name, b in blocks_running(run).items()}
    blocks |= {f"{name}, empty body": b for name, b in blocks_running(skip).items()}
    blocks["capture_batch"] = lambda: capture_batch(model, ["resid_pre.1", "resid_post.1"], tokens)
    return blocks, [sae, transcoder]


@dataclass
class Tally:
    """What the interrupted blocks left behind, per block name where it matters."""

    blocks: Counter = field(default_factory=Counter)
    interrupted: Counter = field(default_factory=Counter)  # KeyboardInterrupt from inside
    leaked: Counter = field(default_factory=Counter)  # blocks that left >= 1 hook
    active: int = 0  # leaking blocks whose hooks still changed the model's output
    state: int = 0  # grad mode, an SAE's mode or the SIGINT handler not put back
    lost: int = 0  # SIGINTs that never became a KeyboardInterrupt
    seconds: float = 0.0

    @property
    def total_leaked(self) -> int:
        return sum(self.leaked.values())


def block_seconds(blocks: dict[str, Block], repeats: int = 5) -> dict[str, float]:
    times = {}
    for name, block in blocks.items():
        block()  # warm up
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            block()
            samples.append(time.perf_counter() - start)
        times[name] = statistics.median(samples)
    return times


def draw_delay(rng: random.Random, seconds: float) -> float:
    """Uniform over the block, with extra weight on its first and last 15%."""
    u = rng.random()
    if u < 1 / 6:
        at = rng.uniform(0, 0.15)
    elif u < 1 / 3:
        at = rng.uniform(0.85, 1.05)
    else:
        at = rng.uniform(0, 1.1)
    return max(at * seconds, 1e-6)


def interrupt_blocks(
    model: nn.Module,
    d: int,
    tokens: torch.Tensor,
    n: int,
    seed: int = 0,
    forward_share: float = 0.5,
) -> Tally:
    """Run `n` blocks, each hit by one real SIGINT at a random instant; count the leftovers.

    ``forward_share``: the fraction of blocks that run a forward; the others have an
    empty body, so that the instants inside ``__enter__``/``__exit__`` are drawn often."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("the interrupt harness needs the main thread (signal handlers)")
    blocks, saes = make_blocks(model, d, tokens)
    with torch.no_grad():
        clean = logits(model, tokens)
    modes = [[m.training for m in sae.modules()] for sae in saes]
    modules = list(model.modules())
    baseline = hook_ids(modules)
    seconds = block_seconds(blocks)
    rng, tally = random.Random(seed), Tally()
    empty = sorted(name for name in blocks if name.endswith("empty body"))
    forward = sorted(set(blocks) - set(empty))
    fired = [False]

    def on_alarm(signum, frame):
        fired[0] = True
        signal.raise_signal(signal.SIGINT)  # handled like a Ctrl-C from here on

    old_alarm = signal.signal(signal.SIGALRM, on_alarm)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    start = time.perf_counter()
    try:
        for _ in range(n):
            name = rng.choice(forward if rng.random() < forward_share else empty)
            tally.blocks[name] += 1
            delay = draw_delay(rng, seconds[name])
            kept = _one_interrupted_block(blocks[name], name, delay, fired, tally)
            tally.state += _restore_state(saes, modes)
            left = hook_ids(modules) - baseline
            if left:
                tally.leaked[name] += 1
                tally.active += changes_output(model, tokens, clean)
                strip_hooks(modules, left)
            del kept
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_alarm)
        signal.signal(signal.SIGINT, old_int)
    tally.seconds = time.perf_counter() - start
    return tally


def _one_interrupted_block(
    block: Block, name: str, delay: float, fired: list, tally: Tally
) -> KeyboardInterrupt | None:
    """One block under an armed timer. Returns the KeyboardInterrupt, which the caller
    keeps (its traceback references the block's frames) while it counts the hooks."""
    fired[0] = False
    phase = "before"
    try:
        signal.setitimer(signal.ITIMER_REAL, delay)
        phase = "block"
        block()
        phase = "after"
        while not fired[0]:  # the timer fires after the block: wait for it here
            pass
        phase = "lost"
        for _ in range(10_000):  # a deferred interrupt has had every chance by now
            pass
        tally.lost += 1
    except KeyboardInterrupt as err:
        if phase == "block":
            tally.interrupted[name] += 1
        return err
    return None


def _restore_state(saes: list[nn.Module], modes: list[list[bool]]) -> int:
    """1 if the block left the grad mode, an SAE's mode or the SIGINT handler changed."""
    wrong = not torch.is_grad_enabled()
    wrong |= signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    for sae, mode in zip(saes, modes):
        wrong |= [m.training for m in sae.modules()] != mode
        for m, was in zip(sae.modules(), mode):
            m.training = was
    torch.set_grad_enabled(True)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return int(wrong)


@dataclass
class Interference:
    """Per thread: calls whose result differed from the same call made alone, and the
    exceptions (by type name) a thread's own calls raised."""

    calls: int = 0
    spliced_wrong: int = 0  # thread A's splice outputs
    plain_wrong: int = 0  # thread B's plain forwards
    captures_wrong: int = 0  # thread B's capture / capture_batch activations
    errors: Counter = field(default_factory=Counter)


def thread_interference(
    model: nn.Module, d: int, tokens: torch.Tensor, n: int = 100
) -> Interference:
    """Thread A: `n` splice forwards; thread B: `n` plain forwards, captures and
    capture_batch calls, in turn; both started together on one model. Every result is
    compared with the same call made alone first."""
    torch.manual_seed(0)
    sae = TopKSAE(d, 4 * d, top_k=8).eval()
    with torch.no_grad():
        sae.get_dictionary().mul_(3.0)
    point = "resid_post.1"

    def spliced() -> torch.Tensor:
        with torch.no_grad(), splice(model, point, sae, edit=ZeroLatents([0, 1, 2])):
            return logits(model, tokens)

    def plain() -> torch.Tensor:
        with torch.no_grad():
            return logits(model, tokens)

    def captured() -> torch.Tensor:
        with torch.no_grad(), capture(model, point) as acts:
            model(tokens)
        return acts[point]

    def batch() -> torch.Tensor:
        return capture_batch(model, point, tokens).acts[point]

    b_calls = [plain, captured, batch]
    alone = {f: f() for f in [spliced, *b_calls]}
    got = Interference()
    start = threading.Barrier(2)

    def worker(calls: list[Callable[[], torch.Tensor]]) -> None:
        start.wait()
        for i in range(n):
            call = calls[i % len(calls)]
            try:
                out = call()
            except Exception as err:  # another thread's stop-early exception, say
                got.errors[f"{call.__name__}: {type(err).__name__}"] += 1
                continue
            if not torch.allclose(out, alone[call], rtol=1e-5, atol=1e-5):
                if call is spliced:
                    got.spliced_wrong += 1
                elif call is plain:
                    got.plain_wrong += 1
                else:
                    got.captures_wrong += 1

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so that the forwards interleave
    try:
        threads = [threading.Thread(target=worker, args=(c,)) for c in ([spliced], b_calls)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(switch)
    got.calls = 2 * n
    return got


def tiny_models(d: int = 64) -> dict[str, nn.Module]:
    """A tiny random-init GPT-2 (Hugging Face) and HookedTransformer (TransformerLens)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from sae_hooks.models import tiny_model

    cfg = HookedTransformerConfig(
        n_layers=4,
        d_model=d,
        n_ctx=64,
        d_head=16,
        n_heads=d // 16,
        d_mlp=4 * d,
        d_vocab=512,
        act_fn="gelu_new",
        normalization_type="LN",
        seed=0,
    )
    return {
        "GPT-2 (HF)": tiny_model("gpt2", d_model=d, n_layers=4, context=64),
        "HookedTransformer (TL)": HookedTransformer(cfg).eval(),
    }


def print_interrupts(models: dict[str, nn.Module], tokens: torch.Tensor, args) -> None:
    print("| model | block | blocks | interrupted inside | left a hook |")
    print("|---|---|---:|---:|---:|")
    notes = []
    for label, model in models.items():
        tally = interrupt_blocks(model, 64, tokens, args.blocks, args.seed, args.forward_share)
        for name in sorted(tally.blocks):
            print(
                f"| {label} | {name} | {tally.blocks[name]:,} | {tally.interrupted[name]:,} "
                f"| {tally.leaked[name]:,} |"
            )
        print(
            f"| {label} | **all** | {sum(tally.blocks.values()):,} | "
            f"{sum(tally.interrupted.values()):,} | {tally.total_leaked:,} |"
        )
        notes.append(
            f"{label}: leaked hooks that still changed the output {tally.active}, blocks that "
            f"left the grad mode / an SAE's mode / the SIGINT handler changed {tally.state}, "
            f"Ctrl-C lost {tally.lost}; {tally.seconds:.1f} s"
        )
    print("\n" + "\n".join(notes))


def print_threads(models: dict[str, nn.Module], n: int) -> None:
    tokens = torch.randint(0, 512, (1, 8), generator=torch.Generator().manual_seed(0))
    print(
        "\n| model | A: splice outputs changed | B: plain forwards changed "
        "| B: captures wrong | exceptions |"
    )
    print("|---|---:|---:|---:|---|")
    b_plain = len(range(0, n, 3))
    for label, model in models.items():
        got = thread_interference(model, 64, tokens, n)
        errors = ", ".join(f"{k} x{v}" for k, v in sorted(got.errors.items())) or "none"
        print(
            f"| {label} | {got.spliced_wrong}/{n} | {got.plain_wrong}/{b_plain} | "
            f"{got.captures_wrong}/{n - b_plain} | {errors} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=5000, help="interrupted blocks a model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads-n", type=int, default=100, help="calls a thread")
    parser.add_argument("--forward-share", type=float, default=0.5, help="blocks with a forward")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"torch {torch.__version__}, Python {sys.version.split()[0]}, "
        f"1-minute load average {os.getloadavg()[0]:.1f}\n"
    )
    models = tiny_models()
    tokens = torch.randint(0, 512, (1, 4), generator=torch.Generator().manual_seed(0))
    print_interrupts(models, tokens, args)
    print_threads(models, args.threads_n)


if __name__ == "__main__":
    main()
