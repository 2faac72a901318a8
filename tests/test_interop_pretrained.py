"""Pretrained SAEs by Hub id, offline: repos in both layouts (sae-hooks's config.json +
model.safetensors, SAELens's cfg.json + sae_weights.safetensors) put into a local
Hugging Face cache with the cache's own layout (tests/hub_cache.py), read back with
HF_HUB_OFFLINE=1 through `sae_hooks.load_sae`, `from_pretrained` and `describe_pretrained`.

huggingface_hub reads HF_HUB_CACHE once, at import, into `huggingface_hub.constants`;
a test in this process therefore sets both the variable and the constant, and one test
starts a fresh process with nothing but the environment a user would set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_cache import save_to_hub_cache
from safetensors.torch import load_file, save_file

import sae_hooks
from sae_hooks.interop import (
    RunIdentity,
    describe_pretrained,
    export_saelens,
    from_pretrained,
    save_pretrained,
)
from sae_hooks.sae import TopKSAE

D, NB = 16, 48
IDENTITY = RunIdentity(model_name="tiny-org/tiny-gpt2", point="resid_post.1", context_size=32)


def _sae() -> TopKSAE:
    torch.manual_seed(0)
    sae = TopKSAE(D, NB, top_k=4)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
        sae.input_scale.fill_(2.0)  # a power of two: folding it into SAELens weights is exact
    return sae.eval()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A hub cache with three repos: ours at the root, SAELens's at the root, and one
    repo with an SAE of each layout in subfolders (as SAELens releases are laid out)."""
    root = tmp_path_factory.mktemp("hub")
    sae = _sae()
    save_pretrained(sae, root / "ours", identity=IDENTITY, repo_id="tiny-org/sae-ours")
    export_saelens(sae, root / "lens", identity=IDENTITY)
    save_pretrained(sae, root / "both" / "blocks.1" / "ours", identity=IDENTITY)
    export_saelens(sae, root / "both" / "blocks.1" / "lens", identity=IDENTITY)
    cache = root / "cache"
    snapshots = {
        name: save_to_hub_cache(root / folder, f"tiny-org/{name}", cache, "model")
        for name, folder in [("sae-ours", "ours"), ("sae-lens", "lens"), ("sae-both", "both")]
    }
    return sae, cache, snapshots


@pytest.fixture
def offline_cache(hub, monkeypatch):
    import huggingface_hub.constants

    sae, cache, snapshots = hub
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return sae, snapshots


def _same_outputs(a, b) -> None:
    x = torch.randn(64, D) * 3
    out_a, out_b = a(x), b(x)
    assert torch.equal(out_a.z != 0, out_b.z != 0)  # the same latents fire
    torch.testing.assert_close(out_a.z, out_b.z, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out_a.x_hat, out_b.x_hat, rtol=1e-6, atol=1e-6)


def test_our_layout_by_id_is_the_same_sae(offline_cache):
    sae, _ = offline_cache
    back = sae_hooks.load_sae("tiny-org/sae-ours")
    assert type(back) is TopKSAE and not back.training
    for key, value in sae.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    nested = sae_hooks.load_sae("tiny-org/sae-both", subfolder="blocks.1/ours")
    assert all(torch.equal(nested.state_dict()[k], v) for k, v in sae.state_dict().items())
    x = torch.randn(64, D)
    assert torch.equal(back(x).x_hat, sae(x).x_hat)


def test_saelens_layout_by_id(offline_cache):
    sae, _ = offline_cache
    _same_outputs(sae, sae_hooks.load_sae("tiny-org/sae-lens"))
    _same_outputs(sae, sae_hooks.load_sae("tiny-org/sae-both", subfolder="blocks.1/lens"))
    _same_outputs(sae, from_pretrained("tiny-org/sae-both", subfolder="blocks.1/lens"))
    _same_outputs(sae, sae_hooks.load_sae("hf://tiny-org/sae-both/blocks.1/lens"))


def test_revisions_and_urls(offline_cache):
    sae, snapshots = offline_cache
    commit = snapshots["sae-both"].name
    by_commit = sae_hooks.load_sae("tiny-org/sae-both", subfolder="blocks.1/ours", revision=commit)
    assert torch.equal(by_commit.encoder.weight, sae.encoder.weight)
    by_url = sae_hooks.load_sae(f"hf://tiny-org/sae-both@{commit}/blocks.1/ours")
    assert torch.equal(by_url.encoder.weight, sae.encoder.weight)
    with pytest.raises(FileNotFoundError, match="at revision 'v9'"):
        sae_hooks.load_sae("tiny-org/sae-ours", revision="v9")


