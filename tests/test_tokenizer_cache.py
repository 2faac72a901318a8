"""The offline pydoc tokenizer is saved once per content, not once per call (issue 34.12)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import REPO

from sae_hooks.models import TOKENIZER_DIR_PREFIX, pydoc_tokenizer


def test_the_same_tokenizer_reuses_its_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first, second = pydoc_tokenizer(), pydoc_tokenizer()
    assert first.name_or_path == second.name_or_path
    assert first("def f(): pass")["input_ids"] == second("def f(): pass")["input_ids"]
    saved = list((tmp_path / "cache" / "sae-hooks").iterdir())
    assert [p.name for p in saved] == [os.path.basename(first.name_or_path)]
    assert pydoc_tokenizer(max_length=64).name_or_path != first.name_or_path


@pytest.mark.slow
def test_a_tiny_run_leaves_nothing_in_the_temp_directory(tmp_path):
    temp, cache = tmp_path / "tmp", tmp_path / "cache"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "XDG_CACHE_HOME": str(cache)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    argv = [sys.executable, "-m", "sae_hooks", "capture", "--family", "gpt2", "--tiny"]
    argv += ["--point", "resid_post.0", "--max-rows", "100", "--quiet"]
    argv += ["--cache", str(tmp_path / "runs"), "--context-length", "32"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not [p.name for p in temp.iterdir() if TOKENIZER_DIR_PREFIX in p.name]
    assert len(list((cache / "sae-hooks").glob(f"{TOKENIZER_DIR_PREFIX}*"))) == 1
