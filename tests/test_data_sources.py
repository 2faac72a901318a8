"""Data sources: token contexts, image batches, resume, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_hooks.data import InputBatch, InputBatches, image_batches, pydoc_texts, text_batches


def real_tokens(batch: InputBatch) -> list[list[int]]:
    return [ids[m.bool()].tolist() for ids, m in zip(batch["input_ids"], batch["attention_mask"])]


def test_pydoc_texts_are_real_paragraphs():
    paras = pydoc_texts()
    assert len(paras) > 500 and all(len(p) >= 80 for p in paras)
    assert pydoc_texts(5) == paras[:5]


def test_chunk_mode_keeps_every_token_once(texts, tokenizer):
    docs = texts[:10]
    batches = list(text_batches(docs, tokenizer, context_length=16, batch_size=4))
    contexts = [c for b in batches for c in real_tokens(b)]
    assert all(1 <= len(c) <= 16 for c in contexts)
    flat = [t for c in contexts for t in c]
    want = [t for d in docs for t in tokenizer(d, add_special_tokens=False)["input_ids"]]
    assert flat == want
    assert [b.doc_offset for b in batches] == [4 * i for i in range(len(batches))]
    assert [b.index for b in batches] == list(range(len(batches)))
    assert batches[0]["input_ids"].dtype == torch.long


def test_truncate_mode_one_context_per_document(texts, tokenizer):
    data = text_batches(texts[:10], tokenizer, context_length=16, batch_size=4, mode="truncate")
    assert len(data) == 3
    contexts = [c for b in data for c in real_tokens(b)]
    assert contexts == [tokenizer(d)["input_ids"][:16] for d in texts[:10]]


def test_special_tokens_wrap_every_context(minilm):
    _, tok = minilm
    docs = pydoc_texts(3)
    contexts = [
        c for b in text_batches(docs, tok, context_length=20, batch_size=8) for c in real_tokens(b)
    ]
    assert len(contexts) > 3
    assert all(c[0] == tok.cls_token_id and c[-1] == tok.sep_token_id for c in contexts)
    assert max(map(len, contexts)) == 20


def test_prepend_bos(texts, tokenizer):
    data = text_batches(texts[:3], tokenizer, context_length=8, batch_size=2, prepend_bos=True)
    assert all(c[0] == tokenizer.bos_token_id for b in data for c in real_tokens(b))


@pytest.mark.parametrize("mode", ["chunk", "truncate"])
def test_resume_from_batch_index(texts, tokenizer, mode):
    data = text_batches(texts[:12], tokenizer, context_length=16, batch_size=3, mode=mode)
    full = list(data)
    for k in (0, 2, len(full) - 1, len(full)):
        rest = list(data.iter_from(k))
        assert [b.index for b in rest] == [b.index for b in full[k:]]
        for a, b in zip(rest, full[k:], strict=True):
            assert torch.equal(a["input_ids"], b["input_ids"]) and a.doc_offset == b.doc_offset
    late = text_batches(
        texts[:12], tokenizer, context_length=16, batch_size=3, mode=mode, start_batch=2
    )
    assert torch.equal(next(iter(late))["input_ids"], full[2]["input_ids"])


def test_batches_feed_the_model(tiny_gpt2, texts, tokenizer):
    batch = next(iter(text_batches(texts, tokenizer, context_length=32, batch_size=2)))
    with torch.no_grad():
        out = tiny_gpt2(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape and batch.n_docs == 2


def test_text_errors(texts, tokenizer):
    with pytest.raises(ValueError, match="empty"):
        text_batches([], tokenizer, context_length=8, batch_size=2)
    with pytest.raises(ValueError, match="document 1 is ''"):
        text_batches(["a b", ""], tokenizer, context_length=8, batch_size=2)
    with pytest.raises(TypeError, match="a single string; give documents"):
        text_batches("one string", tokenizer, context_length=8, batch_size=2)
    with pytest.raises(ValueError, match=r"exceeds the tokenizer's model_max_length \(64\)"):
        text_batches(texts, tokenizer, context_length=65, batch_size=2)
    with pytest.raises(ValueError, match=r"exceeds max_length \(the model's context\) \(32\)"):
        text_batches(texts, tokenizer, context_length=48, batch_size=2, max_length=32)
    with pytest.raises(ValueError, match="unknown mode"):
        text_batches(texts, tokenizer, context_length=8, batch_size=2, mode="pack")


@pytest.fixture()
def image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    for i, size in enumerate([(40, 30), (32, 32), (64, 48), (20, 20), (33, 35)]):
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        folder = tmp_path / "sub" if i % 2 else tmp_path
        Image.fromarray(arr).save(folder / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_image_folder_batches(image_folder):
    data = image_batches(image_folder, image_size=32, batch_size=2)
    batches = list(data)
    assert len(data) == 3 and [b.n_docs for b in batches] == [2, 2, 1]
    assert [b.doc_offset for b in batches] == [0, 2, 4]
    x = torch.cat([b["pixel_values"] for b in batches])
    assert x.shape == (5, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    resumed = list(data.iter_from(1))
    assert torch.equal(resumed[0]["pixel_values"], batches[1]["pixel_values"])


def test_image_processor_and_size_check(image_folder, tiny_vit):
    from transformers import ViTImageProcessor

    good = ViTImageProcessor(size={"height": 32, "width": 32})
    batch = next(iter(image_batches(image_folder, image_size=32, batch_size=5, processor=good)))
    with torch.no_grad():
        assert tiny_vit(**batch).logits.shape == (5, 10)
    bad = ViTImageProcessor(size={"height": 24, "width": 24})
    with pytest.raises(ValueError, match="made 24x24 images, expected 32x32"):
        next(iter(image_batches(image_folder, image_size=32, batch_size=2, processor=bad)))


def test_image_tensor_source_and_errors(tmp_path):
    imgs = torch.randint(0, 256, (7, 3, 16, 16), dtype=torch.uint8)
    batches = list(image_batches(imgs, image_size=16, batch_size=3))
    x = torch.cat([b["pixel_values"] for b in batches])
    torch.testing.assert_close(x, imgs.float() / 127.5 - 1)
    with pytest.raises(ValueError, match="images are 16x16, expected 32x32"):
        image_batches(imgs, image_size=32, batch_size=3)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        image_batches(imgs[:, :1], image_size=16, batch_size=3)
    with pytest.raises(ValueError, match="empty: no images"):
        image_batches(tmp_path, image_size=16, batch_size=3)
    with pytest.raises(ValueError, match="not a folder"):
        image_batches(tmp_path / "missing", image_size=16, batch_size=3)


def test_input_batches_adapt_user_data(texts, tokenizer):
    """The one adapter: dicts count doc_offset from the batch sizes, pairs keep theirs,
    InputBatches pass through, and iter_from(k) resumes at batch k either way."""
    ids = [torch.zeros(n, 3, dtype=torch.long) for n in (2, 3, 1)]
    dicts = InputBatches([{"input_ids": x} for x in ids])
    assert [(b.doc_offset, b.index, b.n_docs) for b in dicts] == [(0, 0, 2), (2, 1, 3), (5, 2, 1)]
    assert [b.doc_offset for b in dicts.iter_from(2)] == [5]
    pairs = InputBatches([(10 * i, {"input_ids": x}) for i, x in enumerate(ids)])
    assert [(b.doc_offset, b.index) for b in pairs.iter_from(1)] == [(10, 1), (20, 2)]
    given = [InputBatch({"input_ids": x}, 7 + i, i) for i, x in enumerate(ids)]
    assert list(InputBatches(given)) == given  # passed through, not copied
    assert InputBatches(InputBatches(given)).data is given
    source = text_batches(texts[:10], tokenizer, context_length=16, batch_size=4)
    resumed = InputBatches(source).iter_from(1)
    assert [b.doc_offset for b in resumed] == [b.doc_offset for b in source.iter_from(1)]
    with pytest.raises(TypeError, match="expected an InputBatch"):
        list(InputBatches([ids[0]]))
    with pytest.raises(ValueError, match="doc_offset must be an int >= 0, got -1"):
        list(InputBatches([(-1, {"input_ids": ids[0]})]))
