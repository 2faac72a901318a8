"""Training-step throughput: sae-hooks' Trainer vs SAELens and sparsify, side by side.

One command: `.venv/bin/python bench/bench_train.py` (CPU-sized: 768 -> 6144, 2048
rows a step, k = 32 per token). `--gpu-size` is GPT-2 width (768 -> 24576, 8192 rows
a step) for a GPU: `--device cuda --gpu-size`.

Each side runs the step its users run: our `Trainer.train_step` (forward, MSE +
the variant's sparsity loss, backward, decoder-gradient projection, grad clip,
Adam, row renormalisation, fire statistics) and SAELens's `SAETrainer.step`
(forward, its losses, backward, grad clip, Adam, LR / coefficient schedulers,
fire statistics) and, for TopK (the only one of our variants it has), EleutherAI
sparsify's step as the body of its Trainer.fit loop runs it (`sparsify_step`:
fused TopK encoder, FVU, backward, gradient projection, SignSGD in a schedule-free
wrapper, unit decoder rows, fire statistics). bf16 autocast on CUDA for all, fp32
on CPU. Rows are random normal, fed from memory. SAELens and sparsify run in the
bench venv (see bench/README.md), each in a worker process of this script kept
alive and driven over stdin/stdout, so that the sides alternate round by round and
share whatever load the machine has. `--no-saelens` / `--no-sparsify` leave a side
out; a side whose package does not import there is left out with a printed note.

Peak memory during the timed steps: torch.cuda.max_memory_allocated on CUDA; on
CPU the process's peak RSS (VmHWM, reset through /proc/self/clear_refs), which
includes the interpreter and whatever the allocator kept from earlier variants.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path

import torch
from _common import PeakMemory, machine, spread, sync

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("batchtopk", "jumprelu", "topk", "relu")
#: variants that --ratio and --fire-stats also time (ours alone: no side to compare with)
OURS_ONLY = ("matryoshka_batchtopk",)
SAELENS_ARCH = {
    "batchtopk": "batchtopk",
    "jumprelu": "jumprelu",
    "topk": "topk",
    "relu": "standard",
}
SIDES = ("saelens", "sparsify")
"""The comparison sides, each run by a worker process of this script in the bench venv."""
DEFAULT_SAELENS_PYTHON = (
    "/work/venv-peers/bin/python",
    "/work/venv-bench/bin/python",
    str(ROOT / ".venv-bench/bin/python"),
)


# ---------------------------------------------------------------- measuring


def time_steps(step, x: torch.Tensor, n: int, device: torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds for n steps on one batch, the device drained around them."""
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(n):
        step(x)
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


# ---------------------------------------------------------------- the two sides


def ours_step(
    variant: str,
    args: argparse.Namespace,
    run_dir: Path,
    dense: bool = False,
    x: torch.Tensor | None = None,
    *,
    defaults: bool = False,
    target_l0: float | None = None,
    autocast: bool | None = None,
):
    """Our Trainer's step for `variant`, built as `train()` builds it. dense: both
    sparse paths off (decoder and encoder gradient). x: a batch that JumpReLU's
    thresholds are set on so that it keeps k codes per row, its target L0.
    defaults: the variant's own warm-up (`row_topk_warmup`) instead of none.
    target_l0: the penalised variants' L0 target (the coefficient steered to it).
    autocast: TrainConfig.autocast (None: bf16 on CUDA only)."""
    sys.path.insert(0, str(ROOT))
    from sae_hooks.train import TrainConfig, Trainer

    torch.manual_seed(0)
    warmup = {} if defaults else {"row_topk_warmup": 0.0}  # 0: the variant's own selection
    config = TrainConfig(
        architecture=variant,
        nb_concepts=args.nb,
        k_per_token=args.k if "topk" in variant else None,
        batch_size=args.batch,
        steps=1000,
        device=args.device,
        b_dec_init="mean",
        **warmup,
        target_l0=target_l0,
        init_rows=args.batch,
        log_every=10**6,
        val_every=0,
        checkpoint_every=0,
        progress=False,
        autocast=autocast,
    )
    trainer = Trainer(config, torch.randn(2 * args.batch, args.d), run_dir)
    if dense:
        trainer.sae.sparse_decode = False
        trainer.sae.sparse_encoder_grad = False
    if variant in ("jumprelu", "relu") and x is not None:
        at_target_l0_(trainer.sae, x * trainer.scale, args.k)
    return trainer.train_step  # the body of Trainer.fit's loop, without data loading


@torch.no_grad()
def our_l0(trainer: typing.Any, x: torch.Tensor) -> float:
    """Codes per row of our SAE on x in its training selection (TopK's k, BatchTopK's
    batch budget, JumpReLU's thresholds or warm-up top-k, ReLU's positive codes); the
    running BatchTopK threshold is left where it is."""
    sae = trainer.sae
    frozen = getattr(sae, "frozen_threshold", contextlib.nullcontext)
    with frozen(), torch.enable_grad(), sae.step_phase(trainer.step, trainer.config):
        z = sae(x * trainer.scale).z
    return float((z.detach() != 0).sum()) / x.shape[0]


@torch.no_grad()
def at_target_l0_(sae: torch.nn.Module, x: torch.Tensor, k: int) -> None:
    """k codes per row on average, the L0 a trained JumpReLU / ReLU SAE is steered to:
    each JumpReLU threshold at its latent's (1 - k/n) quantile of pre-codes on x, or
    each ReLU encoder bias lowered by that quantile."""
    pre = sae.encode(x)[0]
    rank = max(1, round(pre.shape[0] * (1 - k / pre.shape[1])))
    quantile = pre.kthvalue(rank, dim=0).values
    if hasattr(sae, "log_threshold"):
        sae.log_threshold.copy_(quantile.clamp_min(1e-3).log())
    else:
        sae.encoder.bias.sub_(quantile)


