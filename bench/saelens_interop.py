"""SAELens interoperability, checked against the real SAELens (not a test: SAELens is
not in requirements.lock; it runs from the side-by-side venv of bench/README.md).

    .venv/bin/python bench/saelens_interop.py [--saelens-python .venv-bench/bin/python]

Both directions, every architecture: our SAEs exported with `export_saelens` and
loaded by `sae_lens.SAE.load_from_disk`, and SAELens SAEs written by `save_model`
and loaded by our `import_saelens`; the reconstructions and codes must agree.

Matryoshka BatchTopK: SAELens (6.x) trains it (MatryoshkaBatchTopKTrainingSAE) but
has no inference class for it; a trained one is saved as JumpReLU with its shared
threshold, which is what `export_saelens` writes (the `ours matryoshka_batchtopk`
row). Transcoders (ours -> SAELens only): the six exportable ones (ReLU, JumpReLU and
BatchTopK, each plain and skip) loaded by SAELens 6's Transcoder / SkipTranscoder /
JumpReLU(Skip)Transcoder, with both scales folded in; TopK transcoders are refused
(SAELens has none).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from sae_hooks.interop import export_saelens, import_saelens
from sae_hooks.sae import (
    SAE,
    SAE_REGISTRY,
    BatchTopKSAE,
    JumpSAE,
    MatryoshkaBatchTopKSAE,
    TopKSAE,
)

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # relative to the largest reconstructed value

# Runs inside the SAELens venv: load ours, and write SAELens's own.
SAELENS_SIDE = r"""
import sys, torch
from pathlib import Path
from sae_lens import SAE, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig
from sae_lens import TopKSAE, TopKSAEConfig
root = Path(sys.argv[1])
for d in sorted((root / "ours").iterdir()):
    sae, ref = SAE.load_from_disk(d), torch.load(d / "ref.pt", weights_only=True)
    with torch.no_grad():
        ref["theirs_x_hat"], ref["theirs_z"] = sae(ref["x"]), sae.encode(ref["x"])
    torch.save(ref, d / "ref.pt")
torch.manual_seed(0)
x = torch.randn(64, 32)
for name, sae in [("jumprelu", JumpReLUSAE(JumpReLUSAEConfig(d_in=32, d_sae=96))),
                  ("standard", StandardSAE(StandardSAEConfig(d_in=32, d_sae=96))),
                  ("topk", TopKSAE(TopKSAEConfig(d_in=32, d_sae=96, k=6)))]:
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
        if name == "jumprelu":
            sae.threshold.uniform_(0.05, 0.5)
        sae.save_model(root / "theirs" / name)
        torch.save({"x": x, "x_hat": sae(x), "z": sae.encode(x)},
                   root / "theirs" / name / "ref.pt")
"""


# the transcoders SAELens 6 can load, and their sparsity arguments
TRANSCODERS = {
    "transcoder": {},
    "skip_transcoder": {},
    "jumprelu_transcoder": {"bandwidth": 0.1},
    "jumprelu_skip_transcoder": {"bandwidth": 0.1},
    "batchtopk_transcoder": {"top_k": 6 * 64},
    "batchtopk_skip_transcoder": {"top_k": 6 * 64},
}


def ours(root: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 32)
    saes = {
        "relu": SAE(32, 96),
        "topk": TopKSAE(32, 96, top_k=6),
        "batchtopk": BatchTopKSAE(32, 96, top_k=6 * 64),
        "jumprelu": JumpSAE(32, 96, bandwidth=0.1),
        "matryoshka_batchtopk": MatryoshkaBatchTopKSAE(
            32, 96, top_k=6 * 64, group_sizes=[16, 32, 48]
        ),
    }
    for name in TRANSCODERS:  # (32 -> 16): MLP input to MLP output
        saes[name] = SAE_REGISTRY[name](32, 96, output_size=16, **TRANSCODERS[name])
    for name, sae in saes.items():
        with torch.no_grad():
            sae.dictionary.bias.normal_()
            sae.input_scale.fill_(1.7)  # folded into the exported weights
            if name in TRANSCODERS:
                sae.output_scale.fill_(40.0)  # so is the output's
                for p in sae.parameters():
                    p.add_(torch.randn_like(p) * 0.3)  # W_skip and the rest away from init
            if name in ("jumprelu", "jumprelu_transcoder", "jumprelu_skip_transcoder"):
                sae.log_threshold.uniform_(-2.0, 0.0)
        if isinstance(sae, BatchTopKSAE):
            sae(torch.randn(64, 32))  # learn a running threshold
        sae.eval()
        path = export_saelens(sae, root / "ours" / name)
        with torch.no_grad():
            out = sae(x)
        torch.save({"x": x, "x_hat": out.x_hat, "z": out.z}, path / "ref.pt")


def worst(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saelens-python", default=str(ROOT / ".venv-bench/bin/python"))
    args = parser.parse_args()
    if not Path(args.saelens_python).exists():
        print(f"no SAELens venv at {args.saelens_python}; see bench/README.md", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="saelens-interop-"))
    ours(root)
    subprocess.run([args.saelens_python, "-c", SAELENS_SIDE, str(root)], check=True)
    rows, ok = [], True
    for d in sorted((root / "ours").iterdir()):
        ref = torch.load(d / "ref.pt", weights_only=True)
        errs = worst(ref["theirs_x_hat"], ref["x_hat"]), worst(ref["theirs_z"], ref["z"])
        rows.append((f"ours {d.name} -> SAELens", *errs))
    for d in sorted((root / "theirs").iterdir()):
        ref = torch.load(d / "ref.pt", weights_only=True)
        sae = import_saelens(d).eval()
        with torch.no_grad():
            out = sae(ref["x"])
        rows.append(
            (f"SAELens {d.name} -> ours", worst(out.x_hat, ref["x_hat"]), worst(out.z, ref["z"]))
        )
    print("| direction | x_hat max rel. error | z max rel. error |\n|---|---:|---:|")
    for name, ex, ez in rows:
        ok &= ex < TOLERANCE and ez < TOLERANCE
        print(f"| {name} | {ex:.1e} | {ez:.1e} |")
    print("all agree" if ok else f"DISAGREEMENT above {TOLERANCE:g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