def test_what_is_not_there_is_a_clear_error(offline_cache, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cache has no snapshot.*HF_HUB_OFFLINE"):
        sae_hooks.load_sae("tiny-org/no-such-sae")
    with pytest.raises(FileNotFoundError, match=r"no folder 'layer_9'.*blocks.1/lens"):
        sae_hooks.load_sae("tiny-org/sae-both", subfolder="layer_9")
    for bad in ("../sae-ours", "/etc"):
        with pytest.raises(ValueError, match="relative path inside the repo"):
            sae_hooks.load_sae("tiny-org/sae-both", subfolder=bad)
    with pytest.raises(FileNotFoundError, match=r"only in folders: blocks.1/lens, blocks.1/ours"):
        sae_hooks.load_sae("tiny-org/sae-both")
    with pytest.raises(FileNotFoundError, match="not a Hub repo id"):
        sae_hooks.load_sae(tmp_path / "nothing" / "here")


def test_a_local_directory_still_wins(offline_cache, tmp_path, monkeypatch):
    """A relative path that exists is read from disk even when it looks like "org/name"."""
    monkeypatch.chdir(tmp_path)
    TopKSAE(D, 8, top_k=2).save(Path("tiny-org") / "sae-ours")  # not the cached one (48)
    assert sae_hooks.load_sae("tiny-org/sae-ours").nb_concepts == 8
    assert sae_hooks.sae.load_sae("tiny-org/sae-ours").nb_concepts == 8


def test_header_checks_hold_through_the_hub(hub, tmp_path, monkeypatch):
    """A repo whose cfg.json lies about its size is refused, as the same directory is
    refused on disk, before anything is allocated."""
    import huggingface_hub.constants

    sae, cache, _ = hub
    export_saelens(sae, tmp_path / "liar")
    cfg = json.loads((tmp_path / "liar" / "cfg.json").read_text())
    cfg["sae_hooks"]["config"]["nb_concepts"] = 20_000_000
    (tmp_path / "liar" / "cfg.json").write_text(json.dumps(cfg))
    save_to_hub_cache(tmp_path / "liar", "tiny-org/liar", cache, "model")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    for where in (tmp_path / "liar", "tiny-org/liar"):
        with pytest.raises(ValueError, match="20000000 latents over 16 dimensions"):
            sae_hooks.load_sae(where)
    tensors = load_file(tmp_path / "liar" / "sae_weights.safetensors")
    tensors["W_enc"][0, 0] = float("nan")
    (tmp_path / "nan").mkdir()
    save_file(tensors, tmp_path / "nan" / "sae_weights.safetensors")
    (tmp_path / "nan" / "cfg.json").write_text(json.dumps({**cfg, "sae_hooks": {}}))
    save_to_hub_cache(tmp_path / "nan", "tiny-org/nan", cache, "model")
    with pytest.raises(ValueError, match="NaN or infinite values in W_enc"):
        sae_hooks.load_sae("tiny-org/nan")


def test_describe_names_the_sae_and_its_identity(offline_cache):
    text = describe_pretrained("hf://tiny-org/sae-both/blocks.1/lens")
    assert "TopKSAE: 48 latents over 16 dimensions" in text and "SAELens layout" in text
    assert "hook point: resid_post.1" in text and "tiny-org/tiny-gpt2" in text
    assert "context size (tokens): 32" in text and "dataset: not recorded" in text
    ours = describe_pretrained("hf://tiny-org/sae-ours")
    assert "sae-hooks layout" in ours and "BOS prepended: not recorded" in ours


def test_a_fresh_offline_process_reads_the_cache(hub, tmp_path):
    """HF_HUB_CACHE and HF_HUB_OFFLINE=1 in the environment are all it takes."""
    _, cache, _ = hub
    code = (
        "import sae_hooks\n"
        "from sae_hooks.interop import describe_pretrained\n"
        "sae = sae_hooks.load_sae('tiny-org/sae-both', subfolder='blocks.1/lens')\n"
        "print(type(sae).__name__, sae.nb_concepts)\n"
        "print(describe_pretrained('hf://tiny-org/sae-ours').splitlines()[1])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "home"))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0] == f"TopKSAE {NB}" and "sae-hooks layout" in lines[1]
