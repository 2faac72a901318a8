"""Identity in the exports (issue 29 item 5): the model id or path the run loaded, the
revision, the hook point, context size, prepend_bos as used, the dataset and the
normalisation; null where the run recorded nothing, never a guessed default."""

from __future__ import annotations

import json

import pytest
import torch

from sae_hooks.data import text_batches
from sae_hooks.interop import (
    RunIdentity,
    export_neuronpedia,
    export_saelens,
    identity_from_run,
    identity_from_store,
    pretrained_metadata,
    saelens_metadata,
    save_pretrained,
)
from sae_hooks.interop.identity import model_source
from sae_hooks.sae import TopKSAE
from sae_hooks.store import capture_to_store


def _run(tmp_path, model, corpus, train=None):
    run = tmp_path / "run"
    (run / "train").mkdir(parents=True)
    record = {"format": 1, "model": model, "points": ["resid_post.1"], "corpus": corpus}
    (run / "run.json").write_text(json.dumps(record))
    train = {"point": "resid_post.1", "normalize_activations": True, **(train or {})}
    (run / "train" / "config.json").write_text(json.dumps(train))
    return run


LLAMA = {"family": "gpt2", "hub_id": "tiny-org/tiny-llama", "revision": "abc123", "tiny": False}
CORPUS = {
    "data": "tiny-org/tiny-corpus",
    "context_length": 32,
    "prepend_bos": False,
    "split": "train",
}


def _saelens_pre6_view(cfg):
    """What SAELens 6 makes of a cfg.json that names no sae_lens_version (ours): the
    top-level keys, with its defaults for the missing ones (handle_pre_6_0_config)."""
    view = dict(cfg)
    view.setdefault("prepend_bos", True)
    view.setdefault(
        "reshape_activations", "hook_z" if "hook_z" in view.get("hook_name", "") else "none"
    )
    keys = ("model_name", "hook_name", "prepend_bos", "context_size", "dataset_path")
    return {k: view.get(k) for k in keys}


def test_a_hub_model_run_exports_its_own_id(tmp_path):
    """A Llama loaded by hub id exported model_name "gpt2" and prepend_bos true before."""
    run = _run(tmp_path, LLAMA, CORPUS)
    identity = identity_from_run(run)
    assert identity == RunIdentity(
        model_name="tiny-org/tiny-llama",
        model_revision="abc123",
        point="resid_post.1",
        context_size=32,
        prepend_bos=False,
        dataset_path="tiny-org/tiny-corpus",
        dataset_split="train",
        normalisation="input_scale",
    )
    out = export_saelens(TopKSAE(16, 32, top_k=4), tmp_path / "lens", identity=identity)
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["metadata"]["model_name"] == "tiny-org/tiny-llama"
    assert cfg["metadata"]["prepend_bos"] is False and cfg["metadata"]["context_size"] == 32
    assert cfg["metadata"]["dataset_path"] == "tiny-org/tiny-corpus"
    assert cfg["metadata"]["model_from_pretrained_kwargs"] == {"revision": "abc123"}
    assert _saelens_pre6_view(cfg) == {
        "model_name": "tiny-org/tiny-llama",
        "hook_name": "blocks.1.hook_resid_post",
        "prepend_bos": False,
        "context_size": 32,
        "dataset_path": "tiny-org/tiny-corpus",
    }
    assert cfg["normalize_activations"] == "none"  # input_scale is folded into the weights
    assert saelens_metadata(out)["identity"] == identity.to_dict()


def test_what_was_not_recorded_is_null(tmp_path):
    """A random-init model has no id (not "gpt2" nor "tiny-gpt2"); no corpus record, no
    context, no BOS: SAELens must not fill in prepend_bos=True."""
    tiny = {"family": "gpt2", "model_dir": None, "hub_id": None, "tiny": True, "name": "tiny-gpt2"}
    identity = identity_from_run(_run(tmp_path, tiny, {}))
    assert identity.model_name is None and identity.context_size is None
    out = export_saelens(TopKSAE(16, 32, top_k=4), tmp_path / "lens", identity=identity)
    cfg = json.loads((out / "cfg.json").read_text())
    assert _saelens_pre6_view(cfg) == {
        "model_name": None,
        "hook_name": "blocks.1.hook_resid_post",
        "prepend_bos": None,
        "context_size": None,
        "dataset_path": None,
    }
    bare = json.loads(
        (export_saelens(TopKSAE(16, 32, top_k=4), tmp_path / "b") / "cfg.json").read_text()
    )
    assert "hook_name" not in bare and bare["prepend_bos"] is None  # SAELens < 6 parses it


