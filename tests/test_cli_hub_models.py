"""`--model NAME_OR_PATH`: any architecture by hub id or directory, offline and real.

Tiny random-init models of several architectures are built in code with the offline
pydoc tokenizer saved beside them, put into a local Hugging Face cache under hub-style
ids (tests/hub_cache.py: the cache's own refs/blobs/snapshots layout), and the CLI runs
in a fresh process with only HF_HOME and HF_HUB_OFFLINE=1 set: the documented path
(docs/cli.md) `capture --model ID --data DATASET_ID`, then train / eval / report /
export with only `--run`.
"""

import json
import os
import subprocess
import sys

import datasets
import pytest
import torch
from hub_cache import save_to_hub_cache

from sae_hooks.auto_models import (
    BASE_MODEL,
    CAUSAL_LM,
    IMAGE_CLASSIFIER,
    head_for_config,
    load_any,
    model_source,
)
from sae_hooks.data import pydoc_texts

SMALL = {"vocab_size": 512, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2}
IDS = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}


def _causal(name: str):
    import transformers

    if name == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=512, n_embd=32, n_layer=3, n_head=2, n_positions=128, **IDS
        )
        return transformers.GPT2LMHeadModel(cfg)
    if name == "opt":
        cfg = transformers.OPTConfig(
            **SMALL, ffn_dim=64, max_position_embeddings=128, word_embed_proj_dim=32, **IDS
        )
        return transformers.OPTForCausalLM(cfg)
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "gpt_neox": (transformers.GPTNeoXConfig, transformers.GPTNeoXForCausalLM),
    }[name]
    cfg = config_cls(**SMALL, intermediate_size=64, max_position_embeddings=128, **IDS)
    return model_cls(cfg)


def _bert():
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(**SMALL, intermediate_size=64, max_position_embeddings=128))


def save_tiny(name: str, path, tokenizer_dir) -> None:
    """A tiny random-init model of architecture `name`, with its tokenizer or processor."""
    import shutil

    torch.manual_seed(0)
    if name == "vit":
        from transformers import ViTImageProcessor

        from sae_hooks.models import tiny_model

        tiny_model("vit", d_model=32, n_layers=2).save_pretrained(path)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
        return
    model = _bert() if name == "bert" else _causal(name)
    model.eval().save_pretrained(path)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, path / f.name)


@pytest.mark.parametrize(
    "name, head, model_class, bos",
    [
        ("gpt2", CAUSAL_LM, "GPT2LMHeadModel", True),
        ("llama", CAUSAL_LM, "LlamaForCausalLM", True),
        ("qwen2", CAUSAL_LM, "Qwen2ForCausalLM", True),
        ("gpt_neox", CAUSAL_LM, "GPTNeoXForCausalLM", True),
        ("opt", CAUSAL_LM, "OPTForCausalLM", True),
        ("bert", BASE_MODEL, "BertModel", False),
        ("vit", IMAGE_CLASSIFIER, "ViTForImageClassification", False),
    ],
)
def test_any_architecture_from_a_directory(tmp_path, tokenizer_dir, name, head, model_class, bos):
    """The head comes from the config; causal LMs start contexts with BOS (the pydoc
    tokenizer does not add one itself), encoders rely on their own special tokens; the
    identity names the directory, the model type and the class truthfully."""
    save_tiny(name, tmp_path, tokenizer_dir)
    loaded = load_any(tmp_path)
    assert head_for_config(loaded.model.config) == head
    assert type(loaded.model).__name__ == model_class and not loaded.model.training
    assert loaded.family.prepend_bos is bos and loaded.family.vision is (name == "vit")
    ident = loaded.identity
    assert ident["name_or_path"] == str(tmp_path.resolve()) == ident["model_dir"]
    assert ident["model_type"] == name and ident["head"] == model_class
    assert ident["prepend_bos"] is bos and ident["backend"] == "hf"
    assert ident["dtype"] == "float32" and ident["hub_id"] is None


def test_heads_from_configs_alone():
    """config.architectures first, then model_type tables; CLIP hooks its vision tower."""
    from transformers import BertConfig, CLIPConfig, LlamaConfig, ViTConfig

    assert head_for_config(BertConfig(architectures=["BertForMaskedLM"])) == BASE_MODEL
    assert head_for_config(BertConfig()) == BASE_MODEL  # an encoder, though it has an LM head
    assert head_for_config(LlamaConfig()) == CAUSAL_LM
    assert head_for_config(ViTConfig()) == BASE_MODEL  # a vision encoder
    assert head_for_config(CLIPConfig()) == "CLIPVisionModel"


