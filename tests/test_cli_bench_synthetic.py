"""`sae-hooks bench-synthetic`: the variants that reconstruct their input, on known features."""

import json

import pytest

from sae_hooks.cli import build_parser, main
from sae_hooks.sae import SAE_REGISTRY


def test_the_default_variants_are_those_that_take_synthetic_rows():
    args = build_parser().parse_args(["bench-synthetic"])
    opted_out = {a for a, cls in SAE_REGISTRY.items() if cls.synthetic_opt_out}
    assert {"transcoder", "skip_transcoder"} <= opted_out
    assert set(args.architectures) == set(SAE_REGISTRY) - opted_out


def test_a_short_benchmark_writes_its_table(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench-synthetic", "--architectures", "topk", "relu", "--steps", "4", "--out", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "bench_synthetic.json").read_text())
    assert [r["architecture"] for r in results] == ["topk", "relu"]
    assert all(0 <= r["mmcs"] <= 1 for r in results)
    assert "mmcs" in capsys.readouterr().out


def test_a_transcoder_is_refused_with_the_valid_choices(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench-synthetic", "--architectures", "transcoder"])
    assert exit_.value.code == 2
    assert "invalid choice: 'transcoder' (choose from 'batchtopk'" in capsys.readouterr().err


def test_the_synthsaebench_world_reports_the_papers_metrics(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench-synthetic", "--world", "synthsaebench", "--architectures", "topk"]
    assert main([*argv, "--steps", "2", "--batch-size", "64", "--out", str(out)]) == 0
    (result,) = json.loads((out / "bench_synthetic.json").read_text())
    assert 0 <= result["mcc_hungarian"] <= 1 and 0 <= result["f1_latent"] <= 1
    assert 21 < result["true_l0"] < 27
    assert "mcc_hungarian" in capsys.readouterr().out


def test_the_2k_synthsaebench_world_is_a_choice(tmp_path):
    out = tmp_path / "bench"
    argv = ["bench-synthetic", "--world", "synthsaebench-2k", "--architectures", "topk"]
    assert main([*argv, "--steps", "2", "--batch-size", "64", "--out", str(out)]) == 0
    (result,) = json.loads((out / "bench_synthetic.json").read_text())
    assert 5.4 < result["true_l0"] < 6.6  # the 2k preset, not the cpu one (L0 ~24)
