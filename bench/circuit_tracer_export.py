"""circuit-tracer export, checked against circuit-tracer 0.5.0's own loader (not a test:
circuit-tracer is not in requirements.lock; it requires transformers<=4.57.3 and
huggingface-hub<1.0, which conflict with the lock's transformers 5 / hub 2, so pip's
resolver refuses `-c requirements.lock`; it runs from a side venv built without deps):

    python3 -m venv /work/venv-ct
    /work/venv-ct/bin/pip install --no-deps -r requirements.lock
    /work/venv-ct/bin/pip install --no-deps circuit-tracer==0.5.0 transformers==4.57.3 \
        huggingface-hub==0.36.0 tokenizers==0.22.1
    .venv/bin/python bench/circuit_tracer_export.py [--ct-python /work/venv-ct/bin/python]

A tiny transcoder set (plain, skip, and a JumpReLU one) of 3 layers is exported with
`export_circuit_tracer` (and the plain and skip sets again through the CLI, `sae-hooks
export --format circuit-tracer` on a run holding one transcoder per layer); circuit-tracer loads the directory with
`circuit_tracer.utils.hf_utils.load_transcoders` (what `ReplacementModel.from_pretrained`
calls after reading config.yaml) and runs each layer's `encode` / `decode` on the same
rows as our `encode` / `predict`. Largest relative difference must be <= 1e-5.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from sae_hooks.interop import export_circuit_tracer
from sae_hooks.sae import SkipTranscoder, Transcoder

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5
D, N, LAYERS, ROWS = 32, 96, 3, 64

# Runs inside the circuit-tracer venv: its loader, its encode / decode.
CT_SIDE = r"""
import sys, torch, yaml
from circuit_tracer.utils.hf_utils import load_transcoders
directory, rows_path, out_path = sys.argv[1:]
config = yaml.safe_load(open(f"{directory}/config.yaml"))
tset = load_transcoders(config, device=torch.device("cpu"), dtype=torch.float32,
                        lazy_encoder=False, lazy_decoder=False)
x = torch.load(rows_path)
out = {}
for layer, tc in enumerate(tset):
    z = tc.encode(x[layer])
    out[f"z{layer}"] = z
    out[f"y{layer}"] = tc.decode(z, x[layer])
out["kind"] = type(tset).__name__, tset.feature_input_hook, tset.feature_output_hook
torch.save(out, out_path)
"""


class JumpTranscoder(Transcoder):
    """A JumpReLU transcoder: codes kept above a per-latent threshold."""

    architecture = "bench_jump_transcoder"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("threshold", torch.rand(self.nb_concepts))

    def _sparsify(self, pre: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return pre * (pre > self.threshold)


def transcoder_set(cls: type[Transcoder]) -> list[Transcoder]:
    """LAYERS transcoders with non-trivial scales and biases, as training leaves them."""
    out = []
    for layer in range(LAYERS):
        torch.manual_seed(layer)
        tc = cls(D, N)
        with torch.no_grad():
            tc.input_scale.fill_(0.3 + 0.1 * layer)
            tc.output_scale.fill_(2.0 + layer)
            tc.encoder.bias.normal_()
            tc.dictionary.bias.normal_()
            if hasattr(tc, "W_skip"):
                tc.W_skip.normal_(std=0.1)
        out.append(tc.eval())
    return out


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def export_via_cli(tset: list[Transcoder], work: Path) -> Path:
    """`sae-hooks export --format circuit-tracer` on a run holding the set (layer.L/sae)."""
    run = work / "cache" / "ct-run"
    for layer, tc in enumerate(tset):
        tc.save(run / f"layer.{layer}" / "sae")
        config = {"point": f"mlp_in.{layer}", "target_point": f"mlp_out.{layer}"}
        (run / f"layer.{layer}" / "config.json").write_text(json.dumps(config))
    out = work / "cli-export"
    subprocess.run(
        [sys.executable, "-m", "sae_hooks", "export", "--run", "ct-run", "--cache",
         str(work / "cache"), "--format", "circuit-tracer", "--out", str(out)],
        check=True,
    )  # fmt: skip
    shutil.rmtree(run)
    return out


def check(
    cls: type[Transcoder], ct_python: str, work: Path, cli: bool = False
) -> tuple[float, float, tuple]:
    tset = transcoder_set(cls)
    if cli:
        directory = export_via_cli(tset, work)
    else:
        directory = export_circuit_tracer(tset, work / cls.architecture, model_name="tiny")
    x = torch.randn(LAYERS, ROWS, D) * 3
    torch.save(x, work / "rows.pt")
    out_path = work / "ct_out.pt"
    subprocess.run(
        [ct_python, "-c", CT_SIDE, str(directory), str(work / "rows.pt"), str(out_path)],
        check=True,
    )
    theirs = torch.load(out_path)
    worst_z = worst_y = 0.0
    with torch.no_grad():
        for layer, tc in enumerate(tset):
            worst_z = max(worst_z, relative(theirs[f"z{layer}"], tc.encode(x[layer])[1]))
            worst_y = max(worst_y, relative(theirs[f"y{layer}"], tc.predict(x[layer])))
    return worst_z, worst_y, theirs["kind"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct-python", default="/work/venv-ct/bin/python")
    parser.add_argument("--cli-only", action="store_true", help="only the CLI export rows")
    args = parser.parse_args()
    version = subprocess.run(
        [args.ct_python, "-c", "import circuit_tracer; print(circuit_tracer.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(f"circuit-tracer {version} ({args.ct_python})")
    print("| transcoder | loaded as | codes: max rel. diff | outputs: max rel. diff |")
    print("|---|---|---|---|")
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        cases = [(cls, False) for cls in (Transcoder, SkipTranscoder, JumpTranscoder)]
        cases = [] if args.cli_only else cases
        for cls, cli in [*cases, (Transcoder, True), (SkipTranscoder, True)]:
            dz, dy, kind = check(cls, args.ct_python, Path(tmp), cli)
            how = " via `sae-hooks export`" if cli else ""
            print(
                f"| {cls.architecture}{how} | {kind[0]} ({kind[1]} -> {kind[2]}) | {dz:.2e} "
                f"| {dy:.2e} |"
            )
            failed |= max(dz, dy) > TOLERANCE
    print("FAILED" if failed else f"all within {TOLERANCE:g}")
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