def test_dtype_and_bad_sources(tmp_path, tokenizer_dir):
    save_tiny("llama", tmp_path / "m", tokenizer_dir)
    loaded = load_any(tmp_path / "m", dtype="bfloat16")
    assert loaded.model.dtype == torch.bfloat16 and loaded.identity["dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        load_any(tmp_path / "m", dtype="int8")
    with pytest.raises(FileNotFoundError, match="no model directory"):
        model_source(tmp_path / "missing")
    assert model_source("org/name") == "org/name"


@pytest.fixture
def hub_home(tmp_path, tokenizer_dir):
    """A HF_HOME holding tiny-org/tiny-llama and tiny-org/tiny-bert (models) and
    tiny-org/tiny-text (a dataset: parquet train/test splits), as a download leaves them."""
    home = tmp_path / "hf"
    for name in ("llama", "bert"):
        save_tiny(name, tmp_path / name, tokenizer_dir)
        save_to_hub_cache(tmp_path / name, f"tiny-org/tiny-{name}", home / "hub", "model")
    data = tmp_path / "text" / "data"
    data.mkdir(parents=True)
    ds = datasets.Dataset.from_dict({"text": pydoc_texts()[:150]})
    ds.select(range(120)).to_parquet(data / "train-00000-of-00001.parquet")
    ds.select(range(120, 150)).to_parquet(data / "test-00000-of-00001.parquet")
    save_to_hub_cache(data.parent, "tiny-org/tiny-text", home / "hub", "dataset")
    return home


def sae_hooks(home, cache, *argv) -> subprocess.CompletedProcess:
    """The CLI in a fresh process that sees only the local cache, offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", SAE_HOOKS_CACHE=str(cache))
    out = subprocess.run(
        [sys.executable, "-m", "sae_hooks", *map(str, argv)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def captured_rows_match_the_model(store_dir, model, point_layer: int, bos: bool) -> None:
    """The first context's rows are the model's own hidden states at those positions."""
    from sae_hooks.store import open_store

    store = open_store(str(store_dir))
    doc, pos = store.doc_index(0, 200), store.position(0, 200)
    first = (doc == 0).nonzero()[0]
    ids = [int(t) for t in store.token_ids(0, 200)[first]]
    if bos:  # the BOS position is kept out of the store
        assert pos[first][0] == 1
        ids = [model.config.bos_token_id, *ids]
    with torch.no_grad():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    expected = hidden[point_layer + 1][0, 1 if bos else 0 :]
    got = store.read_tensor(store.points[0], 0, 200)[first].float()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_the_documented_path_through_the_local_cache(hub_home, tmp_path):
    """capture --model tiny-org/tiny-llama --data tiny-org/tiny-text, then train, eval,
    report and export with only --run: run.json and the SAELens export name the model by
    the id it was loaded from, and the captured rows are the model's hidden states."""
    from transformers import AutoModelForCausalLM

    cache = tmp_path / "cache"
    sae_hooks(
        hub_home, cache, "capture", "--model", "tiny-org/tiny-llama", "--point", "resid_post.1",
        "--data", "tiny-org/tiny-text", "--text-field", "text", "--run", "r",
        "--max-rows", "2000", "--context-length", "32", "--quiet",
    )  # fmt: skip
    record = json.loads((cache / "r/run.json").read_text())
    model = record["model"]
    assert model["name_or_path"] == model["name"] == model["hub_id"] == "tiny-org/tiny-llama"
    snapshot = next((hub_home / "hub/models--tiny-org--tiny-llama/snapshots").iterdir())
    assert model["commit"] == snapshot.name  # the cache's resolved commit
    assert model["model_type"] == "llama" and model["head"] == "LlamaForCausalLM"
    assert model["prepend_bos"] is True and model["backend"] == "hf" and model["family"] is None
    corpus = record["corpus"]
    assert corpus["data"] == "tiny-org/tiny-text" and corpus["text_field"] == "text"
    assert corpus["streaming"] is False and corpus["part"].startswith("train")

    train = ["--nb-concepts", "64", "--k-per-token", "4", "--batch-size", "128", "--steps", "15"]
    sae_hooks(hub_home, cache, "train", "--run", "r", *train, "--quiet")
    out = sae_hooks(hub_home, cache, "eval", "--run", "r", "--max-batches", "1", "--quiet")
    assert "held-out part of tiny-org/tiny-text" in out.stdout
    assert json.loads((cache / "r/eval.json").read_text())["point"] == "resid_post.1"
    sae_hooks(hub_home, cache, "report", "--run", "r", "--n-latents", "2", "--quiet")
    assert (cache / "r/report/index.html").is_file()
    sae_hooks(hub_home, cache, "export", "--run", "r", "--format", "saelens", "--quiet")
    cfg = json.loads((cache / "r/export-saelens/cfg.json").read_text())
    names = {cfg.get("model_name"), cfg.get("metadata", {}).get("model_name")} - {None}
    assert names == {"tiny-org/tiny-llama"}

    llama = AutoModelForCausalLM.from_pretrained(snapshot).eval()
    captured_rows_match_the_model(cache / "r/store", llama, 1, bos=True)


@pytest.mark.slow
def test_an_encoder_by_hub_id_on_a_local_parquet(hub_home, tmp_path):
    """BERT by hub id on a local parquet file: no BOS prepended (its tokenizer's own
    tokens), the parquet path recorded resolved, the rows are the model's hidden states."""
    from transformers import AutoModel

    parquet = tmp_path / "docs.parquet"
    datasets.Dataset.from_dict({"body": pydoc_texts()[:60]}).to_parquet(parquet)
    cache = tmp_path / "cache"
    sae_hooks(
        hub_home, cache, "capture", "--model", "tiny-org/tiny-bert", "--point", "resid_post.0",
        "--data", parquet, "--text-field", "body", "--run", "b", "--max-rows", "500",
        "--context-length", "32", "--quiet",
    )  # fmt: skip
    record = json.loads((cache / "b/run.json").read_text())
    assert record["model"]["name_or_path"] == "tiny-org/tiny-bert"
    assert record["model"]["prepend_bos"] is False and record["model"]["head"] == "BertModel"
    assert record["corpus"]["data"] == str(parquet.resolve())
    snapshot = next((hub_home / "hub/models--tiny-org--tiny-bert/snapshots").iterdir())
    captured_rows_match_the_model(cache / "b/store", AutoModel.from_pretrained(snapshot), 0, False)


def test_family_is_a_deprecated_alias_of_model(tmp_path, tokenizer_dir, capsys, monkeypatch):
    """--family gpt2 --model-dir DIR loads DIR as --model DIR would, with a note."""
    from sae_hooks.cli import main

    monkeypatch.setenv("SAE_HOOKS_CACHE", str(tmp_path / "cache"))
    save_tiny("gpt2", tmp_path / "gpt2", tokenizer_dir)
    argv = ["capture", "--point", "resid_post.0", "--max-rows", "200", "--quiet"]
    argv += ["--context-length", "32"]
    assert (
        main([*argv, "--family", "gpt2", "--model-dir", str(tmp_path / "gpt2"), "--run", "a"]) == 0
    )
    err = capsys.readouterr().err
    assert "Loading weights" not in err  # --quiet silences transformers' bar too
    assert f"--family is deprecated: use --model {(tmp_path / 'gpt2').resolve()}" in err
    assert main([*argv, "--model", str(tmp_path / "gpt2"), "--run", "b"]) == 0
    a, b = (json.loads((tmp_path / f"cache/{r}/run.json").read_text()) for r in "ab")
    assert a["model"] == b["model"] and a["model"]["model_type"] == "gpt2"
    assert main([*argv, "--model", str(tmp_path / "gpt2"), "--split", "all", "--run", "c"]) == 0
    assert "use --part all" in capsys.readouterr().err
    record = json.loads((tmp_path / "cache/c/run.json").read_text())
    assert record["corpus"]["part"].startswith("all") and record["corpus"]["split"] is None


@pytest.mark.slow
def test_transformer_lens_backend_from_the_cli(tmp_path, tokenizer_dir, capsys, monkeypatch):
    """--backend transformer-lens runs a Llama as a TransformerBridge (GPT-2 would be a
    HookedTransformer under TransformerLens 3): the rows are still the HF hidden states,
    and run.json says what ran it."""
    from transformers import AutoModelForCausalLM

    from sae_hooks.cli import main

    monkeypatch.setenv("SAE_HOOKS_CACHE", str(tmp_path / "cache"))
    save_tiny("llama", tmp_path / "llama", tokenizer_dir)
    argv = ["capture", "--model", str(tmp_path / "llama"), "--backend", "transformer-lens"]
    argv += ["--point", "resid_post.1", "--max-rows", "200", "--context-length", "32"]
    assert main([*argv, "--run", "tl", "--quiet"]) == 0, capsys.readouterr().err
    model = json.loads((tmp_path / "cache/tl/run.json").read_text())["model"]
    assert model["backend"] == "transformer-lens" and model["compatibility_mode"] is False
    assert model["runtime"] == "transformer_lens.TransformerBridge"
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "llama").eval()
    captured_rows_match_the_model(tmp_path / "cache/tl/store", hf, 1, bos=True)
    # ... and the rest of the path with only --run: the bridge is booted again from run.json.
    train = ["--nb-concepts", "64", "--k-per-token", "4", "--batch-size", "64", "--steps", "5"]
    assert main(["train", "--run", "tl", *train, "--quiet"]) == 0, capsys.readouterr().err
    assert main(["eval", "--run", "tl", "--max-batches", "1", "--quiet"]) == 0
    evaluation = json.loads((tmp_path / "cache/tl/eval.json").read_text())
    assert evaluation["point"] == "resid_post.1" and 0 <= evaluation["fvu"] < 2
    assert main(["export", "--run", "tl", "--format", "saelens", "--quiet"]) == 0
    cfg = json.loads((tmp_path / "cache/tl/export-saelens/cfg.json").read_text())
    assert cfg["model_name"] == str(tmp_path / "llama")
