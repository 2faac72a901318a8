"""Bad input to training, SAE loading, checkpoints and SAE forwards: one typed error each.

Each parametrised case is one row of docs/reliability.md ("Training, SAEs and the
command line"): the input, the error type and a phrase of its message. No case may
reach an allocator, a pickle loader or a traceback from deep inside.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import struct
import zipfile

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_hooks.devices import DeviceUnavailableError, available_device
from sae_hooks.eval import token_logprob
from sae_hooks.sae import SAE, BatchTopKSAE, JumpSAE, TopKSAE, load_sae
from sae_hooks.train import TensorSource, TrainConfig, Trainer, train

# ------------------------------------------------------------------ TrainConfig values

BASE = {"steps": 4}


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"architecture": "gated"}, ValueError, "architecture must be one of"),
        ({"architecture": 5}, ValueError, "architecture must be one of"),
        ({"architecture": "jumprelu", "kernel": "gauss"}, ValueError, "kernel must be one of"),
        ({"b_dec_init": "median"}, ValueError, "b_dec_init must be one of"),
        ({"dtype": "int8"}, ValueError, "dtype must be one of"),
        ({"dtype": torch.float32}, ValueError, "dtype must be one of"),
        ({"point": ""}, ValueError, "point must be a non-empty hook-point name"),
        ({"point": 5}, ValueError, "point must be a non-empty hook-point name"),
        ({"nb_concepts": 0}, ValueError, "nb_concepts must be an int >= 1"),
        ({"nb_concepts": 2.5}, ValueError, "nb_concepts must be an int >= 1"),
        ({"nb_concepts": True}, ValueError, "nb_concepts must be an int >= 1"),
        ({"nb_concepts": "16"}, ValueError, "nb_concepts must be an int >= 1"),
        ({"expansion_factor": 0}, ValueError, "expansion_factor must be an int >= 1"),
        ({"architecture": "topk", "k_per_token": 0}, ValueError, "k_per_token must be"),
        ({"architecture": "topk", "top_k": -1}, ValueError, "top_k must be an int >= 1"),
        ({"steps": 0}, ValueError, "steps must be an int >= 1"),
        ({"steps": "10"}, ValueError, "steps must be an int >= 1"),
        ({"steps": None, "total_tokens": 0}, ValueError, "total_tokens must be"),
        ({"steps": None}, ValueError, "give the run length"),
        ({"total_tokens": 100}, ValueError, "disagree at batch_size"),
        ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1"),
        ({"batch_size": 1.5}, ValueError, "batch_size must be an int >= 1"),
        ({"log_every": 0}, ValueError, "log_every must be an int >= 1"),
        ({"val_batches": 0}, ValueError, "val_batches must be an int >= 1"),
        ({"init_rows": 0}, ValueError, "init_rows must be an int >= 1"),
        ({"warmup_steps": -1}, ValueError, "warmup_steps must be an int >= 0"),
        ({"val_every": -5}, ValueError, "val_every must be an int >= 0"),
        ({"checkpoint_every": -1}, ValueError, "checkpoint_every must be an int >= 0"),
        ({"seed": -1}, ValueError, "seed must be an int >= 0"),
        ({"lr": 0.0}, ValueError, r"lr must be a number in \(0"),
        ({"lr": math.nan}, ValueError, "lr must be a number"),
        ({"lr": "1e-3"}, ValueError, "lr must be a number"),
        ({"architecture": "jumprelu", "bandwidth": -1.0}, ValueError, "bandwidth must be"),
        ({"architecture": "jumprelu", "threshold_init": 0.0}, ValueError, "threshold_init must"),
        ({"architecture": "jumprelu", "target_l0": -3.0}, ValueError, "target_l0 must be"),
        ({"warmup_fraction": 1.5}, ValueError, "warmup_fraction must be a number in"),
        ({"decay_fraction": -0.1}, ValueError, "decay_fraction must be a number in"),
        ({"sparsity_warmup_fraction": math.nan}, ValueError, "sparsity_warmup_fraction"),
        ({"warmup_fraction": 0.6, "decay_fraction": 0.6}, ValueError, "must be <= 1"),
        ({"grad_clip": 0.0}, ValueError, "grad_clip must be a number"),
        ({"grad_clip": math.inf}, ValueError, "grad_clip must be a number"),
        ({"adam_eps": 0.0}, ValueError, "adam_eps must be a number"),
        ({"adam_betas": (0.9,)}, ValueError, "adam_betas must be two floats"),
        ({"adam_betas": (1.0, 0.9)}, ValueError, "adam_betas must be two floats"),
        (
            {"architecture": "batchtopk", "threshold_momentum": 1.0},
            ValueError,
            "threshold_momentum must be",
        ),
        ({"architecture": "jumprelu", "l0_coefficient": -1.0}, ValueError, "l0_coefficient"),
        ({"l1_coefficient": math.inf}, ValueError, "l1_coefficient must be a number"),
        ({"aux_coefficient": -1.0}, ValueError, "aux_coefficient must be a number"),
        ({"aux_k": 0}, ValueError, "aux_k must be an int >= 1"),
        ({"dead_tokens": 0}, ValueError, "dead_tokens must be an int >= 1"),
        ({"normalize_activations": "yes"}, TypeError, "normalize_activations must be a bool"),
        ({"progress": 1}, TypeError, "progress must be a bool"),
        ({"compile": None}, TypeError, "compile must be a bool"),
        ({"autocast": "on"}, TypeError, "autocast must be True, False or None"),
        ({"device": ""}, ValueError, "device must be a device string"),
        ({"device": 0}, ValueError, "device must be a device string"),
        ({"wandb_project": 5}, TypeError, "wandb_project must be a str or None"),
        ({"architecture": "relu", "top_k": 4}, ValueError, r"top_k / k_per_token apply to"),
        ({"architecture": "topk", "target_l0": 8.0}, ValueError, "target_l0 applies to"),
        (
            {"architecture": "topk", "top_k": 3, "k_per_token": 2},
            ValueError,
            "top_k=3 and k_per_token=2 disagree",
        ),
        # extra: constructor arguments of the SAE class, nothing else
        ({"extra": []}, TypeError, "extra must be a dict of SAE constructor arguments"),
        (
            {"architecture": "relu", "extra": {"evil": 1}},
            ValueError,
            r"extra has \['evil'\], which SAE \('relu'\)",
        ),
        (
            {"architecture": "topk", "extra": {"evil": 1}},
            ValueError,
            r"valid extra keys: \['dictionary_params', 'encoder_module'\]",
        ),
        (
            {"architecture": "jumprelu", "extra": {"bandwith_": 1}},
            ValueError,
            "JumpSAE",
        ),
        ({"architecture": "topk", "extra": {"top_k": 4}}, ValueError, r"extra sets \['top_k'\]"),
        ({"extra": {"nb_concepts": 4}}, ValueError, r"extra sets \['nb_concepts'\]"),
        ({"extra": {"device": "cpu"}}, ValueError, r"extra sets \['device'\]"),
        ({"extra": {"input_shape": 8}}, ValueError, r"extra sets \['input_shape'\]"),
        ({"architecture": "jumprelu", "extra": {"kernel": "x"}}, ValueError, "extra sets"),
        (
            {"architecture": "batchtopk", "extra": {"threshold_momentum": 0.5}},
            ValueError,
            r"extra sets \['threshold_momentum'\]",
        ),
    ],
)
def test_train_config_refuses_bad_values(fields, error, match):
    with pytest.raises(error, match=match):
        TrainConfig(**{**BASE, **fields})


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        ([("steps", 4)], TypeError, "expects a dict, got list"),
        ({"steps": 4, "not_a_field": 1}, ValueError, r"unknown TrainConfig keys \['not_a_field'\]"),
        ('{"steps": 4, "evil": 1}', ValueError, r"unknown TrainConfig keys \['evil'\]"),
    ],
    ids=["not-a-dict", "unknown-key", "unknown-key-json"],
)
def test_train_config_files_refuse_unknown_keys(data, error, match):
    with pytest.raises(error, match=match):
        TrainConfig.from_json(data) if isinstance(data, str) else TrainConfig.from_dict(data)


# ------------------------------------------------------------------ devices


@pytest.mark.parametrize(
    ("device", "cuda", "count", "match"),
    [
        ("cuda", False, 0, r"'cuda' is not available: this torch .* (built without CUDA|no GPU)"),
        ("cuda:0", False, 0, r"'cuda:0' is not available"),
        ("cuda:3", True, 1, r"has 1 GPU\(s\), cuda:0..cuda:0"),
        ("gpu", True, 1, r"'gpu' is not a torch device"),
        ("cuda:x", True, 1, r"'cuda:x' is not a torch device"),
    ],
)
def test_unavailable_devices_are_refused_up_front(device, cuda, count, match, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    with pytest.raises(DeviceUnavailableError, match=match):
        available_device(device)
    assert issubclass(DeviceUnavailableError, ValueError)  # the CLI's exit 2


def test_training_on_cuda_without_cuda_fails_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = TrainConfig(
        architecture="relu", nb_concepts=16, batch_size=16, steps=2, device="cuda", progress=False
    )
    with pytest.raises(DeviceUnavailableError, match="use --device cpu"):
        Trainer(config, TensorSource(torch.randn(64, 8)), tmp_path / "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_an_unallocatable_sae_is_a_clear_error(tmp_path):
    config = TrainConfig(
        architecture="relu", nb_concepts=10**12, batch_size=16, steps=2, progress=False
    )
    with pytest.raises(ValueError, match=r"nb_concepts=1000000000000 .* cannot be allocated"):
        Trainer(config, TensorSource(torch.randn(64, 8)), tmp_path)


# ------------------------------------------------------------------ load_sae


def saved(tmp_path, sae=None):
    torch.manual_seed(0)
    sae = sae if sae is not None else TopKSAE(8, 32, top_k=4)
    return sae.save(tmp_path / "sae")


def edit_tensors(path, edit):
    weights = path / "model.safetensors"
    tensors = load_file(weights)
    edit(tensors)
    save_file(tensors, str(weights), {"format": "pt"})


def edit_config(path, edit):
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))


def poke(name, value):
    def edit(tensors):
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = value

    return edit


def torch_save_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": 1}))
    return buffer.getvalue()


def lying_header(path):
    header = json.dumps(
        {"dictionary.weight": {"dtype": "F32", "shape": [10**12, 8], "data_offsets": [0, 32]}}
    ).encode()
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 32)


LOAD_CASES = {
    # weights file
    "int32-weights": (
        lambda p: edit_tensors(
            p, lambda t: t.update({"dictionary.weight": t["dictionary.weight"].int()})
        ),
        r"stores dictionary.weight \(I32\); SAE weights must be floating point",
    ),
    "bool-bias": (
        lambda p: edit_tensors(p, lambda t: t.update({"encoder.bias": t["encoder.bias"] > 0})),
        r"stores encoder.bias \(BOOL\)",
    ),
    "nan-weight": (
        lambda p: edit_tensors(p, poke("dictionary.weight", math.nan)),
        r"NaN or infinite values in dictionary.weight \(1 of 256\)",
    ),
    "inf-bias": (
        lambda p: edit_tensors(p, poke("encoder.bias", math.inf)),
        r"NaN or infinite values in encoder.bias",
    ),
    "nan-input-scale": (
        lambda p: edit_tensors(p, poke("input_scale", math.nan)),
        r"NaN or infinite values in input_scale",
    ),
    "pickle": (
        lambda p: (p / "model.safetensors").write_bytes(pickle.dumps({"w": 1})),
        r"model.safetensors is not a safetensors file \(it looks like a pickle\)",
    ),
    "torch-save-zip": (
        lambda p: (p / "model.safetensors").write_bytes(torch_save_bytes()),
        r"not a safetensors file \(it looks like a torch.save zip archive",
    ),
    "empty-file": (
        lambda p: (p / "model.safetensors").write_bytes(b""),
        "not a readable safetensors file",
    ),
    "truncated": (
        lambda p: (p / "model.safetensors").write_bytes(
            (p / "model.safetensors").read_bytes()[:-100]
        ),
        "not a readable safetensors file",
    ),
    "garbage": (
        lambda p: (p / "model.safetensors").write_bytes(b"\x01" * 64),
        "not a readable safetensors file",
    ),
    "header-larger-than-file": (lying_header, "not a readable safetensors file"),
    "missing-weights": (
        lambda p: (p / "model.safetensors").unlink(),
        "missing weights file",
    ),
    "extra-tensor": (
        lambda p: edit_tensors(p, lambda t: t.update({"evil": torch.zeros(2)})),
        r"unexpected \['evil'\]",
    ),
    "missing-tensor": (
        lambda p: edit_tensors(p, lambda t: t.pop("encoder.bias")),
        r"missing \['encoder.bias'\]",
    ),
    "transposed-weight": (
        lambda p: edit_tensors(
            p, lambda t: t.update({"dictionary.weight": t["dictionary.weight"].T.contiguous()})
        ),
        r"dictionary.weight is \[8, 32\] in the file, \[32, 8\] by the config",
    ),
    # config.json
    "config-not-json": (
        lambda p: (p / "config.json").write_text("{nope"),
        r"config.json is not valid JSON",
    ),
    "config-not-utf8": (
        lambda p: (p / "config.json").write_bytes(b"\xff\xfe{}"),
        r"config.json is not valid JSON",
    ),
    "config-a-list": (
        lambda p: (p / "config.json").write_text("[1, 2]"),
        r"config.json must hold a JSON object",
    ),
    "config-nb-concepts-1e12": (
        lambda p: edit_config(p, lambda c: c.update(nb_concepts=10**12)),
        r"\[1000000000000, 8\] by the config",
    ),
    "config-nb-concepts-string": (
        lambda p: edit_config(p, lambda c: c.update(nb_concepts="32")),
        "nb_concepts",
    ),
    "config-input-shape-0": (
        lambda p: edit_config(p, lambda c: c.update(input_shape=0)),
        "input_shape must be a positive int",
    ),
    "config-wider-input": (
        lambda p: edit_config(p, lambda c: c.update(input_shape=9)),
        r"encoder.weight is \[32, 8\] in the file, \[32, 9\] by the config",
    ),
    "config-top-k-too-big": (
        lambda p: edit_config(p, lambda c: c.update(top_k=99)),
        "top_k",
    ),
    "config-unknown-architecture": (
        lambda p: edit_config(p, lambda c: c.update(architecture="gated")),
        r"unknown SAE architecture 'gated'",
    ),
    "config-evil-key": (
        lambda p: edit_config(p, lambda c: c.update(evil=1)),
        r"unknown keys \['evil'\]",
    ),
    "config-missing": (
        lambda p: (p / "config.json").unlink(),
        "has no config.json",
    ),
}


@pytest.mark.parametrize("case", list(LOAD_CASES))
def test_load_sae_refuses_bad_files(case, tmp_path):
    damage, match = LOAD_CASES[case]
    path = saved(tmp_path)
    damage(path)
    error = FileNotFoundError if case.endswith("missing") else ValueError
    if case == "missing-weights":
        error = FileNotFoundError
    with pytest.raises(error, match=match):
        load_sae(path)


@pytest.mark.parametrize(
    ("sae", "tensor"),
    [
        (lambda: _trained_batchtopk(), "threshold_ema"),
        (lambda: JumpSAE(8, 32), "log_threshold"),
    ],
    ids=["batchtopk-threshold", "jumprelu-threshold"],
)
def test_load_sae_refuses_nan_thresholds(sae, tensor, tmp_path):
    path = saved(tmp_path, sae())
    edit_tensors(path, poke(tensor, math.nan))
    with pytest.raises(ValueError, match=rf"NaN or infinite values in {tensor}"):
        load_sae(path)


def _trained_batchtopk() -> BatchTopKSAE:
    sae = BatchTopKSAE(8, 32, top_k=16)
    sae.train()(torch.randn(8, 8))  # one train-mode forward sets the running threshold
    return sae


def test_a_huge_config_fails_from_the_header_without_allocating(tmp_path, monkeypatch):
    """nb_concepts = 20M on a 32-latent SAE: the header contradicts it before any tensor exists
    (a real one would be 640 MB per matrix; the SAE is built on the meta device first)."""
    path = saved(tmp_path)
    edit_config(path, lambda c: c.update(nb_concepts=20_000_000))
    real_empty = torch.empty

    def no_real_tensors(*args, **kwargs):  # only the meta skeleton may be built
        assert str(kwargs.get("device", "")) == "meta", (args, kwargs)
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", no_real_tensors)
    with pytest.raises(ValueError, match="by the config"):
        load_sae(path)


# ------------------------------------------------------------------ checkpoints on resume

RUN = {
    "architecture": "topk",
    "nb_concepts": 16,
    "k_per_token": 2,
    "batch_size": 16,
    "steps": 4,
    "log_every": 2,
    "val_every": 0,
    "checkpoint_every": 2,
    "init_rows": 32,
    "progress": False,
}


def rows() -> torch.Tensor:
    return torch.randn(256, 8, generator=torch.Generator().manual_seed(0))


def edit_state(edit):
    def damage(ckpt):
        state = json.loads((ckpt / "state.json").read_text())
        edit(state)
        (ckpt / "state.json").write_text(json.dumps(state))

    return damage


CHECKPOINT_CASES = {
    "state-not-json": (lambda c: (c / "state.json").write_text("{torn"), "state.json is not valid"),
    "state-not-utf8": (lambda c: (c / "state.json").write_bytes(b"\xff\x00"), "is not valid JSON"),
    "state-a-list": (lambda c: (c / "state.json").write_text("[]"), "is not a checkpoint state"),
    "state-no-step": (edit_state(lambda s: s.pop("step")), r"step \(int\)"),
    "state-step-string": (edit_state(lambda s: s.update(step="2")), "is not a checkpoint state"),
    "state-step-beyond": (
        edit_state(lambda s: s.update(step=10**9)),
        r"at step 1000000000, outside this run's 0..4 steps",
    ),
    "state-step-negative": (edit_state(lambda s: s.update(step=-1)), "outside this run's"),
    "state-config-garbled": (
        edit_state(lambda s: s["config"].update(evil=1)),
        r"holds an invalid training config: unknown TrainConfig keys \['evil'\]",
    ),
    "sae-pickle": (
        lambda c: (c / "sae.safetensors").write_bytes(pickle.dumps([1])),
        r"sae.safetensors is not a safetensors file \(it looks like a pickle\)",
    ),
    "optimizer-torch-save": (
        lambda c: (c / "optimizer.safetensors").write_bytes(torch_save_bytes()),
        r"optimizer.safetensors is not a safetensors file \(it looks like a torch.save",
    ),
    "tensors-truncated": (
        lambda c: (c / "tensors.safetensors").write_bytes(
            (c / "tensors.safetensors").read_bytes()[:50]
        ),
        r"tensors.safetensors is not a readable safetensors file",
    ),
    "sae-wrong-shapes": (
        lambda c: save_file({"x": torch.zeros(2)}, str(c / "sae.safetensors")),
        "sae.safetensors does not fit the configured SAE",
    ),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_resume_refuses_a_damaged_checkpoint_naming_the_file(case, tmp_path):
    config = TrainConfig(**RUN)
    Trainer(config, TensorSource(rows()), tmp_path).fit(until_step=2)
    damage, match = CHECKPOINT_CASES[case]
    damage(tmp_path / "checkpoint")
    with pytest.raises(ValueError, match=match):
        train(config, TensorSource(rows()), tmp_path)


# ------------------------------------------------------------------ SAE forward, ablation targets


@pytest.mark.parametrize(
    ("sae", "x", "match"),
    [
        (lambda: SAE(8, 16), torch.full((3, 8), math.nan), "24 NaN or infinite"),
        (lambda: TopKSAE(8, 16, top_k=2), torch.tensor([[math.inf] + [0.0] * 7]), "1 NaN"),
        (
            lambda: JumpSAE(8, 16),
            torch.randn(2, 5, 8).index_fill_(1, torch.tensor([2]), math.nan),
            "16 NaN",
        ),
        (lambda: _trained_batchtopk().eval(), torch.full((1, 8), -math.inf), "8 NaN"),
    ],
    ids=["relu-nan", "topk-inf", "jumprelu-seq-nan", "batchtopk-eval-neginf"],
)
def test_check_finite_refuses_nonfinite_rows(sae, x, match):
    model = sae()
    model.check_finite = True
    with pytest.raises(ValueError, match=match):
        model(x)
    model.check_finite = False  # off (the default): no check, no host sync
    model(x)


@pytest.mark.parametrize("token", [512, 99999, -1])
def test_token_target_outside_the_vocabulary_is_named(token):
    with pytest.raises(ValueError, match=r"output has 512 values per position \(0..511\)"):
        token_logprob(token)(torch.zeros(2, 5, 512), {})
