"""save_pretrained / from_pretrained / push_to_hub, with the Hub mocked (never the network)."""

import json
import shutil

import pytest
import torch

from sae_hooks.interop import export_saelens, hub
from sae_hooks.sae import TopKSAE


def _sae():
    torch.manual_seed(0)
    return TopKSAE(16, 48, top_k=4).eval()


def _same(a, b):
    x = torch.randn(8, 16)
    return torch.allclose(a(x).x_hat, b(x).x_hat, rtol=1e-5, atol=1e-5)


def test_save_and_load_a_local_directory(tmp_path):
    sae = _sae()
    path = hub.save_pretrained(sae, tmp_path / "p", point="resid_post.3", model_name="gpt2")
    assert {p.name for p in path.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    meta = hub.pretrained_metadata(path)
    assert meta["hook_name"] == "blocks.3.hook_resid_post" and meta["model_name"] == "gpt2"
    assert "library_name: sae-hooks" in (path / "README.md").read_text()
    back = hub.from_pretrained(path)
    assert type(back) is TopKSAE and not back.training and _same(sae, back)
    # An SAELens directory loads through the same call.
    export_saelens(sae, tmp_path / "lens", point="mlp_out.1")
    assert _same(sae, hub.from_pretrained(tmp_path / "lens"))
    assert hub.pretrained_metadata(tmp_path / "lens")["point"] == "mlp_out.1"


def test_hub_calls_are_mocked(tmp_path, monkeypatch):
    import huggingface_hub

    uploaded, created = {}, []

    def create_repo(self, repo_id, **kw):
        created.append((repo_id, kw["private"]))

    def upload_folder(self, *, folder_path, repo_id, **kw):
        shutil.copytree(folder_path, tmp_path / "remote" / repo_id / "sae")
        uploaded["repo"] = repo_id
        return "commit-info"

    def snapshot_download(repo_id, *, revision=None, allow_patterns=None, **kw):
        uploaded["download"] = (repo_id, revision, allow_patterns)
        return str(tmp_path / "remote" / repo_id)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    sae = _sae()
    assert hub.push_to_hub(sae, "me/my-sae", point="resid_post.3", private=True) == "commit-info"
    assert created == [("me/my-sae", True)] and uploaded["repo"] == "me/my-sae"
    card = (tmp_path / "remote/me/my-sae/sae/README.md").read_text()
    assert 'sae_hooks.load_sae("me/my-sae")' in card
    back = hub.from_pretrained("me/my-sae", revision="v1", subfolder="sae")
    repo, revision, patterns = uploaded["download"]
    assert (repo, revision) == ("me/my-sae", "v1") and _same(sae, back)
    # Only an SAE's files, only in its folder: never a whole repo of SAEs.
    assert "sae/model.safetensors" in patterns and "sae/sae_weights.safetensors" in patterns
    assert all(p.startswith("sae/") and "*" not in p for p in patterns)


def test_not_a_directory_nor_a_repo_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a Hub repo id"):
        hub.from_pretrained(tmp_path / "nothing" / "here")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "sae_hooks.json").write_text(json.dumps({"point": "resid_pre.0"}))
    assert hub.pretrained_metadata(tmp_path / "x")["point"] == "resid_pre.0"


def test_the_first_import_path_still_works():
    """Model cards pushed by earlier versions say `from sae_hooks.hub import from_pretrained`."""
    from sae_hooks.hub import from_pretrained

    assert from_pretrained is hub.from_pretrained
