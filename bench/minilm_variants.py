"""Every SAE variant on the offline MiniLM default: trained together from the main
job's store, then SAEBench core metrics on its held-out batches and sparse probing on
the pydoc topic families (docs/evaluation.md, "Every variant on the offline MiniLM
default").

    .venv/bin/python recipes/minilm_pydoc.py            # the main job: its store
    .venv/bin/python bench/minilm_variants.py cache/minilm_pydoc/store cache/minilm_variants
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURES = ["topk", "batchtopk", "matryoshka_batchtopk", "jumprelu", "relu"]
L0 = 32


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("store", help="the main job's store (cache/minilm_pydoc/store)")
    p.add_argument("out", help="where the SAEs and variants.json go")
    p.add_argument("--point", default="resid_post.3")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from sae_hooks.data import text_batches
    from sae_hooks.data.splits import split_texts
    from sae_hooks.eval.core import evaluate_core
    from sae_hooks.eval.probing import pooled_activations, pydoc_topic_texts, sparse_probing
    from sae_hooks.recipe import minilm_and_pydoc
    from sae_hooks.sae import SAE_REGISTRY
    from sae_hooks.train import TrainConfig, train_many

    base = {
        "point": args.point,
        "nb_concepts": 3072,
        "batch_size": 1024,
        "total_tokens": 600_000,
        "log_every": 25,
        "checkpoint_every": 0,
        "val_every": 0,
        "progress": False,
    }
    configs = [
        TrainConfig(
            architecture=a,
            **base,
            **(
                {"k_per_token": L0}
                if SAE_REGISTRY[a].rows_per_budget(1)
                else {"target_l0": float(L0)}
            ),
        )
        for a in ARCHITECTURES
    ]
    start = time.time()
    saes = train_many(configs, args.store, args.out, names=ARCHITECTURES)
    print(f"trained {len(saes)} SAEs in {time.time() - start:.0f} s", flush=True)
    model, tokenizer, texts = minilm_and_pydoc(False)
    held_out = list(
        text_batches(split_texts(texts)[1], tokenizer, context_length=128, batch_size=16)
    )[:8]
    items, labels, _ = pydoc_topic_texts()
    items = list(text_batches(items, tokenizer, context_length=128, batch_size=16, mode="truncate"))
    results = {}
    for name, sae in saes.items():
        sae.eval()
        core = evaluate_core(model, args.point, sae, held_out)
        probe = sparse_probing(*pooled_activations(model, args.point, sae, items), labels)
        results[name] = {"core": core, "probing": probe}
        quality, misc = core["reconstruction_quality"], core["misc_metrics"]
        print(
            f"{name}: explained variance {quality['explained_variance_sae_hooks']:.3f}, cosine "
            f"{quality['cossim']:.3f}, L0 {core['sparsity']['l0']:.1f}, alive "
            f"{misc['frac_alive']:.3f}, " + ", ".join(f"{k} {v:.3f}" for k, v in probe.items()),
            flush=True,
        )
    (Path(args.out) / "variants.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