def test_local_and_cached_model_directories(tmp_path):
    snapshot = tmp_path / "hub" / "models--tiny-org--tiny-llama" / "snapshots" / "c0ffee"
    assert model_source(str(snapshot)) == ("tiny-org/tiny-llama", "c0ffee")
    assert model_source("/models/minilm") == ("/models/minilm", None)
    minilm = {"family": "minilm", "model_dir": "/models/minilm", "tiny": False, "name": "minilm"}
    assert identity_from_run(_run(tmp_path, minilm, CORPUS)).model_name == "/models/minilm"


def test_identity_from_a_store(tiny_gpt2, tokenizer, texts, tmp_path):
    for bos in (False, True):
        batches = text_batches(
            texts[:8], tokenizer, context_length=16, batch_size=4, prepend_bos=bos
        )
        store = capture_to_store(
            tiny_gpt2, "resid_post.1", batches, tmp_path / f"s{bos}", progress=False, max_rows=64
        )
        identity = identity_from_store(store)
        assert identity.prepend_bos is bos and identity.context_size == 16
        assert identity.point == "resid_post.1" and identity.dataset_path is None
        assert identity.model_name is None  # a random-init model: its class name is no id


def test_values_are_typed_and_never_silently_replaced():
    with pytest.raises(ValueError, match="context_size must be int"):
        RunIdentity(context_size="32")
    with pytest.raises(ValueError, match="prepend_bos must be bool"):
        RunIdentity(prepend_bos=1)
    identity = RunIdentity(model_name="org/a", point="resid_post.1")
    with pytest.raises(ValueError, match="model_name='org/b'"):
        identity.with_values(model_name="org/b")
    assert identity.with_values(model_name="org/a", context_size=8).context_size == 8
    assert RunIdentity.from_dict({"context_size": "8", "prepend_bos": True}) == RunIdentity(
        prepend_bos=True
    )


def test_model_card_and_metadata(tmp_path):
    identity = RunIdentity(
        model_name="tiny-org/tiny-llama", point="resid_post.1", dataset_path="org/corpus"
    )
    path = save_pretrained(TopKSAE(16, 32, top_k=4), tmp_path / "p", identity=identity)
    card = (path / "README.md").read_text()
    assert "base_model: tiny-org/tiny-llama" in card and "- org/corpus" in card
    assert "- BOS prepended: not recorded" in card and "- hook point: `resid_post.1`" in card
    meta = pretrained_metadata(path)
    assert meta["model_name"] == "tiny-org/tiny-llama"
    assert meta["identity"] == identity.to_dict()
    local = save_pretrained(
        TopKSAE(16, 32, top_k=4), tmp_path / "q", model_name=str(tmp_path), point="mlp_out.0"
    )
    assert "base_model" not in (local / "README.md").read_text()  # a path is no hub id


def test_neuronpedia_records_the_identity(tiny_gpt2, tokenizer, texts, tmp_path):
    batches = text_batches(texts[:8], tokenizer, context_length=16, batch_size=4)
    store = capture_to_store(tiny_gpt2, "resid_post.1", batches, tmp_path / "s", progress=False)
    sae = TopKSAE(store.d_model("resid_post.1"), 16, top_k=2).eval()
    torch.manual_seed(0)
    identity = RunIdentity(model_name="tiny-org/tiny-gpt2", context_size=16, prepend_bos=False)
    out = export_neuronpedia(
        sae, store, tmp_path / "np", tokenizer=tokenizer, identity=identity, progress=False
    )
    header = json.loads((out / "sae.json").read_text())
    assert header["modelId"] == "tiny-org/tiny-gpt2"
    assert (
        header["identity"]["prepend_bos"] is False and header["identity"]["point"] == "resid_post.1"
    )
    with pytest.raises(ValueError, match=r"point='resid_post\.0'"):
        export_neuronpedia(
            sae,
            store,
            tmp_path / "np2",
            point="resid_post.0",
            identity=identity.with_values(point="resid_post.1"),
        )


def test_a_transcoder_run_records_its_output_point(tmp_path):
    run = _run(tmp_path, LLAMA, CORPUS, {"point": "mlp_out.0", "target_point": "mlp_out.1"})
    identity = identity_from_run(run)
    assert (identity.point, identity.target_point) == ("mlp_out.0", "mlp_out.1")
    assert identity.to_dict()["hook_name_out"] == "blocks.1.hook_mlp_out"
    assert identity_from_run(_run(tmp_path / "b", LLAMA, CORPUS)).hook_name_out is None
