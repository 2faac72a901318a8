"""Memory and time of capturing from one huge document: lazy, piecewise tokenisation.

One command: `.venv/bin/python bench/bench_data.py` (add `--baseline` to also run the
old way, the document tokenised whole: gigabytes, minutes).

The corpus is CPython's bundled docs joined with spaces and repeated into a single
paragraph of --mb megabytes (65 by default), written to a .txt file: one document, so
nothing but piecewise tokenisation keeps memory bounded. Each method runs in a fresh
child process: `open_documents(file)` -> `text_batches` (chunk mode, context 128,
batch 32, the pydoc BPE tokenizer) -> `capture_to_store` of resid_post.0 of a tiny
random GPT-2 (2 layers, d = 64) with max_rows = --rows. Printed per method: the
child's peak RSS (ru_maxrss: interpreter, torch, model and corpus included) and wall
time from opening the corpus to the store's last commit.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_corpus(path: Path, mb: int) -> int:
    from sae_hooks.data import pydoc_texts

    unit = " ".join(" ".join(pydoc_texts()).split())  # one paragraph, single spaces
    reps = mb * 1_000_000 // len(unit) + 1
    text = (unit + " ") * reps
    path.write_text(text[: mb * 1_000_000].rstrip(), encoding="utf-8")
    return path.stat().st_size


def child(corpus: str, store: str, rows: int, whole: bool) -> None:
    """One capture from the corpus; prints a JSON line with peak RSS and time."""
    import sae_hooks.data.text as text_module
    from sae_hooks.data import open_documents, text_batches
    from sae_hooks.models import pydoc_tokenizer, tiny_model
    from sae_hooks.store import capture_to_store

    if whole:
        text_module.PIECE_CHARS = 1 << 62  # the old behaviour: a document tokenised whole
    tok = pydoc_tokenizer(512, max_length=128)
    model = tiny_model("gpt2", d_model=64, n_layers=2, context=128)
    start = time.perf_counter()
    data = text_batches(open_documents(corpus), tok, context_length=128, batch_size=32)
    got = capture_to_store(model, "resid_post.0", data, store, max_rows=rows, progress=False)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": len(got), "seconds": seconds, "peak_rss_mb": peak_mb}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=65, help="corpus size in MB [65]")
    p.add_argument("--rows", type=int, default=300, help="rows to capture [300]")
    p.add_argument("--baseline", action="store_true", help="also tokenise the document whole")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        corpus, store, rows, whole = args.child
        child(corpus, store, int(rows), whole == "whole")
        return
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        size = write_corpus(corpus, args.mb)
        print(f"corpus: one paragraph of {size / 1e6:.1f} MB; capture {args.rows} rows")
        print(f"{'method':<28}{'rows':>6}{'seconds':>10}{'peak RSS MB':>14}")
        methods = ["pieces"] + (["whole"] if args.baseline else [])
        for method in methods:
            cmd = [sys.executable, __file__, "--child", str(corpus), f"{tmp}/{method}"]
            out = subprocess.run(
                [*cmd, str(args.rows), method], capture_output=True, text=True, cwd=ROOT
            )
            if out.returncode:
                print(f"{method}: failed\n{out.stderr[-3000:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            name = "pieces (lazy)" if method == "pieces" else "whole document (old)"
            print(f"{name:<28}{r['rows']:>6}{r['seconds']:>10.1f}{r['peak_rss_mb']:>14.0f}")


if __name__ == "__main__":
    main()