def ratio_table(args: argparse.Namespace, variants: list[str], device: torch.device) -> None:
    """Step time / encoder forward matmul time, interleaved (matmul, step, matmul, ...).

    The encoder's forward matmul (rows x d) @ (d x n) is the irreducible work of a
    step; each round times one matmul and one step back to back, and the ratio is
    taken within the round, so load spells hit both. Also the step's peak memory
    growth in (rows x n) fp32 matrices (peak RSS on CPU, max_memory_allocated on
    CUDA, above what was resident before the step). The CPU-time ratio (process CPU
    seconds of the step over the matmul's) moves less than the wall-time one when other
    jobs share the cores. The median step over the median matmul is printed too: on a
    machine whose matmul alone moves between rounds (42-53 ms on the Intel Xeon VM of
    2026-12-07), it does not inherit one round's fast or slow matmul.

    The matmul is `F.linear`, which allocates its (rows x n) output each call: on the
    host that output is a fresh mapping, faulted in as the GEMM writes it (~10 ms of a
    ~60 ms matmul at 2,048 x 6,144). The step writes its pre-codes into a matrix it
    keeps, so the median step over a matmul into a kept buffer is printed too (the
    stricter ratio; on CUDA the allocator caches, and only F.linear is timed). Page
    faults a step: the process's minor faults over the timed steps (getrusage).
    """
    import torch.nn.functional as F

    widths = [int(v) for v in args.widths.split(",")] if args.widths else [args.nb]
    ks = [int(v) for v in args.ks.split(",")] if args.ks else [args.k]
    print(machine(device))
    print(
        f"\nstep / encoder forward matmul, {args.d} -> n, {args.batch} rows, "
        f"{args.rounds} interleaved rounds of {args.steps} steps; fp32 unless CUDA (bf16 autocast)"
    )
    print(
        "\n| variant | path | n | k | ratio min | median | max | step ms (median) "
        "| peak (rows x n) matrices | CPU-time ratio (median) "
        "| median step / median matmul | / matmul into a kept buffer "
        "| page faults a step | load avg |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    x = torch.randn(args.batch, args.d, device=device)
    for nb in widths:
        weight = torch.randn(nb, args.d, device=device) / args.d**0.5
        for k in ks:
            size = argparse.Namespace(**{**vars(args), "nb": nb, "k": k})
            paths = ["sparse", "dense"] if args.dense else ["sparse"]
            for variant in variants:
                for path in paths:
                    with tempfile.TemporaryDirectory(prefix="bench_ratio_") as tmp:
                        step = ours_step(variant, size, Path(tmp), path == "dense", x)
                        _ratio_row(step, weight, x, variant, path, size, device, F)
                        del step


WARM_UP_STEPS = 3
"""Untimed steps before a ratio row: with one, the first row of a run measured up to 2x
slower than the same variant run second (fresh memory faulting in)."""


def _ratio_row(step, weight, x, variant, path, args, device, F) -> None:
    def matmul(rows: torch.Tensor) -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            F.linear(rows, weight)

    kept = torch.empty(x.shape[0], weight.shape[0], device=device)

    def kept_matmul(rows: torch.Tensor) -> None:  # the step's own: into a kept buffer
        torch.mm(rows, weight.t(), out=kept)

    for _ in range(WARM_UP_STEPS):  # Adam state, the allocator's pools, page faults
        step(x)
        matmul(x)
    ratios, cpu_ratios, steps, matmuls, kept_mms, peaks, faults, loads = ([] for _ in range(8))
    for _ in range(args.rounds):
        base = _resident(device)
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        with PeakMemory(device) as mem:
            step_s, step_cpu = time_steps(step, x, args.steps, device)
        faults.append(
            (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before) / args.steps
        )
        if mem.bytes is not None and base is not None:
            peaks.append((mem.bytes - base) / (x.shape[0] * args.nb * 4))
        mm_s, mm_cpu = time_steps(matmul, x, args.steps, device)
        if device.type == "cpu":
            kept_mms.append(time_steps(kept_matmul, x, args.steps, device)[0] / args.steps)
        ratios.append(step_s / mm_s)
        cpu_ratios.append(step_cpu / mm_cpu)
        steps.append(step_s / args.steps)
        matmuls.append(mm_s / args.steps)
        loads.append(os.getloadavg()[0])
    ratios.sort()
    peak = f"{max(peaks):.2f}" if peaks else "-"
    step_ms = statistics.median(steps)
    over_kept = f"{step_ms / statistics.median(kept_mms):.2f}" if kept_mms else "-"
    print(
        f"| {variant} | {path} | {args.nb} | {args.k} | {ratios[0]:.2f} "
        f"| {statistics.median(ratios):.2f} | {ratios[-1]:.2f} "
        f"| {step_ms * 1e3:,.0f} | {peak} "
        f"| {statistics.median(cpu_ratios):.2f} "
        f"| {step_ms / statistics.median(matmuls):.2f} | {over_kept} "
        f"| {statistics.median(faults):,.0f} "
        f"| {min(loads):.1f}-{max(loads):.1f} |",
        flush=True,
    )


def fire_stats_table(args: argparse.Namespace, variants: list[str], device: torch.device) -> None:
    """What the fire statistics cost a step: `Trainer.train_step` as built against the same
    step with `fire_counts` swapped for a constant, alternating within each round."""
    sys.path.insert(0, str(ROOT))
    from sae_hooks.train import trainer as trainer_module

    counted = trainer_module.fire_counts
    x = torch.randn(args.batch, args.d, device=device)
    print(machine(device))
    print(
        f"\nstep with / without fire statistics, {args.d} -> {args.nb}, {args.batch} rows, "
        f"k = {args.k}; {args.rounds} rounds of {args.steps} steps each way"
    )
    print("\n| variant | with / without (min / median / max) | step ms (median) | load avg |")
    print("|---|---:|---:|---:|")
    for variant in variants:
        with tempfile.TemporaryDirectory(prefix="bench_fires_") as tmp:
            step = ours_step(variant, args, Path(tmp), x=x)
            for _ in range(WARM_UP_STEPS):
                step(x)
            ratios, steps, loads = [], [], []
            try:
                for _ in range(args.rounds):
                    trainer_module.fire_counts = counted
                    with_s = time_steps(step, x, args.steps, device)[0]
                    trainer_module.fire_counts = _no_fire_counts
                    ratios.append(with_s / time_steps(step, x, args.steps, device)[0])
                    steps.append(with_s / args.steps * 1e3)
                    loads.append(os.getloadavg()[0])
            finally:
                trainer_module.fire_counts = counted
        print(
            f"| {variant} | {spread(ratios, '{:.3f}')} | {statistics.median(steps):,.0f} "
            f"| {min(loads):.1f}-{max(loads):.1f} |",
            flush=True,
        )


def autocast_table(args: argparse.Namespace, variants: list[str], device: torch.device) -> None:
    """The fp32 step against the same step under bf16 autocast (TrainConfig(autocast=True),
    fp32 weights and Adam), alternating within each round; the bare encoder matmul in
    both dtypes for scale. On CPUs with AMX (Intel Sapphire Rapids and later) oneDNN runs
    the bf16 matmuls on it."""
    x = torch.randn(args.batch, args.d, device=device)
    weight = torch.randn(args.nb, args.d, device=device)

    def bare_matmul_ms(dtype: torch.dtype, n: int = 8) -> float:
        rows, w = x.to(dtype), weight.to(dtype)
        rows @ w.t()
        return time_steps(lambda _: rows @ w.t(), x, n, device)[0] / n * 1e3

    print(machine(device))
    print(
        f"\nfp32 step against bf16 autocast, {args.d} -> {args.nb}, {args.batch} rows, "
        f"k = {args.k}; {args.rounds} rounds of {args.steps} steps each way; the encoder "
        f"matmul alone: fp32 {bare_matmul_ms(torch.float32):.1f} ms, "
        f"bf16 {bare_matmul_ms(torch.bfloat16):.1f} ms"
    )
    print("\n| variant | fp32 ms | autocast ms | fp32 / autocast (min / median / max) | load avg |")
    print("|---|---:|---:|---:|---:|")
    for variant in variants:
        with tempfile.TemporaryDirectory(prefix="bench_autocast_") as tmp:
            steps = {
                on: ours_step(variant, args, Path(tmp) / str(on), x=x, autocast=on)
                for on in (False, True)
            }
            for step in steps.values():
                for _ in range(WARM_UP_STEPS):
                    step(x)
            times: dict[bool, list[float]] = {False: [], True: []}
            ratios, loads = [], []
            for _ in range(args.rounds):
                for on, step in steps.items():
                    times[on].append(time_steps(step, x, args.steps, device)[0] / args.steps)
                ratios.append(times[False][-1] / times[True][-1])
                loads.append(os.getloadavg()[0])
        print(
            f"| {variant} | {statistics.median(times[False]) * 1e3:,.0f} "
            f"| {statistics.median(times[True]) * 1e3:,.0f} | {spread(ratios, '{:.2f}')} "
            f"| {min(loads):.1f}-{max(loads):.1f} |",
            flush=True,
        )


def defaults_table(args: argparse.Namespace, device: torch.device) -> None:
    """Steps at default configs, each against TopK's step (k codes a row) in the same
    round: JumpReLU with its default warm-up (the first half of the run selects each
    row's top k) timed before, at and after its switch (the step that sets every
    threshold from the batch), and ReLU with no target L0 (at init about half its codes
    fire: the dense path) beside ReLU at L0 = k. Trainers of 1,000 steps, their step
    counter set before each timed step, and a second JumpReLU trained
    AFTER_SWITCH steps past its switch; L0 measured on the batch after the rounds, in the
    state each timed step saw (after the switch: right after a switch step, whose own
    update moves the thresholds it has just set). The JumpReLU trained past its switch
    (target_l0 = k, its coefficient steered) is compared with TopK at its own L0 (k =
    that L0, in the row before it), every other
    case with TopK at k. The
    CPU-time ratio (process CPU seconds against TopK's in the same round) moves less than
    the wall-time one when other jobs share the cores."""
    x = torch.randn(args.batch, args.d, device=device)
    print(machine(device))
    print(
        f"\ndefault configs against TopK, {args.d} -> {args.nb}, {args.batch} rows, "
        f"k = {args.k}; {args.rounds} interleaved rounds of {args.steps} steps"
    )
    print(
        "\n| case | step ms (median) | / TopK step (min / median / max) "
        "| / TopK, CPU time (median) | L0 | load avg |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="bench_defaults_") as tmp:
        topk = ours_step("topk", args, Path(tmp) / "topk", x=x)
        jump = ours_step("jumprelu", args, Path(tmp) / "jumprelu", defaults=True).__self__
        switch = round(jump.config.row_topk_warmup * jump.config.steps)
        relu = ours_step("relu", args, Path(tmp) / "relu", defaults=True)
        relu_k = ours_step("relu", args, Path(tmp) / "relu_k", x=x)
        later = ours_step("jumprelu", args, Path(tmp) / "later", defaults=True, target_l0=args.k)
        _train_past_switch(later, x)
        # its L0 drifts from k in those steps: TopK at that L0 is its reference
        later_k = max(1, round(our_l0(later.__self__, x)))
        size = argparse.Namespace(**{**vars(args), "k": later_k})
        topk_later = ours_step("topk", size, Path(tmp) / "topk_later", x=x)
        later_name = f"jumprelu, {AFTER_SWITCH} steps after the switch"
        cases = {
            "topk, k per row": (topk, None),
            "jumprelu, warm-up (top-k a row)": (jump.train_step, switch - 1),
            "jumprelu, the switch step (re-threshold)": (jump.train_step, switch),
            "jumprelu, after the switch": (jump.train_step, switch + 1),
            f"topk, k = {later_k} (the L0 of the next row)": (topk_later, None),
            later_name: (later, None),
            "relu, defaults (no target L0)": (relu, None),
            "relu at L0 = k": (relu_k, None),
        }
        reference = {later_name: f"topk, k = {later_k} (the L0 of the next row)"}
        times = {name: [] for name in cases}
        cpu = {name: [] for name in cases}
        for step, at in cases.values():  # warm-up, in order: the switch sets theta
            _at_step(jump, at)
            step(x)
        loads = []
        for _ in range(args.rounds):
            for name, (step, at) in cases.items():
                _at_step(jump, at)
                wall, cpu_s = time_steps(step, x, args.steps, device)
                times[name].append(wall / args.steps)
                cpu[name].append(cpu_s)
            loads.append(os.getloadavg()[0])
        for name, (step, at) in cases.items():
            if at is not None and at > switch:  # as timed: right after a switch step
                _at_step(jump, switch)
                jump.train_step(x)
            _at_step(jump, at)
            l0 = our_l0(jump if at is not None else step.__self__, x)
            ref = reference.get(name, "topk, k per row")
            ratios = [t / base for t, base in zip(times[name], times[ref])]
            cpu_ratios = [t / base for t, base in zip(cpu[name], cpu[ref])]
            print(
                f"| {name} | {statistics.median(times[name]) * 1e3:,.0f} "
                f"| {spread(ratios, '{:.2f}')} | {statistics.median(cpu_ratios):.2f} "
                f"| {l0:,.1f} | {min(loads):.1f}-{max(loads):.1f} |",
                flush=True,
            )


AFTER_SWITCH = 100
"""Steps `--defaults` trains a second JumpReLU past its switch (fresh Gaussian rows each)
before timing it: the thresholds have moved apart from the one value the switch set."""


def _train_past_switch(step: typing.Any, x: torch.Tensor) -> None:
    """The switch step, then AFTER_SWITCH more; the step counter advanced as `fit`
    advances it (train_step alone does not: before 2026-12-07 this left the counter at
    the switch, so every step here and every timed step re-set the thresholds)."""
    trainer = step.__self__
    trainer.step = round(trainer.config.row_topk_warmup * trainer.config.steps)
    gen = torch.Generator().manual_seed(1)
    for _ in range(AFTER_SWITCH + 1):
        step(torch.randn(x.shape, generator=gen).to(x.device))
        trainer.step += 1


def _at_step(trainer: typing.Any, step: int | None) -> None:
    if step is not None:
        trainer.step = step


AUXK_DEAD = (1, 100, 2000)
"""Dead-latent counts `--auxk` times (issue 35: one, a few, a third of 6144)."""


def auxk_table(args: argparse.Namespace, variants: list[str], device: torch.device) -> None:
    """A step with AuxK on against the same step with it off, at 1, 100 and 2,000 dead
    latents, in two cases. forced: a fresh SAE on Gaussian rows, random latents forced
    dead (about half their pre-codes > 0: every row fills its k_aux picks, the
    pessimistic case). trained: an SAE trained `--auxk-train-steps` steps on synthetic
    rows from 64 features (`eval.synthetic.uniform_features`, 4 active a row), the
    latents longest without firing dead (the trainer's own counters; "silent": how many
    did not fire in the second half of the run). Before every step
    the dead-latent counters are set so that exactly those latents are dead and AuxK is
    switched on, or left off. Each round times off, then on at each count, back to
    back; a ratio is taken within its round, so load spells hit both sides."""
    print(machine(device))
    print(
        f"\nstep with AuxK on / off, {args.d} -> {args.nb}, {args.batch} rows, k = {args.k}, "
        f"k_aux = min({args.d // 2}, dead); {args.rounds} interleaved rounds of {args.steps} steps"
    )
    print(
        "\n| variant | dead latents | dead | on / off (min / median / max) "
        "| on / off, CPU time (median) | off ms | on ms | AuxK picks a row | load avg |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant in variants:
        for case in ("forced", "trained"):
            with tempfile.TemporaryDirectory(prefix="bench_auxk_") as tmp:
                _auxk_rows(args, variant, case, Path(tmp), device)


def _auxk_rows(args, variant: str, case: str, run_dir: Path, device: torch.device) -> None:
    x = torch.randn(args.batch, args.d, device=device)
    trainer = ours_step(variant, args, run_dir, x=x).__self__
    order = _dead_latents(args.nb, args.nb)
    if case == "trained":
        x, order, really_dead = _trained(trainer, args, device)
        case = f"trained {args.auxk_train_steps} steps ({really_dead:,} silent)"
    steps = {n: _auxk_step(trainer, order[:n]) for n in (0, *AUXK_DEAD)}
    for step in steps.values():
        step(x)
    off, on, loads = [], {n: [] for n in AUXK_DEAD}, []
    for _ in range(args.rounds):
        off.append(time_steps(steps[0], x, args.steps, device))
        for n in AUXK_DEAD:
            on[n].append(time_steps(steps[n], x, args.steps, device))
        loads.append(os.getloadavg()[0])
    for n in AUXK_DEAD:
        ratios = [a[0] / b[0] for a, b in zip(on[n], off)]
        cpu = statistics.median(a[1] / b[1] for a, b in zip(on[n], off))
        print(
            f"| {variant} | {case} | {n:,} | {spread(ratios, '{:.2f}')} | {cpu:.2f} "
            f"| {statistics.median(t[0] for t in off) / args.steps * 1e3:,.0f} "
            f"| {statistics.median(t[0] for t in on[n]) / args.steps * 1e3:,.0f} "
            f"| {_picks_a_row(trainer, x, order[:n], args.d // 2):.1f} "
            f"| {min(loads):.1f}-{max(loads):.1f} |",
            flush=True,
        )


def _trained(trainer: typing.Any, args: argparse.Namespace, device: torch.device):
    """(a batch, latents longest without firing first, how many have not fired in the
    second half of the run) after `--auxk-train-steps` steps on synthetic rows scaled to Gaussian rows' norm."""
    from sae_hooks.eval.synthetic import uniform_features

    world = uniform_features(d=args.d, n_features=64, active=4.0, seed=0)
    batches = [world.sample_x(args.batch, seed=seed) for seed in range(8)]
    norm = statistics.mean(float(b.norm(dim=-1).mean()) for b in batches)
    batches = [(b * args.d**0.5 / norm).to(device) for b in batches]
    for step in range(args.auxk_train_steps):
        trainer.train_step(batches[step % len(batches)])
    since = trainer.dead.since_fired.cpu()
    order = torch.sort(since, descending=True, stable=True).indices
    silent = int((since >= args.batch * (args.auxk_train_steps // 2)).sum())
    return batches[0], order, silent


@torch.no_grad()
def _picks_a_row(trainer: typing.Any, x: torch.Tensor, dead: torch.Tensor, k_aux: int) -> float:
    """AuxK's picks a row (positive pre-codes among each row's top min(k_aux, dead))."""
    from sae_hooks.train.losses import dead_top_k

    if dead.numel() == 0:
        return 0.0
    mask = torch.zeros(trainer.sae.nb_concepts, dtype=torch.bool, device=x.device)
    mask[dead] = True
    pre = trainer.sae(x).z_pre
    return dead_top_k(pre, mask, min(k_aux, dead.numel()))[0].numel() / x.shape[0]


def _dead_latents(nb: int, n_dead: int) -> torch.Tensor:
    """The same n_dead random latents on every side and in every table."""
    return torch.randperm(nb, generator=torch.Generator().manual_seed(0))[:n_dead]


def _trainer_of(step: typing.Any) -> typing.Any:
    return step.__self__ if hasattr(step, "__self__") else step.trainer


def _with_dead(step: typing.Any, args: argparse.Namespace):
    """Our step with --dead latents dead before every step (AuxK on)."""
    trainer = step.__self__
    dead_step = _auxk_step(trainer, _dead_latents(args.nb, args.dead))
    dead_step.trainer = trainer  # type: ignore[attr-defined]
    return dead_step


def _auxk_step(trainer: typing.Any, dead: torch.Tensor):
    """trainer.train_step with exactly the latents `dead` dead, AuxK on unless none."""

    def step(x: torch.Tensor) -> None:
        trainer.dead.since_fired.zero_()
        trainer.dead.since_fired[dead] = trainer.dead.dead_tokens
        trainer.aux_active = dead.numel() > 0
        trainer.train_step(x)

    return step


def _no_fire_counts(out: typing.Any) -> torch.Tensor:
    return torch.zeros(out.z.shape[-1], dtype=torch.int64, device=out.z.device)


def _resident(device: torch.device) -> int | None:
    """Bytes in use now: CUDA allocations, or the process's RSS."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    text = Path("/proc/self/status").read_text()
    line = next((v for v in text.splitlines() if v.startswith("VmRSS:")), None)
    return None if line is None else int(line.split()[1]) * 1024


def saelens_step(variant: str, args: argparse.Namespace):
    """SAELens's SAETrainer.step for the same architecture, width and k."""
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer, SAETrainerConfig

    torch.manual_seed(0)
    common = {"d_in": args.d, "d_sae": args.nb, "device": args.device}
    sae = {
        "batchtopk": lambda: BatchTopKTrainingSAE(
            BatchTopKTrainingSAEConfig(k=float(args.k), **common)
        ),
        "topk": lambda: TopKTrainingSAE(TopKTrainingSAEConfig(k=args.k, **common)),
        "jumprelu": lambda: JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(**common)),
        "relu": lambda: StandardTrainingSAE(StandardTrainingSAEConfig(**common)),
    }[variant]()
    config = SAETrainerConfig(
        total_training_samples=1000 * args.batch,
        train_batch_size_samples=args.batch,
        lr_end=3e-5,  # the runner's default, lr / 10
        device=args.device,
        autocast=args.device.startswith("cuda"),
    )
    trainer = SAETrainer(config, sae, data_provider=iter(()))
    return trainer.step


@torch.no_grad()
def saelens_at_target_l0_(step: typing.Any, x: torch.Tensor, k: int) -> None:
    """SAELens's JumpReLU / standard SAE at k codes a row on x, as `at_target_l0_` sets
    ours: each JumpReLU threshold at its latent's (1 - k/n) quantile of pre-codes, or each
    standard SAE's b_enc lowered by it (at init both fire on thousands of latents a row)."""
    sae = step.__self__.sae
    pre = sae.encode_with_hidden_pre(x)[1]
    rank = max(1, round(pre.shape[0] * (1 - k / pre.shape[1])))
    quantile = pre.kthvalue(rank, dim=0).values
    if hasattr(sae, "threshold"):
        sae.threshold.copy_(quantile.clamp_min(1e-3).to(sae.threshold.dtype))
    else:
        sae.b_enc.sub_(quantile)


def saelens_with_dead(step: typing.Any, n_dead: int, nb: int):
    """SAELens's step with the same `n_dead` latents dead before every step (its
    passes-since-fired counters past the dead window), so that its AuxK runs."""
    trainer = step.__self__
    dead = _dead_latents(nb, n_dead)

    def dead_step(x: torch.Tensor) -> None:
        trainer.n_forward_passes_since_fired[dead] = trainer.cfg.dead_feature_window + 1
        step(x)

    dead_step.__self__ = trainer  # type: ignore[attr-defined]  # as a bound step's
    return dead_step


@torch.no_grad()
def saelens_l0(step: typing.Any, x: torch.Tensor) -> float:
    """Codes per row of SAELens's training SAE on x (its training encode)."""
    acts = step.__self__.sae.encode_with_hidden_pre(x)[0]
    return float((acts != 0).sum()) / x.shape[0]


SPARSIFY_ACTIVATION = {"topk": "topk"}
"""Our variants that sparsify has, and its activation for each. sparsify 1.3.3's
SparseCoderConfig.activation is "topk" or "groupmax" (a max per group of n / k latents,
none of ours); it has no BatchTopK, JumpReLU, ReLU or Matryoshka (`multi_topk` is an
extra loss on the 4k largest codes, off by default, not a variant)."""


def sparsify_step(variant: str, args: argparse.Namespace, dead: int | None = None):
    """sparsify's training step for a TopK SparseCoder, built as its Trainer builds it
    and run as the body of its `fit` loop runs it (sparsify/trainer.py, 1.3.3) with the
    defaults of its TrainConfig: FVU loss, AuxK off (auxk_alpha = 0), the "signum"
    optimiser (SignSGD in a ScheduleFreeWrapper, momentum 0.95, no scheduler,
    lr = 5e-3 / sqrt(n / 2**14)), no grad clipping, one micro-batch. dead: AuxK on
    instead (auxk_alpha = 1/32, ours and SAELens's coefficient) with these many latents
    dead at every step, the same ones as on the other sides."""
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig, TrainConfig
    from sparsify.sign_sgd import SignSGD

    cfg = TrainConfig(
        SparseCoderConfig(activation=SPARSIFY_ACTIVATION[variant], num_latents=args.nb, k=args.k)
    )
    if dead:
        cfg.auxk_alpha = 1 / 32
    device = torch.device(args.device)
    torch.manual_seed(0)
    sae = SparseCoder(args.d, cfg.sae, device, dtype=torch.float32)
    lr = cfg.lr or 5e-3 / (sae.num_latents / 2**14) ** 0.5
    optimizer = ScheduleFreeWrapper(
        SignSGD([{"params": sae.parameters(), "lr": lr}]), momentum=0.95
    )
    optimizer.train()
    since_fired = torch.zeros(sae.num_latents, device=device, dtype=torch.long)
    forced_dead = None
    if dead:
        forced_dead = torch.zeros(sae.num_latents, device=device, dtype=torch.bool)
        forced_dead[_dead_latents(sae.num_latents, dead).to(device)] = True
    did_fire = torch.zeros(sae.num_latents, device=device, dtype=torch.bool)
    state = {"step": 0, "fvu": 0.0}

    def step(x: torch.Tensor) -> None:
        # the forward hook of Trainer.fit: b_dec at the first batch's mean, unit decoder
        # rows, FVU against the batch's variance, fire mask, the logged FVU (a float(),
        # a host sync every step), backward
        if state["step"] == 0:
            sae.b_dec.data = x.mean(0).to(sae.dtype)
        sae.set_decoder_norm_to_unit_norm()
        dead = since_fired > cfg.dead_feature_threshold if cfg.auxk_alpha > 0 else None
        if forced_dead is not None:
            dead = forced_dead
        total_variance = (x - x.mean(0)).pow(2).sum()
        out = sae(x=x, y=x, dead_mask=dead, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        state["fvu"] += float(out.fvu.detach())
        loss = out.fvu + cfg.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        loss.div(cfg.grad_acc_steps * cfg.micro_acc_steps).backward()
        # then fit's optimiser step: gradient projection, step, zero_grad, dead counts
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            since_fired.add_(x.shape[0])
            since_fired[did_fire] = 0
            did_fire.zero_()
        state["step"] += 1

    return step


def decoder_table(args: argparse.Namespace, device: torch.device) -> None:
    """Forward + backward of the decoder alone, dense vs sparse, over code densities.

    What MAX_SPARSE_DENSITY in sae_hooks/sae/sparse.py was chosen from.
    """
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT))
    from sae_hooks.sae.sparse import decode_fixed, decode_ragged

    atoms = torch.randn(args.nb, args.d, device=device, requires_grad=True)
    bias = torch.zeros(args.d, device=device, requires_grad=True)
    upstream = torch.randn(args.batch, args.d, device=device)
    print(machine(device))
    print(
        f"\ndecoder alone, {args.nb} x {args.d}, {args.batch} rows; ms forward + backward, "
        f"min / median / max over {args.rounds} rounds, the three paths interleaved in each"
    )
    print(
        "\n| k per row | density | dense | sparse, fixed k | sparse, ragged | sparse / dense (median) | load avg |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    paths = (
        lambda z, indices: torch.addmm(bias, z, atoms),
        lambda z, indices: decode_fixed(indices, z.gather(-1, indices), atoms, bias),
        lambda z, indices: decode_ragged(z, atoms, bias),
    )
    for k in (8, 32, 128, 256, 512, 1024):
        if k > args.nb:
            break
        codes = F.relu(torch.randn(args.batch, args.nb, device=device))
        values, indices = codes.topk(k, dim=-1)
        z = torch.zeros_like(codes).scatter(-1, indices, values).requires_grad_()
        steps = []
        for path in paths:

            def step(_: object, path=path, z=z, indices=indices) -> None:
                path(z, indices).backward(upstream)

            step(None)
            steps.append(step)
        secs: list[list[float]] = [[] for _ in paths]
        loads = []
        for _ in range(args.rounds):
            for times, step in zip(secs, steps):
                times.append(time_steps(step, None, 1, device)[0] * 1e3)
            loads.append(os.getloadavg()[0])
        cells = [spread(times, "{:,.1f}") for times in secs]
        ratio = statistics.median(secs[2]) / statistics.median(secs[0])
        print(
            f"| {k} | {k / args.nb:.4f} | {' | '.join(cells)} | {ratio:.2f} "
            f"| {min(loads):.1f}-{max(loads):.1f} |",
            flush=True,
        )


class SideWorker:
    """One comparison side (SAELens or sparsify) in its own interpreter, one JSON request /
    reply per line. `info` is its first reply: versions, or `error` when the package
    does not import there."""

    def __init__(self, python: str, side: str, args: argparse.Namespace) -> None:
        cmd = [python, __file__, f"--worker={side}", *_size_flags(args)]
        self.side = side
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.side} worker exited (code {self.proc.wait()})")
        return json.loads(line)

    def ask(self, **request: object) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _side_info(side: str) -> dict:
    """Import the side's package (ImportError when it is not installed) and describe it."""
    info = {"torch": torch.__version__}
    if side == "saelens":
        import sae_lens

        return {**info, "version": sae_lens.__version__}
    # sparsify prints which decoder it picked (Triton or eager) on stdout at import;
    # stdout is this worker's reply channel
    with contextlib.redirect_stdout(sys.stderr):
        import sparsify
        from sparsify.config import SparseCoderConfig
        from sparsify.utils import decoder_impl
    activations = typing.get_args(SparseCoderConfig.__dataclass_fields__["activation"].type)
    return {
        **info,
        "version": sparsify.__version__,
        "decoder": decoder_impl.__name__,  # triton_decode on CUDA with Triton, else eager
        "activations": list(activations),
    }


def worker(args: argparse.Namespace) -> None:
    """Serve `build` / `time` requests for one comparison side on stdin/stdout."""
    device = torch.device(args.device)
    try:
        info = _side_info(args.worker)
    except ImportError as err:
        print(json.dumps({"error": f"{type(err).__name__}: {err}"}), flush=True)
        return
    if args.worker == "sparsify":
        torch.set_float32_matmul_precision("high")  # as sparsify's Trainer.fit sets it
    build = {"saelens": saelens_step, "sparsify": sparsify_step}[args.worker]
    print(json.dumps(info), flush=True)
    step, x = None, None
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "build":
            step = x = None
            if args.worker == "sparsify" and request.get("sparsify_auxk"):
                step = sparsify_step(request["variant"], args, dead=request.get("dead"))
            else:
                step = build(request["variant"], args)
            x = torch.randn(args.batch, args.d, device=device)
            if args.worker == "saelens" and request.get("target_l0"):
                saelens_at_target_l0_(step, x, args.k)
            if args.worker == "saelens" and request.get("dead"):
                step = saelens_with_dead(step, request["dead"], args.nb)
            step(x)  # warm-up: allocates the optimiser state and the autograd buffers
            reply = {}
        else:
            with PeakMemory(device) as mem:
                seconds = time_steps(step, x, request["steps"], device)
            reply = {"seconds": seconds, "peak_bytes": mem.bytes}  # seconds: [wall, CPU]
            if args.worker == "saelens":
                reply["l0"] = saelens_l0(step, x)
        print(json.dumps(reply), flush=True)


# ---------------------------------------------------------------- the run


def _size_flags(args: argparse.Namespace) -> list[str]:
    return [f"--{k}={getattr(args, k)}" for k in ("d", "nb", "batch", "k", "device")]


def find_saelens_python(explicit: str | None) -> str | None:
    candidates = (
        [explicit] if explicit else [os.environ.get("SAELENS_PYTHON"), *DEFAULT_SAELENS_PYTHON]
    )
    for path in candidates:
        if path and Path(path).is_file() and os.access(path, os.X_OK):
            return path
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--gpu-size", action="store_true", help="768 -> 24576, 8192 rows a step")
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--nb", type=int, default=None, help="latents (default 6144)")
    parser.add_argument("--batch", type=int, default=None, help="rows a step (default 2048)")
    parser.add_argument("--k", type=int, default=32, help="latents kept per token")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3, help="timings per side; median")
    parser.add_argument("--steps", type=int, default=2, help="steps per timing")
    parser.add_argument(
        "--dense", action="store_true", help="also time our dense paths (decoder, encoder grad)"
    )
    parser.add_argument(
        "--ratio",
        action="store_true",
        help="step / encoder forward matmul per variant, interleaved, and peak memory",
    )
    parser.add_argument("--widths", default=None, help="--ratio: latents n, e.g. 3072,6144")
    parser.add_argument("--ks", default=None, help="--ratio: k per token, e.g. 8,32,128")
    parser.add_argument(
        "--saelens-python", default=None, help="python of the bench venv (SAELens, sparsify)"
    )
    parser.add_argument(
        "--sparsify-python", default=None, help="python with eai-sparsify (default: the above)"
    )
    parser.add_argument("--no-saelens", action="store_true")
    parser.add_argument("--no-sparsify", action="store_true")
    parser.add_argument(
        "--decoder", action="store_true", help="time the decoder alone, dense vs sparse"
    )
    parser.add_argument(
        "--fire-stats",
        action="store_true",
        help="a step with its fire statistics vs with them swapped for a constant",
    )
    parser.add_argument(
        "--auxk",
        action="store_true",
        help="a step with AuxK on vs off at 1, 100 and 2,000 dead latents, interleaved",
    )
    parser.add_argument(
        "--auxk-train-steps",
        type=int,
        default=200,
        help="--auxk: training steps before the case of latents really dead",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's); 1 makes CPU time the work alone, without "
        "the other threads' waits at each parallel region when other jobs share the cores",
    )
    parser.add_argument(
        "--dead",
        type=int,
        default=0,
        help="against SAELens: this many latents dead before every step (AuxK on both sides)",
    )
    parser.add_argument(
        "--sparsify-auxk",
        action="store_true",
        help="with --dead: sparsify with AuxK on too (auxk_alpha = 1/32, the same latents "
        "dead) instead of its default, AuxK off",
    )
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="default configs: JumpReLU before / at / after its warm-up switch, ReLU with "
        "no target L0, against TopK's step, interleaved",
    )
    parser.add_argument(
        "--autocast",
        action="store_true",
        help="the fp32 step against the same step under bf16 autocast, interleaved",
    )
    parser.add_argument(
        "--worker", nargs="?", const="saelens", choices=SIDES, help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    args.nb = args.nb or (24576 if args.gpu_size else 6144)
    args.batch = args.batch or (8192 if args.gpu_size else 2048)
    variants = [v for v in args.variants.split(",") if v]
    valid = VARIANTS + OURS_ONLY if args.ratio or args.fire_stats or args.autocast else VARIANTS
    unknown = sorted(set(variants) - set(valid))
    if unknown:
        parser.error(f"unknown variants {unknown}; valid here: {', '.join(valid)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args)
    device = torch.device(args.device)
    if args.decoder:
        return decoder_table(args, device)
    if args.ratio:
        return ratio_table(args, variants, device)
    if args.fire_stats:
        return fire_stats_table(args, variants, device)
    if args.auxk:
        return auxk_table(args, variants, device)
    if args.defaults:
        return defaults_table(args, device)
    if args.autocast:
        return autocast_table(args, variants, device)

    sides, notes = start_sides(args, variants)
    try:
        rows = run_rounds(args, variants, device, sides)
    finally:
        for side in sides.values():
            side.close()
    print_table(args, device, sides, notes, rows)


Row = tuple[str, str, list[tuple[float, float]], int | None, float | None]
"""(variant, implementation, [(wall, CPU) seconds per timing], peak bytes, L0 after)."""


def start_sides(
    args: argparse.Namespace, variants: list[str]
) -> tuple[dict[str, SideWorker], list[str]]:
    """The comparison sides that can run, by display name, and a note for each one that
    cannot (no venv, package not importable, variant it lacks)."""
    sides: dict[str, SideWorker] = {}
    notes: list[str] = []
    wanted = {  # name: (worker side, skipped, interpreter asked for)
        "SAELens": ("saelens", args.no_saelens, args.saelens_python),
        "sparsify": ("sparsify", args.no_sparsify, args.sparsify_python or args.saelens_python),
    }
    for name, (side, skipped, explicit) in wanted.items():
        if skipped:
            continue
        python = find_saelens_python(explicit)
        flags = "--saelens-python" if side == "saelens" else "--sparsify-python, --saelens-python"
        if python is None:
            notes.append(
                f"{name}: no bench venv (tried {flags}, $SAELENS_PYTHON, "
                f"{', '.join(DEFAULT_SAELENS_PYTHON)}); no {name} rows. "
                "See bench/README.md to create it."
            )
            continue
        worker_ = SideWorker(python, side, args)
        if "error" in worker_.info:
            worker_.close()
            notes.append(
                f"{name}: not importable in {python} ({worker_.info['error']}); no {name} rows. "
                "See bench/README.md for the install line."
            )
            continue
        sides[name] = worker_
    lacking = [v for v in variants if v not in SPARSIFY_ACTIVATION]
    if "sparsify" in sides and lacking:
        activations = ", ".join(sides["sparsify"].info["activations"])
        notes.append(
            f"sparsify {sides['sparsify'].info['version']} has no {', '.join(lacking)} "
            f"(its activations: {activations}): no sparsify row for "
            f"{'it' if len(lacking) == 1 else 'them'}."
        )
    for note in notes:
        print(note, file=sys.stderr, flush=True)
    return sides, notes


def _has(name: str, variant: str) -> bool:
    return name != "sparsify" or variant in SPARSIFY_ACTIVATION


def run_rounds(
    args: argparse.Namespace,
    variants: list[str],
    device: torch.device,
    sides: dict[str, SideWorker],
) -> list[Row]:
    """Per variant: build every side, then rounds of (ours, SAELens, sparsify), so that all
    sides see the same machine load."""
    rows: list[Row] = []
    x = torch.randn(args.batch, args.d, device=device)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        for variant in variants:
            # JumpReLU / ReLU at k codes a row, as trained ones run (SAELens's
            # forward and backward are dense whatever its codes)
            ours = {"sae-hooks": ours_step(variant, args, Path(tmp) / variant, x=x)}
            if args.dead:
                ours = {name: _with_dead(step, args) for name, step in ours.items()}
            if args.dense and variant in ("topk", "batchtopk"):
                ours["sae-hooks, dense decode"] = ours_step(
                    variant, args, Path(tmp) / f"{variant}-dense", dense=True
                )
            for step in ours.values():
                step(x)  # warm-up
            theirs = {n: side for n, side in sides.items() if _has(n, variant)}
            equal_l0 = variant in ("jumprelu", "relu")  # as ours: k codes a row
            for side in theirs.values():
                side.ask(
                    op="build",
                    variant=variant,
                    target_l0=equal_l0,
                    dead=args.dead,
                    sparsify_auxk=args.sparsify_auxk,
                )
            times: dict[str, list[tuple[float, float]]] = {n: [] for n in [*ours, *theirs]}
            peaks: dict[str, int] = {}
            for _ in range(args.rounds):
                for name, step in ours.items():
                    with PeakMemory(device) as mem:
                        times[name].append(time_steps(step, x, args.steps, device))
                    peaks[name] = max(peaks.get(name, 0), mem.bytes or 0)
                l0s: dict[str, float | None] = {}
                for name, side in theirs.items():
                    reply = side.ask(op="time", steps=args.steps)
                    times[name].append(tuple(reply["seconds"]))
                    peaks[name] = max(peaks.get(name, 0), reply["peak_bytes"] or 0)
                    l0s[name] = reply.get("l0")
            for name, step in ours.items():
                l0s[name] = our_l0(_trainer_of(step), x)
            rows += [
                (variant, n, secs, peaks.get(n) or None, l0s.get(n)) for n, secs in times.items()
            ]
            del ours
            print(f"done: {variant}", file=sys.stderr, flush=True)
    return rows


def print_table(
    args: argparse.Namespace,
    device: torch.device,
    sides: dict[str, SideWorker],
    notes: list[str],
    rows: list[Row],
) -> None:
    """The markdown table: one row per (variant, implementation), ratios against
    SAELens, and against sparsify when it ran."""
    versions = "".join(
        f", {name} {side.info['version']}"
        + (f" ({side.info['decoder']} decoder)" if "decoder" in side.info else "")
        for name, side in sides.items()
    )
    print(
        f"\n{args.d} -> {args.nb}, {args.batch} tokens a step, k = {args.k} per token "
        f"(TopK, BatchTopK), {args.device}"
        f"{' bf16 autocast' if device.type == 'cuda' else ' fp32'}; "
        f"torch {torch.__version__}{versions}; {machine(device)}"
    )
    print(
        f"median of {args.rounds} timings of {args.steps} steps each; 'vs X, per round': "
        "min / median / max of the wall-time ratio within each round; load average "
        f"{os.getloadavg()[0]:.1f} at the end; L0: codes a row after the timed steps "
        "(JumpReLU and ReLU set to k on both sides)"
        + (f"; {args.dead} latents dead before every step (AuxK on)" if args.dead else "")
        + (
            "; sparsify with AuxK on too (auxk_alpha = 1/32, the same latents dead)"
            if args.dead and args.sparsify_auxk and "sparsify" in sides
            else ""
        )
    )
    for note in notes:
        print(f"note: {note}")
    refs = ["SAELens", *(["sparsify"] if "sparsify" in sides else [])]
    header = "| variant | implementation | tokens/s | ms/step "
    header += "".join(f"| vs {ref} | vs {ref}, per round " for ref in refs)
    header += "| CPU ms/step | vs SAELens (CPU) | peak memory (MiB) | L0 |"
    print(f"\n{header}")
    print("|---|---|" + "---:|" * (header.count("|") - 3))
    timings_of = {(variant, name): timings for variant, name, timings, _, _ in rows}
    per_step = {
        key: [statistics.median(t[i] for t in timings) / args.steps for i in (0, 1)]
        for key, timings in timings_of.items()
    }
    for variant, name, _, peak, l0 in rows:
        wall, cpu = per_step[variant, name]
        cells = [f"{args.batch / wall:,.0f}", f"{wall * 1e3:,.0f}"]
        for ref in refs:
            theirs = per_step.get((variant, ref))
            cells.append(f"{theirs[0] / wall:.2f}x" if theirs else "-")
            cells.append(_per_round(timings_of, variant, name, ref))
        lens = per_step.get((variant, "SAELens"))
        cells += [f"{cpu * 1e3:,.0f}", f"{lens[1] / cpu:.2f}x" if lens else "-"]
        cells.append("-" if peak is None else f"{peak / 2**20:,.0f}")
        cells.append("-" if l0 is None else f"{l0:,.1f}")
        print(f"| {variant} | {name} | {' | '.join(cells)} |")


def _per_round(timings_of: dict, variant: str, name: str, ref: str) -> str:
    """min / median / max over rounds of ref's wall time / name's, within each round."""
    theirs = timings_of.get((variant, ref))
    if not theirs or name == ref:
        return "-"
    ratios = sorted(t[0] / o[0] for t, o in zip(theirs, timings_of[variant, name]))
    return f"{ratios[0]:.2f} / {statistics.median(ratios):.2f} / {ratios[-1]:.2f}"


if __name__ == "__main__":
    main()
