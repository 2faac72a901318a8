"""Issue 33 items 3 and 4 on the main job's model (all-MiniLM-L6-v2 on CPython's docs,
recipes/minilm_pydoc.py's setup): a two-layer circuit for the concept "exceptions", and
the replacement model of a transcoder at every layer.

    .venv/bin/python bench/circuits_minilm.py circuit      [--out cache/circuits_minilm]
    .venv/bin/python bench/circuits_minilm.py replacement  [--out cache/circuits_minilm]

circuit: one store of resid_post.2 and resid_post.3 (the training split, --rows rows),
one `train_many` call training a BatchTopK SAE at each point (--steps), then
`sae_hooks.eval.circuit` on the recipe's 48 "exceptions" positives with the recipe's
target (cosine of the sentence embedding to the clean positives' centroid); writes
circuit.json and the circuit page (circuit.html) under --out.
replacement: one store of mlp_in.L and mlp_out.L for all 6 layers, `train_transcoder_set`
(one BatchTopK transcoder per layer from one pass), `evaluate_replacement` on held-out
batches; prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from sae_hooks.concepts import centroid_similarity, text_examples
from sae_hooks.data import pydoc_texts, text_batches
from sae_hooks.data.splits import split_texts
from sae_hooks.eval import circuit, evaluate_replacement, train_transcoder_set
from sae_hooks.models import offline
from sae_hooks.recipe import minilm_and_pydoc
from sae_hooks.report.circuit import write_circuit_page
from sae_hooks.store import capture_to_store
from sae_hooks.train import TrainConfig, train_many

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
from minilm_pydoc import CONCEPT  # noqa: E402  (the recipe's own concept)

POINTS = ("resid_post.2", "resid_post.3")
CTX = 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("circuit", "replacement"))
    parser.add_argument("--out", type=Path, default=ROOT / "cache" / "circuits_minilm")
    parser.add_argument("--rows", type=int, default=150_000)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--width", type=int, default=1536)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--max-nodes", type=int, default=8)
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--node-threshold", type=float, default=0.01)
    parser.add_argument("--edge-threshold", type=float, default=0.002)
    args = parser.parse_args()
    offline()
    torch.manual_seed(0)
    model, tokenizer, texts = minilm_and_pydoc(False, None)
    train_texts, eval_texts = split_texts(texts)
    data = text_batches(train_texts, tokenizer, context_length=CTX, batch_size=32)
    base = TrainConfig(
        point=POINTS[0], architecture="batchtopk", nb_concepts=args.width,
        k_per_token=args.k, batch_size=1024, steps=args.steps, progress=False,
    )  # fmt: skip
    start = time.perf_counter()
    if args.part == "circuit":
        run_circuit(args, model, tokenizer, data, base)
    else:
        eval_data = list(text_batches(eval_texts, tokenizer, context_length=CTX, batch_size=16))
        run_replacement(args, model, data, eval_data[:8], base)
    print(f"done in {time.perf_counter() - start:.0f} s")


def run_circuit(args, model, tokenizer, data, base) -> None:
    store = capture_to_store(model, list(POINTS), data, args.out / "store_resid",
                             max_rows=args.rows, progress=False)  # fmt: skip
    configs = [dataclasses.replace(base, point=p) for p in POINTS]
    saes = train_many(configs, store, args.out / "sweep", names=list(POINTS))
    positives = [t for t in pydoc_texts() if CONCEPT.search(t)][: args.examples]
    pos = text_examples(positives, tokenizer, context_length=CTX)
    target = centroid_similarity(model, pos)
    found = circuit(model, dict(saes), pos, target, node_threshold=args.node_threshold,
                    edge_threshold=args.edge_threshold, max_nodes=args.max_nodes,
                    tokenizer=tokenizer)  # fmt: skip
    found.concept = "exceptions"
    found.target = "cosine of the sentence embedding to the clean 'exceptions' centroid"
    found.notes.append(
        f"BatchTopK {args.width}, k={args.k}, {args.steps} steps of 1024 rows, "
        f"{store.n_rows} training rows per point; {args.examples} positives"
    )
    found.save(args.out / "circuit.json")
    write_circuit_page(found, args.out / "circuit.html")
    print(f"metric {found.metric:.4f}; {len(found.nodes)} nodes, {len(found.edges)} edges")
    for n in found.nodes:
        tokens = ", ".join(repr(t["text"]) for t in n.top_tokens)
        print(f"  {n.id}: {n.attribution:+.4f}  {tokens}")
    for e in found.edges[:20]:
        print(f"  {e.source} -> {e.target}: {e.weight:+.4f}")


def run_replacement(args, model, data, eval_data, base) -> None:
    n_layers = model.config.num_hidden_layers
    points = [f"{k}.{layer}" for layer in range(n_layers) for k in ("mlp_in", "mlp_out")]
    store = capture_to_store(model, points, data, args.out / "store_mlp", max_rows=args.rows,
                             progress=False)  # fmt: skip
    tc_base = dataclasses.replace(base, architecture="batchtopk_transcoder",
                                  point="mlp_in.0", target_point="mlp_out.0")  # fmt: skip
    tcs = train_transcoder_set(tc_base, store, args.out / "transcoders", n_layers)
    result = evaluate_replacement(model, tcs, eval_data)
    print(result.table())


if __name__ == "__main__":
    main()
