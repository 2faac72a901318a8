"""Bad input is refused with an error that names the problem and the valid choices.

Only cases no module test covers live here; docs/reliability.md lists every case
with the test that covers it. The property tests throw many argument combinations
at the SAE and store APIs: valid ones work exactly, invalid ones raise ValueError or
TypeError, never an obscure error from deep inside.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sae_hooks.eval import evaluate_reconstruction
from sae_hooks.hooks import capture_batch
from sae_hooks.sae import SAE, BatchTopKSAE, JumpSAE, TopKSAE
from sae_hooks.store import StoreWriter, capture_to_store, open_store
from sae_hooks.train import TensorSource, TrainConfig, Trainer, train

PROPERTY = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def ids(n: int, t: int, high: int = 512) -> torch.Tensor:
    return torch.randint(0, high, (n, t), generator=torch.Generator().manual_seed(0))


def rows_batch(n: int, d: int = 4, point: str = "p") -> SimpleNamespace:
    return SimpleNamespace(
        acts={point: torch.randn(n, d)},
        token_ids=torch.arange(n),
        doc_index=torch.zeros(n, dtype=torch.long),
        position=torch.arange(n),
    )


# ------------------------------------------------------------------ capture inputs


@pytest.mark.parametrize(
    ("model", "inputs", "error", "match"),
    [
        ("tiny_gpt2", {"input_ids": ids(1, 65)}, ValueError, r"65 tokens .* context of 64"),
        ("tiny_hooked_transformer", ids(1, 65), ValueError, r"context of 64 tokens"),
        ("tiny_bert", {"input_ids": ids(1, 65)}, ValueError, r"context of 64 tokens"),
        ("tiny_gpt2", {"input_ids": ids(2, 8, 600)}, ValueError, r"lie in 0\.\.511"),
        ("tiny_hooked_transformer", ids(1, 8) - 600, ValueError, r"lie in 0\.\.511"),
        ("tiny_gpt2", {"input_ids": ids(1, 8).float()}, TypeError, "integer tensor"),
        (
            "tiny_gpt2",
            {"input_ids": ids(2, 8), "attention_mask": torch.ones(2, 7)},
            ValueError,
            r"attention_mask has shape \(2, 7\) but input_ids \(2, 8\)",
        ),
        ("tiny_vit", {"pixel_values": torch.randn(1, 3, 48, 48)}, ValueError, r"48\*48.*32\*32"),
        ("tiny_vit", {"pixel_values": torch.randn(1, 1, 32, 32)}, ValueError, "channel"),
    ],
    ids=[
        "context-hf",
        "context-tl",
        "context-bert",
        "vocab-hf",
        "vocab-negative-tl",
        "float-ids",
        "mask-shape",
        "image-size",
        "image-channels",
    ],
)
def test_capture_refuses_bad_model_inputs(model, inputs, error, match, request):
    with pytest.raises(error, match=match):
        capture_batch(request.getfixturevalue(model), "resid_post.0", inputs)


def test_eval_refuses_empty_data_long_sequences_and_a_mismatched_sae(tiny_gpt2):
    sae = TopKSAE(64, 128, top_k=4)
    with pytest.raises(ValueError, match="longer than the model's context"):
        evaluate_reconstruction(
            tiny_gpt2, "resid_post.0", sae, [{"input_ids": ids(1, 80)}], progress=False
        )
    with pytest.raises(ValueError, match="the data source yielded no batches"):
        evaluate_reconstruction(tiny_gpt2, "resid_post.0", sae, [], progress=False)
    with pytest.raises(ValueError, match=r"'resid_post.0' has d=64 but the SAE's input_size is 32"):
        evaluate_reconstruction(
            tiny_gpt2,
            "resid_post.0",
            TopKSAE(32, 64, top_k=4),
            [{"input_ids": ids(1, 8)}],
            progress=False,
        )


def test_capture_to_store_refuses_an_empty_data_source(tiny_gpt2, tmp_path):
    with pytest.raises(ValueError, match="yielded no input batches"):
        capture_to_store(tiny_gpt2, "resid_post.0", [], tmp_path / "s", progress=False)
    with pytest.raises(ValueError, match="max_rows must be >= 1"):
        capture_to_store(tiny_gpt2, "resid_post.0", [], tmp_path / "t", max_rows=0)
    with pytest.raises(ValueError, match="points is empty"):
        capture_to_store(tiny_gpt2, [], [], tmp_path / "u")


# ------------------------------------------------------------------ store inputs


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"chunk_rows": "8"}, ValueError, "chunk_rows must be an int >= 1, got '8'"),
        ({"chunk_rows": 0}, ValueError, "chunk_rows must be an int >= 1"),
        ({"shard_chunks": 0}, ValueError, "shard_chunks must be an int >= 1"),
        ({"queue_size": 0}, ValueError, "queue_size must be an int >= 1"),
        ({"commit_interval": math.nan}, ValueError, "commit_interval must be seconds >= 0"),
        ({"compressors": "gzip"}, ValueError, r"unknown compressor 'gzip'; valid: None, 'zstd'"),
    ],
)
def test_writer_refuses_bad_settings(kwargs, error, match, tmp_path):
    with pytest.raises(error, match=match):
        StoreWriter(tmp_path / "s", points=["p"], d_model=4, **kwargs).close()


def test_writer_refuses_malformed_batches(tmp_path):
    with StoreWriter(tmp_path / "s", points=["p"], d_model=4) as w:
        with pytest.raises(TypeError, match=r"acts: dict\[point, \(n, d\)\]"):
            w.append({"p": torch.zeros(2, 4)})
        short = rows_batch(5)
        short.token_ids = short.token_ids[:3]
        with pytest.raises(ValueError, match=r"token_ids has shape \(3,\), expected \(5,\)"):
            w.append(short)
        missing = rows_batch(5)
        del missing.position
        with pytest.raises(TypeError, match="needs a 'position' attribute"):
            w.append(missing)
        uneven = rows_batch(5)
        uneven.acts["q"] = torch.zeros(4, 4)
        with pytest.raises(ValueError, match=r"unexpected \['q'\]"):
            w.append(uneven)
        w.append(rows_batch(0))  # an input batch that was all padding is fine
        w.append(rows_batch(3))
    assert open_store(tmp_path / "s").n_rows == 3


def test_reading_a_damaged_chunk_names_it(tmp_path):
    with StoreWriter(tmp_path / "s", points=["p"], d_model=4, chunk_rows=8) as w:
        w.append(rows_batch(20))
    chunk = tmp_path / "s" / "acts" / "p" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    store = open_store(tmp_path / "s")
    with pytest.raises(ValueError, match=r"rows \[0, 20\) of acts/p cannot be read.*verify\(\)"):
        store.read("p")
    assert store.read("p", 0, 8).shape == (8, 4)  # the intact chunks still read
    assert [d.chunk for d in store.verify()] == [1]


def test_open_store_refuses_a_plain_file(tmp_path):
    (tmp_path / "f").write_text("not a store")
    with pytest.raises(ValueError, match=r"is not an activation store.*zarr v3 group"):
        open_store(tmp_path / "f")


# ------------------------------------------------------------------ SAE and training inputs


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: JumpSAE(8, 16, bandwidth=math.inf), ValueError, "positive finite number"),
        (lambda: JumpSAE(8, 16, bandwidth=math.nan), ValueError, "bandwidth must be"),
        (lambda: JumpSAE(8, 16, kernel=None), ValueError, r"unknown kernel None; valid: \["),
        (lambda: TopKSAE(8, 16, top_k=2.5), ValueError, r"0 < top_k <= nb_concepts=16"),
        (lambda: BatchTopKSAE(8, 16, threshold_momentum=math.nan), ValueError, "in \\[0, 1\\]"),
        (lambda: SAE(8, 16)(np.zeros((3, 8))), TypeError, "must be a torch.Tensor"),
        (lambda: SAE(8, 16)(torch.zeros(3, 8, dtype=torch.long)), TypeError, "floating point"),
        (lambda: SAE(8, 16)(torch.zeros(3, 9)), ValueError, r"expects input of shape \(N, 8\)"),
    ],
)
def test_sae_refuses_bad_arguments(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_training_refuses_mismatched_sources(tmp_path):
    config = TrainConfig(
        architecture="topk", nb_concepts=32, k_per_token=2, batch_size=16, steps=2, progress=False
    )
    with pytest.raises(ValueError, match="the SAE takes rows of width 12, the source has 8"):
        Trainer(config, TensorSource(torch.randn(64, 8)), tmp_path, sae=TopKSAE(12, 32, top_k=2))
    with StoreWriter(tmp_path / "s", points=["p"], d_model=4) as w:
        w.append(rows_batch(64))
    with pytest.raises(ValueError, match=r"'nope' is not in the store; it holds \['p'\]"):
        train(TrainConfig.from_dict({**config.to_dict(), "point": "nope"}), tmp_path / "s", "r")


def test_training_refuses_an_empty_source(tmp_path):
    config = TrainConfig(nb_concepts=32, k_per_token=2, batch_size=16, steps=2, progress=False)
    with pytest.raises(ValueError, match=r"empty|no rows"):
        train(config, TensorSource(torch.randn(0, 8)), tmp_path)


# ------------------------------------------------------------------ properties of the SAE API

ARCHS = {"relu": SAE, "topk": TopKSAE, "batchtopk": BatchTopKSAE, "jumprelu": JumpSAE}


@st.composite
def valid_sae(draw):
    arch = draw(st.sampled_from(sorted(ARCHS)))
    d = draw(st.integers(1, 24))
    nb = draw(st.integers(1, 48))
    kwargs = {}
    if arch == "topk":
        kwargs["top_k"] = draw(st.integers(1, nb))
    elif arch == "batchtopk":
        kwargs["top_k"] = draw(st.integers(1, 4 * nb))
    elif arch == "jumprelu":
        kwargs["bandwidth"] = draw(st.floats(1e-4, 1.0))
    shape = draw(st.sampled_from(["rows", "seq"]))
    return arch, d, nb, kwargs, shape, draw(st.integers(1, 12)), draw(st.integers(0, 2**16))


@PROPERTY
@given(valid_sae())
def test_any_valid_sae_gives_the_right_shapes_and_counts(case):
    arch, d, nb, kwargs, shape, batch, seed = case
    torch.manual_seed(seed)
    input_shape = d if shape == "rows" else (3, d)
    sae = ARCHS[arch](input_shape, nb, **kwargs)
    x = torch.randn(batch, d) if shape == "rows" else torch.randn(batch, 3, d)
    n_rows = batch * (1 if shape == "rows" else 3)
    z_pre, z, x_hat = sae(x)
    assert z_pre.shape == z.shape == (n_rows, nb) and x_hat.shape == x.shape
    assert sae.get_dictionary().shape == (nb, d)
    positive = (z_pre > 0).sum(-1)
    if arch == "topk":
        assert torch.equal((z != 0).sum(-1), positive.clamp(max=kwargs["top_k"]))
    if arch == "batchtopk":  # the whole batch keeps top_k codes (no ties in random data)
        assert int((z != 0).sum()) == min(kwargs["top_k"], int(positive.sum()))
    assert torch.isfinite(x_hat).all()


BAD_INTS = st.one_of(
    st.integers(max_value=0),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.booleans(),
    st.none(),
    st.lists(st.integers(1, 4), max_size=2),
)


@PROPERTY
@given(
    arch=st.sampled_from(sorted(ARCHS)),
    field=st.sampled_from(["input_shape", "nb_concepts", "top_k", "bandwidth", "kernel"]),
    bad=BAD_INTS,
)
def test_any_invalid_sae_argument_is_a_clear_error(arch, field, bad):
    kwargs = {"input_shape": 8, "nb_concepts": 16}
    applies = {"top_k": ("topk", "batchtopk"), "bandwidth": ("jumprelu",), "kernel": ("jumprelu",)}
    if field in applies and arch not in applies[field]:
        return
    if bad is None and field in ("top_k", "bandwidth"):
        return  # None means "the default" there
    if field == "input_shape" and isinstance(bad, list) and bad:
        return  # a list of positive ints is a valid shape
    if field == "bandwidth" and isinstance(bad, float) and math.isfinite(bad) and bad > 0:
        return  # any finite positive float is a valid bandwidth
    kwargs[field] = bad
    with pytest.raises((ValueError, TypeError)) as err:
        ARCHS[arch](**kwargs)
    assert field.replace("_", "") in str(err.value).replace("_", "") or "kernel" in str(err.value)


# ------------------------------------------------------------------ properties of the store API


@PROPERTY
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    chunk_rows=st.integers(1, 32),
    shard_chunks=st.one_of(st.none(), st.integers(1, 3)),
    dtype=st.sampled_from(["float32", "float16", "bfloat16"]),
    flush_at=st.integers(0, 6),
)
@pytest.mark.slow
def test_store_round_trip_returns_exactly_what_was_written(
    sizes, chunk_rows, shard_chunks, dtype, flush_at
):
    torch_dtype = getattr(torch, dtype)
    batches = []
    for i, n in enumerate(sizes):
        b = rows_batch(n, d=5)
        b.acts["p"] = (b.acts["p"] * 3).to(torch_dtype)
        b.token_ids = b.token_ids + 100 * i
        batches.append(b)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s"
        with StoreWriter(
            path, points=["p"], dtype=dtype, chunk_rows=chunk_rows, shard_chunks=shard_chunks
        ) as w:
            for i, b in enumerate(batches):
                w.append(b)
                if i == flush_at:
                    w.flush()
        store = open_store(path)
        assert store.n_rows == sum(sizes) and store.committed_inputs == len(sizes)
        expected = torch.cat([b.acts["p"] for b in batches])
        assert torch.equal(store.read_tensor("p"), expected)
        assert torch.equal(
            torch.from_numpy(store.token_ids()), torch.cat([b.token_ids for b in batches])
        )
        assert store.verify() == []
