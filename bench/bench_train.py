"""Training-step throughput: sae-hooks' Trainer vs SAELens's SAETrainer, side by side.

One command: `.venv/bin/python bench/bench_train.py` (CPU-sized: 768 -> 6144, 2048
rows a step, k = 32 per token). `--gpu-size` is GPT-2 width (768 -> 24576, 8192 rows
a step) for a GPU: `--device cuda --gpu-size`.

Each side runs the step its users run: our `Trainer.train_step` (forward, MSE +
the variant's sparsity loss, backward, decoder-gradient projection, grad clip,
Adam, row renormalisation, fire statistics) and SAELens's `SAETrainer.step`
(forward, its losses, backward, grad clip, Adam, LR / coefficient schedulers,
fire statistics). bf16 autocast on CUDA for both, fp32 on CPU. Rows are random
normal, fed from memory. SAELens runs in its own interpreter (see bench/README.md
for the venv), kept alive and driven over stdin/stdout so that the two sides
alternate round by round and share whatever load the machine has.

Peak memory during the timed steps: torch.cuda.max_memory_allocated on CUDA; on
CPU the process's peak RSS (VmHWM, reset through /proc/self/clear_refs), which
includes the interpreter and whatever the allocator kept from earlier variants.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import PeakMemory, machine, sync

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("batchtopk", "jumprelu", "topk", "relu")
SAELENS_ARCH = {
    "batchtopk": "batchtopk",
    "jumprelu": "jumprelu",
    "topk": "topk",
    "relu": "standard",
}
DEFAULT_SAELENS_PYTHON = ("/work/venv-bench/bin/python", str(ROOT / ".venv-bench/bin/python"))


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
):
    """Our Trainer's step for `variant`, built as `train()` builds it. dense: both
    sparse paths off (decoder and encoder gradient). x: a batch that JumpReLU's
    thresholds are set on so that it keeps k codes per row, its target L0."""
    sys.path.insert(0, str(ROOT))
    from sae_hooks.train import TrainConfig, Trainer

    torch.manual_seed(0)
    config = TrainConfig(
        architecture=variant,
        nb_concepts=args.nb,
        k_per_token=args.k if variant in ("topk", "batchtopk") else None,
        batch_size=args.batch,
        steps=1000,
        device=args.device,
        b_dec_init="mean",
        row_topk_warmup=0.0,  # each variant's own selection, not the warm-up's TopK
        init_rows=args.batch,
        log_every=10**6,
        val_every=0,
        checkpoint_every=0,
        progress=False,
    )
    trainer = Trainer(config, torch.randn(2 * args.batch, args.d), run_dir)
    if dense:
        trainer.sae.sparse_decode = False
        trainer.sae.sparse_encoder_grad = False
    if variant in ("jumprelu", "relu") and x is not None:
        at_target_l0_(trainer.sae, x * trainer.scale, args.k)
    return trainer.train_step  # the body of Trainer.fit's loop, without data loading


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
    CUDA, above what was resident before the step).
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
        "| peak (rows x n) matrices | load avg |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
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

    for _ in range(WARM_UP_STEPS):  # Adam state, the allocator's pools, page faults
        step(x)
        matmul(x)
    ratios, steps, peaks, loads = [], [], [], []
    for _ in range(args.rounds):
        base = _resident(device)
        with PeakMemory(device) as mem:
            step_s = time_steps(step, x, args.steps, device)[0]
        if mem.bytes is not None and base is not None:
            peaks.append((mem.bytes - base) / (x.shape[0] * args.nb * 4))
        mm_s = time_steps(matmul, x, args.steps, device)[0]
        ratios.append(step_s / mm_s)
        steps.append(step_s / args.steps)
        loads.append(os.getloadavg()[0])
    ratios.sort()
    peak = f"{max(peaks):.2f}" if peaks else "-"
    print(
        f"| {variant} | {path} | {args.nb} | {args.k} | {ratios[0]:.2f} "
        f"| {statistics.median(ratios):.2f} | {ratios[-1]:.2f} "
        f"| {statistics.median(steps) * 1e3:,.0f} | {peak} "
        f"| {min(loads):.1f}-{max(loads):.1f} |",
        flush=True,
    )


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
    print(f"\ndecoder alone, {args.nb} x {args.d}, {args.batch} rows; ms forward + backward")
    print("\n| k per row | density | dense | sparse, fixed k | sparse, ragged |")
    print("|---:|---:|---:|---:|---:|")
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
        cells = []
        for path in paths:

            def step(_: object, path=path, z=z, indices=indices) -> None:
                path(z, indices).backward(upstream)

            step(None)
            secs = [time_steps(step, None, 1, device)[0] for _ in range(args.rounds)]
            cells.append(f"{statistics.median(secs) * 1e3:,.1f}")
        print(f"| {k} | {k / args.nb:.4f} | {' | '.join(cells)} |")


class SAELensWorker:
    """The SAELens side in its own interpreter, one JSON request / reply per line."""

    def __init__(self, python: str, args: argparse.Namespace) -> None:
        cmd = [python, __file__, "--worker", *_size_flags(args)]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the SAELens worker exited (code {self.proc.wait()})")
        return json.loads(line)

    def ask(self, **request: object) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def worker(args: argparse.Namespace) -> None:
    """Serve `build` / `time` requests for the SAELens side on stdin/stdout."""
    import sae_lens

    device = torch.device(args.device)
    reply = {"version": sae_lens.__version__, "torch": torch.__version__}
    print(json.dumps(reply), flush=True)
    step, x = None, None
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "build":
            step = x = None
            step = saelens_step(request["variant"], args)
            x = torch.randn(args.batch, args.d, device=device)
            step(x)  # warm-up: allocates the Adam state and the autograd buffers
            reply = {}
        else:
            with PeakMemory(device) as mem:
                seconds = time_steps(step, x, request["steps"], device)
            reply = {"seconds": seconds, "peak_bytes": mem.bytes}  # seconds: [wall, CPU]
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
    parser.add_argument("--saelens-python", default=None, help="python of the SAELens venv")
    parser.add_argument("--no-saelens", action="store_true")
    parser.add_argument(
        "--decoder", action="store_true", help="time the decoder alone, dense vs sparse"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.nb = args.nb or (24576 if args.gpu_size else 6144)
    args.batch = args.batch or (8192 if args.gpu_size else 2048)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    if args.worker:
        return worker(args)
    device = torch.device(args.device)
    if args.decoder:
        print(machine(device))
        return decoder_table(args, device)
    if args.ratio:
        return ratio_table(args, variants, device)

    python = None if args.no_saelens else find_saelens_python(args.saelens_python)
    lens = None
    if python is None and not args.no_saelens:
        print(
            "SAELens venv not found (tried --saelens-python, $SAELENS_PYTHON, "
            f"{', '.join(DEFAULT_SAELENS_PYTHON)}); timing sae-hooks only. "
            "See bench/README.md to create it.",
            file=sys.stderr,
        )
    elif python is not None:
        lens = SAELensWorker(python, args)

    rows: list[tuple[str, str, list[tuple[float, float]], int | None]] = []
    x = torch.randn(args.batch, args.d, device=device)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
            for variant in variants:
                # JumpReLU / ReLU at k codes a row, as trained ones run (SAELens's
                # forward and backward are dense whatever its codes)
                sides = {"sae-hooks": ours_step(variant, args, Path(tmp) / variant, x=x)}
                if args.dense and variant in ("topk", "batchtopk"):
                    sides["sae-hooks, dense decode"] = ours_step(
                        variant, args, Path(tmp) / f"{variant}-dense", dense=True
                    )
                for step in sides.values():
                    step(x)  # warm-up
                if lens is not None:
                    lens.ask(op="build", variant=variant)
                times: dict[str, list[tuple[float, float]]] = {n: [] for n in [*sides, "SAELens"]}
                peaks: dict[str, int | None] = {}
                for _ in range(args.rounds):
                    for name, step in sides.items():
                        with PeakMemory(device) as mem:
                            times[name].append(time_steps(step, x, args.steps, device))
                        peaks[name] = max(peaks.get(name) or 0, mem.bytes or 0) or None
                    if lens is not None:
                        reply = lens.ask(op="time", steps=args.steps)
                        times["SAELens"].append(tuple(reply["seconds"]))
                        peaks["SAELens"] = max(peaks.get("SAELens") or 0, reply["peak_bytes"] or 0)
                for name, secs in times.items():
                    if secs:
                        rows.append((variant, name, secs, peaks.get(name)))
                del sides
                print(f"done: {variant}", file=sys.stderr, flush=True)
    finally:
        if lens is not None:
            lens.close()

    print(
        f"\n{args.d} -> {args.nb}, {args.batch} tokens a step, k = {args.k} per token "
        f"(TopK, BatchTopK), {args.device}"
        f"{' bf16 autocast' if device.type == 'cuda' else ' fp32'}; "
        f"torch {torch.__version__}"
        f"{', SAELens ' + lens.info['version'] if lens else ''}; {machine(device)}"
    )
    print(
        f"median of {args.rounds} timings of {args.steps} steps each; 'vs SAELens, per round': "
        "min / median / max of the wall-time ratio within each round; load average "
        f"{os.getloadavg()[0]:.1f} at the end\n"
    )
    print(
        "| variant | implementation | tokens/s | ms/step | vs SAELens | vs SAELens, per round "
        "| CPU ms/step | vs SAELens (CPU) | peak memory (MiB) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    timings_of = {(variant, name): timings for variant, name, timings, _ in rows}
    per_step = {
        (variant, name): [statistics.median(t[i] for t in timings) / args.steps for i in (0, 1)]
        for variant, name, timings, _ in rows
    }
    for variant, name, _, peak in rows:
        wall, cpu = per_step[variant, name]
        lens = per_step.get((variant, "SAELens"))
        vs = [f"{lens[i] / t:.2f}x" if lens else "-" for i, t in enumerate((wall, cpu))]
        theirs = timings_of.get((variant, "SAELens"))
        rounds = "-"
        if theirs and name != "SAELens":
            ratios = sorted(t[0] / o[0] for t, o in zip(theirs, timings_of[variant, name]))
            rounds = f"{ratios[0]:.2f} / {statistics.median(ratios):.2f} / {ratios[-1]:.2f}"
        mib = "-" if peak is None else f"{peak / 2**20:,.0f}"
        print(
            f"| {variant} | {name} | {args.batch / wall:,.0f} | {wall * 1e3:,.0f} | {vs[0]} "
            f"| {rounds} | {cpu * 1e3:,.0f} | {vs[1]} | {mib} |"
        )


if __name__ == "__main__":
    main()
