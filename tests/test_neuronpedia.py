"""The Neuronpedia-style export: latent activations and explanation inputs as JSON."""

import json

from sae_hooks.data import text_batches
from sae_hooks.interop.neuronpedia import FORMAT, export_neuronpedia
from sae_hooks.sae import TopKSAE
from sae_hooks.store import capture_to_store


def test_export_layout(tiny_gpt2, tokenizer, texts, tmp_path):
    batches = text_batches(texts[:20], tokenizer, context_length=32, batch_size=4)
    store = capture_to_store(tiny_gpt2, "resid_post.1", batches, tmp_path / "s", progress=False)
    sae = TopKSAE(store.d_model("resid_post.1"), 24, top_k=3).eval()
    out = export_neuronpedia(
        sae,
        store,
        tmp_path / "np",
        tokenizer=tokenizer,
        model_id="tiny-gpt2",
        sae_id="1-res",
        n_examples=4,
        progress=False,
    )
    header = json.loads((out / "sae.json").read_text())
    assert header["format"] == FORMAT and header["hookName"] == "blocks.1.hook_resid_post"
    assert header["d_sae"] == 24 and header["n_rows"] == store.n_rows
    features = [f for name in header["batches"] for f in json.loads((out / name).read_text())]
    assert features and all(f["density"] > 0 for f in features)
    first = features[0]["activations"][0]
    assert len(first["tokens"]) == len(first["values"]) == len(first["tokenIds"])
    assert first["values"][first["maxValueTokenIndex"]] == first["maxValue"]
    assert not any(t.startswith("#") for t in first["tokens"])  # decoded text
    lines = [json.loads(line) for line in (out / "explanations.jsonl").read_text().splitlines()]
    assert [r["index"] for r in lines] == [f["index"] for f in features]
    assert lines[0]["explanation"] is None and "<<" in lines[0]["examples"][0]["text"]
