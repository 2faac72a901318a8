"""Not a speed: eval_core.json checked against SAEBench's own schema.

Writes eval_core.json with sae-hooks for a tiny random-init GPT-2 (a causal LM: KL and CE
measured) and for the real all-MiniLM-L6-v2 (an encoder: no logits, so no KL / CE), a TopK
SAE trained briefly on each, and validates both files with `jsonschema` against
`eval_output_schema_core.json` as shipped in the installed sae-bench package (or
--schema). Prints OK or every violation, and SAEBench's definitions of explained variance,
MSE and reconstruction bias beside ours. Exit status 1 on any violation.

Runs in the bench environment (bench/README.md: sae-bench and jsonschema are installed
there, never in the library's own environment):

    /work/venv-bench/bin/python bench/saebench_schema.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "evals/core/eval_output_schema_core.json"
SIDE_BY_SIDE = [
    ("reconstruction_quality", "explained_variance", "explained_variance_sae_hooks"),
    ("reconstruction_quality", "mse", "mse_sae_hooks"),
    (
        "shrinkage",
        "relative_reconstruction_bias",
        "relative_reconstruction_bias_sae_hooks",
    ),
    ("reconstruction_quality", "explained_variance_legacy", None),
]


def schema_file(given: str | None) -> tuple[Path, str]:
    """The schema to check against and where it comes from (package and version)."""
    if given:
        return Path(given), given
    spec = importlib.util.find_spec("sae_bench")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            "sae-bench is not installed in this interpreter: run this with the bench "
            "environment's python (bench/README.md) or pass --schema"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SCHEMA
    return path, f"sae-bench {metadata.version('sae-bench')} (sae_bench/{SCHEMA})"


def trained_topk(model, point: str, batches: list, width: int, k: int, steps: int):
    """A TopK SAE fitted for `steps` Adam steps on the rows of `batches` at `point`."""
    import torch

    from sae_hooks.hooks import capture_batch
    from sae_hooks.sae import TopKSAE

    with torch.no_grad():
        rows = torch.cat([capture_batch(model, point, b).acts[point].float() for b in batches])
    torch.manual_seed(0)
    sae = TopKSAE(rows.shape[-1], width, top_k=k)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    for step in range(steps):
        idx = torch.randint(0, len(rows), (256,), generator=torch.Generator().manual_seed(step))
        x = rows[idx]
        loss = (sae(x).x_hat - x).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return sae.eval()


def subjects(steps: int):
    """(name, model, point, train batches, held-out batches, width, k) of each model."""
    from sae_hooks.data import pydoc_texts, text_batches
    from sae_hooks.models import minilm_dir, pydoc_tokenizer, tiny_model

    texts = pydoc_texts(400, min_chars=81)
    gpt2_tok = pydoc_tokenizer(512, max_length=64)
    gpt2 = tiny_model("gpt2", d_model=64, n_layers=4, context=64).eval()
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    minilm = AutoModel.from_pretrained(path, local_files_only=True).eval()
    minilm_tok = AutoTokenizer.from_pretrained(path, local_files_only=True)

    def batches(tok, part, ctx, n):
        return list(text_batches(part, tok, context_length=ctx, batch_size=16))[:n]

    train, held = texts[:320], texts[320:]
    return [
        ("tiny-gpt2", gpt2, "resid_post.1", batches(gpt2_tok, train, 64, 16),
         batches(gpt2_tok, held, 64, 4), 256, 8),
        ("all-MiniLM-L6-v2", minilm, "resid_post.3", batches(minilm_tok, train, 128, 8),
         batches(minilm_tok, held, 128, 4), 1536, 16),
    ]  # fmt: skip


def validate(schema: dict, path: Path) -> list[str]:
    """Every violation of `schema` by the JSON file at `path`, as 'where: what'."""
    from jsonschema import Draft202012Validator

    data = json.loads(path.read_text())
    errors = Draft202012Validator(schema).iter_errors(data)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--schema", help="a schema file instead of the installed sae-bench's")
    p.add_argument("--out", default=str(ROOT / "cache" / "saebench_schema"))
    p.add_argument("--steps", type=int, default=300, help="training steps of each SAE")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from sae_hooks.eval.core import evaluate_core, write_core_eval

    torch.set_num_threads(min(2, torch.get_num_threads()))
    schema_path, source = schema_file(args.schema)
    schema = json.loads(schema_path.read_text())
    print(f"schema: {source}")
    bad = 0
    for name, model, point, train, held, width, k in subjects(args.steps):
        sae = trained_topk(model, point, train, width, k, args.steps)
        core = evaluate_core(model, point, sae, held)
        out = Path(args.out) / name
        out.mkdir(parents=True, exist_ok=True)
        path = write_core_eval(out, core, sae_cfg={"architecture": "topk", "d_sae": width})
        problems = validate(schema, path)
        bad += len(problems)
        print(f"\n{name} at {point}, {path}: {'OK' if not problems else 'INVALID'}")
        for problem in problems:
            print(f"  {problem}")
        no_value = json.loads(path.read_text())["eval_result_unstructured"]["sae_hooks"]
        print(f"  written as -1 (no value): {', '.join(no_value['no_value']) or 'none'}")
        print("  | metric | SAEBench's definition | sae-hooks' |\n  |---|---|---|")
        for category, theirs, ours in SIDE_BY_SIDE:
            mine = f"{core[category][ours]:.6g}" if ours else "-"
            print(f"  | {category}.{theirs} | {core[category][theirs]:.6g} | {mine} |")
    print("\nOK: both files validate" if not bad else f"\n{bad} violation(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
