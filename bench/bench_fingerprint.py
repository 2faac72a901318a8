"""Cost of a store fingerprint's exact model hash (every parameter and buffer's bytes).

    .venv/bin/python bench/bench_fingerprint.py

Times `sae_hooks.store.fingerprint.model_hash` on the bundled MiniLM and on a
random-init GPT-2-size model (124M parameters), best of `--repeats`, and prints
seconds per GB; also the per-buffer store-change check of the loader
(`ActivationStore.check_unchanged`). Results in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def model_bytes(model: torch.nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def check_cost(repeats: int, rows: int = 131072) -> tuple[float, float, float]:
    """(seconds of one `check_unchanged`, best loader epoch with the check, without it)
    on a store of `rows` 768-wide bfloat16 rows (compressed: read chunk by chunk)."""
    from sae_hooks.store import ActivationLoader, StoreWriter, open_store

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s"
        with StoreWriter(path, points=["p"], d_model=768, dtype="bfloat16") as w:
            for _ in range(rows // 8192):
                batch = type("B", (), {})()
                batch.acts = {"p": torch.randn(8192, 768)}
                batch.token_ids = batch.doc_index = batch.position = torch.zeros(8192, dtype=int)
                w.append(batch)
        store = open_store(path)
        one = best(store.check_unchanged, repeats * 20)
        checked = ActivationLoader(open_store(path), "p", 4096, dtype=None)
        unchecked = ActivationLoader(open_store(path), "p", 4096, dtype=None)
        unchecked.store.check_unchanged = lambda: None
        with_check, without = [], []
        for _ in range(repeats):  # interleaved: both share the machine's load
            with_check.append(best(lambda: sum(1 for _ in checked), 1))
            without.append(best(lambda: sum(1 for _ in unchecked), 1))
        return one, min(with_check), min(without)


def main() -> None:
    from transformers import AutoModel, GPT2Config, GPT2LMHeadModel

    from sae_hooks.models import minilm_dir
    from sae_hooks.store.fingerprint import model_hash

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    models = {
        "MiniLM-L6 (bundled)": AutoModel.from_pretrained(minilm_dir()).eval(),
        "GPT-2 size, random init": GPT2LMHeadModel(GPT2Config()).eval(),
    }
    print(f"torch threads: {torch.get_num_threads()}\n")
    print("| model | parameters | bytes hashed | seconds | seconds per GB |")
    print("|---|---|---|---|---|")
    for name, model in models.items():
        size = model_bytes(model)
        params = sum(p.numel() for p in model.parameters())
        seconds = best(lambda m=model: model_hash(m), args.repeats)
        print(
            f"| {name} | {params / 1e6:.1f}M | {size / 1e6:.0f} MB | {seconds:.3f} | "
            f"{seconds / (size / 1e9):.2f} |"
        )
    one, checked, unchecked = check_cost(args.repeats)
    print(f"\nstore-change check: {one * 1e6:.0f} µs each (one per loader buffer)")
    print(
        f"loader epoch, 131072 x 768 bfloat16 rows: {checked:.3f} s with the check, "
        f"{unchecked:.3f} s without (best of {args.repeats}, interleaved)"
    )


if __name__ == "__main__":
    main()
