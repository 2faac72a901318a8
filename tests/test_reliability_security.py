"""Loading never runs code from files; configs cannot steer writes out of the run directory."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_hooks.pipeline import run_dir_for
from sae_hooks.sae import TopKSAE, load_sae
from sae_hooks.train import TensorSource, TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(REPO / "sae_hooks").rglob("*.py"), *(REPO / "recipes").glob("*.py")])

# (pattern, why it is dangerous); a line may opt out only by being safe, not by a comment.
FORBIDDEN = [
    (r"torch\.load\((?![^)]*weights_only\s*=\s*True)", "torch.load without weights_only=True"),
    (r"\bpickle\.loads?\(|\bcloudpickle\b|\bdill\b", "unpickling"),
    (r"trust_remote_code\s*=\s*True", "trust_remote_code forced on"),
    (r"allow_pickle\s*=\s*True", "numpy allow_pickle"),
    (r"yaml\.load\((?![^)]*SafeLoader)", "yaml.load without SafeLoader"),
    (r"(?<![.\w])(eval|exec)\(", "eval/exec of text"),
]


@pytest.mark.parametrize(
    ("line", "flagged"),
    [
        ("sd = torch.load(path)", True),
        ("sd = torch.load(path, map_location='cpu', weights_only=True)", False),
        ("obj = pickle.load(f)", True),
        ("AutoModel.from_pretrained(p, trust_remote_code=True)", True),
        ("AutoModel.from_pretrained(p, trust_remote_code=trust_remote_code)", False),
        ("np.load(p, allow_pickle=True)", True),
        ("value = eval(text)", True),
        ("model.eval()", False),
    ],
)
def test_the_source_scan_sees_what_it_must(line, flagged):
    assert any(re.search(pattern, line) for pattern, _ in FORBIDDEN) == flagged


def test_package_source_never_unpickles_nor_runs_remote_code():
    assert len(SOURCES) > 20
    hits = [
        f"{path.relative_to(REPO)}:{i}: {why}: {line.strip()}"
        for path in SOURCES
        for i, line in enumerate(path.read_text().splitlines(), 1)
        for pattern, why in FORBIDDEN
        if re.search(pattern, line)
    ]
    assert hits == []


class Marker:
    """Unpickling this creates a file: proof that code from the file ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_load_sae_refuses_a_malicious_checkpoint(how, tmp_path):
    marker = tmp_path / "pwned"
    TopKSAE(8, 16, top_k=2).save(tmp_path / "sae")
    weights = tmp_path / "sae" / "model.safetensors"
    if how == "pickle":
        weights.write_bytes(pickle.dumps({"dictionary.weight": Marker(marker)}))
    else:
        torch.save({"dictionary.weight": Marker(marker)}, weights)
    assert not marker.exists()
    with pytest.raises(ValueError, match="never unpickles"):
        load_sae(tmp_path / "sae")
    assert not marker.exists()
    torch.save(Marker(marker), tmp_path / "sae.pt")  # a whole-module pickle in place of the dir
    with pytest.raises(ValueError, match="holds a pickle"):
        load_sae(tmp_path / "sae.pt")
    assert not marker.exists()


def test_training_resume_refuses_a_malicious_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    config = TrainConfig(nb_concepts=16, k_per_token=2, batch_size=16, steps=4, progress=False)
    rows = torch.randn(256, 8)
    Trainer(config, TensorSource(rows), tmp_path / "run").fit(until_step=2)
    for name in ("sae.safetensors", "optimizer.safetensors", "tensors.safetensors"):
        target = tmp_path / "run" / "checkpoint" / name
        saved = target.read_bytes()
        target.write_bytes(pickle.dumps(Marker(marker)))
        with pytest.raises(Exception):  # noqa: B017 - any refusal, as long as nothing runs
            Trainer(config, TensorSource(rows), tmp_path / "run")
        assert not marker.exists()
        target.write_bytes(saved)


@pytest.mark.parametrize(
    "name", ["../x", "/abs", ".hidden", "..", ".", "", "a/b", "a\\b", "x/../../y"]
)
def test_run_names_cannot_escape_the_cache(name, tmp_path):
    with pytest.raises(ValueError, match="plain directory name"):
        run_dir_for(name, tmp_path)


@settings(max_examples=30, deadline=None)
@given(st.text(max_size=12))
def test_any_accepted_run_name_stays_inside_the_cache(name):
    root = Path("/tmp/sae-hooks-cache-root")
    try:
        path = run_dir_for(name, root)
    except ValueError:
        return
    assert path.parent == root and path.name == name
    assert os.path.commonpath([os.path.normpath(path), root]) == str(root)
