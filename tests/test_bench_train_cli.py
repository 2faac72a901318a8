"""bench/bench_train.py's comparison sides: one whose package does not import is left
out with a note in the printed output, and the run goes on with sae-hooks alone."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_train.py"


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("sparsify") is not None, reason="sparsify is installed here"
)
def test_a_side_that_does_not_import_is_left_out_with_a_note():
    tiny = ["--nb=64", "--batch=32", "--rounds=1", "--steps=1", "--variants=topk"]
    argv = [sys.executable, str(SCRIPT), "--no-saelens", f"--sparsify-python={sys.executable}"]
    run = subprocess.run([*argv, *tiny], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "note: sparsify: not importable in" in run.stdout
    assert "No module named 'sparsify'" in run.stdout
    rows = [line for line in run.stdout.splitlines() if line.startswith("| topk |")]
    assert [row.split("|")[2].strip() for row in rows] == ["sae-hooks"]
    assert "vs sparsify" not in run.stdout  # no sparsify columns without a sparsify side


@pytest.mark.slow
def test_the_autocast_mode_times_each_variant_both_ways():
    """`--autocast`: a row per variant with the fp32 and the bf16-autocast step, and the
    bare matmul in both dtypes (CPU: oneDNN's bf16 GEMM, on AMX where the CPU has it)."""
    tiny = ["--nb=64", "--batch=32", "--rounds=2", "--steps=1", "--k=4"]
    argv = [sys.executable, str(SCRIPT), "--autocast", "--variants=topk,jumprelu", *tiny]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "the encoder matmul alone: fp32" in run.stdout and "bf16" in run.stdout
    for variant in ("topk", "jumprelu"):
        (row,) = [line for line in run.stdout.splitlines() if line.startswith(f"| {variant} |")]
        fp32_ms, autocast_ms, ratios = (cell.strip() for cell in row.split("|")[2:5])
        assert float(fp32_ms) >= 0 and float(autocast_ms) >= 0
        assert len(ratios.split(" / ")) == 3
