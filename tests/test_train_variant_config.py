"""Each variant owns its settings: TrainConfig.variant, the flat spellings of earlier
versions, configs and checkpoints written flat, and sae/ importing nothing from train/."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sae_hooks.run_config import check_table
from sae_hooks.sae import SAE_REGISTRY
from sae_hooks.sae import jump as jump_module
from sae_hooks.sae import topk as topk_module
from sae_hooks.sae.batchtopk import DEFAULT_THRESHOLD_MOMENTUM, BatchTopKConfig, BatchTopKSAE
from sae_hooks.sae.jump import JumpReLUConfig, JumpSAE
from sae_hooks.sae.kernels import DEFAULT_KERNEL
from sae_hooks.sae.settings import VariantConfig
from sae_hooks.sae.topk import TopKConfig
from sae_hooks.train import TensorSource, TrainConfig, Trainer, read_log
from sae_hooks.train.checkpoint import CHECKPOINT, STATE_FILE
from sae_hooks.train.variant_settings import flat_settings

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SAE_DIR = Path(__file__).resolve().parents[1] / "sae_hooks" / "sae"

# The variant settings TrainConfig held as fields before they moved into `variant`.
OLD_FLAT_FIELDS = ("top_k", "k_per_token", "threshold_momentum", "kernel", "bandwidth")
OLD_FLAT_FIELDS += ("threshold_init",)


def test_each_variant_has_its_config_class():
    assert SAE_REGISTRY["topk"].config_class is TopKConfig
    assert SAE_REGISTRY["batchtopk"].config_class is BatchTopKConfig
    assert SAE_REGISTRY["matryoshka_batchtopk"].config_class is BatchTopKConfig
    assert SAE_REGISTRY["jumprelu"].config_class is JumpReLUConfig
    assert SAE_REGISTRY["relu"].config_class is VariantConfig
    assert SAE_REGISTRY["transcoder"].config_class is VariantConfig
    assert type(TrainConfig(steps=5).variant) is BatchTopKConfig
    assert type(TrainConfig(architecture="relu", steps=5).variant) is VariantConfig


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(architecture="jumprelu", steps=7, kernel="rectangle", threshold_init=0.2),
        TrainConfig(architecture="topk", steps=7, variant=TopKConfig(k_per_token=3)),
        TrainConfig(steps=7, variant={"top_k": 640, "threshold_momentum": 0.8}),
        TrainConfig(architecture="relu", steps=7, target_l0=4.0),
    ],
)
def test_nested_config_round_trips_through_json_and_toml(config, tmp_path):
    for c in (config, config.resolve(16)):
        data = c.to_dict()
        assert isinstance(data["variant"], dict)
        assert not set(OLD_FLAT_FIELDS) & set(data)  # nested, not flat
        assert TrainConfig.from_json(c.to_json()) == c
        assert TrainConfig.from_json(c.to_json(tmp_path / "c.json")) == c
    # TOML has no null: the None settings are left out, as a run.toml would.
    table = {k: v for k, v in config.to_dict().items() if v is not None and k != "variant"}
    table["variant"] = {k: v for k, v in config.variant.to_dict().items() if v is not None}
    lines = [f"{k} = {json.dumps(v)}" for k, v in table.items() if not isinstance(v, dict)]
    lines += ["extra = {}", "[variant]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in table["variant"].items()]
    assert TrainConfig.from_dict(tomllib.loads("\n".join(lines))) == config


def test_old_flat_spellings_map_onto_the_variant():
    flat = TrainConfig(architecture="jumprelu", steps=5, kernel="rectangle", bandwidth=0.1)
    nested = TrainConfig(
        architecture="jumprelu", steps=5, variant=JumpReLUConfig(kernel="rectangle", bandwidth=0.1)
    )
    assert flat == nested and flat.kernel == "rectangle" and flat.bandwidth == 0.1
    assert TrainConfig(steps=5, top_k=64) == TrainConfig(steps=5, variant={"top_k": 64})
    assert TrainConfig.from_dict({"steps": 5, "threshold_momentum": 0.5}).variant == (
        BatchTopKConfig(threshold_momentum=0.5)
    )
    # dataclasses.replace takes them too (sweeps and train_many build configs so).
    replaced = dataclasses.replace(TrainConfig(steps=5), k_per_token=4)
    assert replaced.variant == BatchTopKConfig(k_per_token=4)
    # a read of a setting the variant does not have is None, as the flat field was unset
    assert TrainConfig(architecture="relu", steps=5).top_k is None


def test_run_toml_flat_keys_still_work(tmp_path):
    text = "[train]\narchitecture = 'jumprelu'\nsteps = 5\nkernel = 'rectangle'\nbandwidth = 0.2\n"
    table = tomllib.loads(text)["train"]
    values = check_table("run.toml [train]", table, {}, TrainConfig.field_types())
    assert TrainConfig.from_dict(values).variant == JumpReLUConfig("rectangle", 0.2)


def test_a_setting_of_another_variant_is_ignored_a_budget_refused():
    # as before: JumpReLU's kernel on a BatchTopK run is checked, then ignored
    assert TrainConfig(steps=5, kernel="rectangle").variant == BatchTopKConfig()
    with pytest.raises(ValueError, match="kernel must be one of"):
        TrainConfig(steps=5, kernel="box")
    with pytest.raises(ValueError, match=r"top_k / k_per_token apply to .*use l1_coefficient"):
        TrainConfig(architecture="relu", steps=5, top_k=4)
    # the nested form is strict: a key the variant does not take names the valid ones
    with pytest.raises(ValueError, match=r"unknown BatchTopKConfig keys \['kernel'\]"):
        TrainConfig(steps=5, variant={"kernel": "rectangle"})


def test_replace_onto_another_architecture_keeps_only_what_was_set():
    base = TrainConfig(steps=5, variant=BatchTopKConfig(k_per_token=4, threshold_momentum=0.8))
    topk = dataclasses.replace(base, architecture="topk")
    assert topk.variant == TopKConfig(k_per_token=4)
    jump = dataclasses.replace(base, architecture="jumprelu", k_per_token=None)
    assert jump.variant == JumpReLUConfig()
    with pytest.raises(ValueError, match="top_k / k_per_token apply to"):
        dataclasses.replace(base, architecture="jumprelu")


def test_each_default_has_one_owner(monkeypatch):
    """JumpReLU's bandwidth: DEFAULT_BANDWIDTH (jump.py) at E||x||^2 = 1, which the SAE's
    constructor takes as is and JumpReLUConfig scales by sqrt(d) for the trainer's
    E||x||^2 = d; the top-k budget's default: topk.py's DEFAULT_K_PER_TOKEN."""
    jump = TrainConfig(architecture="jumprelu", steps=5).resolve(64)
    assert jump.variant.bandwidth == 0.001 * math.sqrt(64)  # the value earlier versions set
    monkeypatch.setattr(jump_module, "DEFAULT_BANDWIDTH", 0.5)
    assert TrainConfig(architecture="jumprelu", steps=5).resolve(64).bandwidth == 0.5 * 8
    assert JumpSAE(8, 16).bandwidth == 0.5
    monkeypatch.setattr(topk_module, "DEFAULT_K_PER_TOKEN", 3)
    assert TrainConfig(architecture="topk", steps=5).resolve(16).top_k == 3
    momentum = inspect.signature(BatchTopKSAE).parameters["threshold_momentum"].default
    assert BatchTopKConfig().threshold_momentum == momentum == DEFAULT_THRESHOLD_MOMENTUM
    kernel = inspect.signature(JumpSAE).parameters["kernel"].default
    assert JumpReLUConfig().kernel == kernel == DEFAULT_KERNEL


def test_sae_imports_nothing_from_train():
    """sae/ is below train/: not even a TYPE_CHECKING import of TrainConfig."""
    found = []
    for path in sorted(SAE_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.ImportFrom) and node.level >= 2:
                names = [f"sae_hooks.{node.module or ''}"]  # from ..train import ...
            found += [f"{path.name}: {n}" for n in names if n.startswith("sae_hooks.train")]
    assert not found


# --------------------------------------------------------------- configs saved flat


def _flat(config: dict) -> dict:
    """A config dict in the layout earlier versions wrote: every variant field at the
    top level (those of other variants at their old defaults)."""
    old = {"top_k": None, "k_per_token": None, "threshold_momentum": 0.9}
    old |= {"kernel": "silverman", "bandwidth": None, "threshold_init": None}
    return {**{k: v for k, v in config.items() if k != "variant"}, **old, **config["variant"]}


def _config(**overrides) -> TrainConfig:
    base = dict(nb_concepts=32, k_per_token=2, batch_size=32, steps=12, lr=5e-3)
    base |= dict(log_every=2, val_every=0, checkpoint_every=6, progress=False)
    return TrainConfig(**{**base, **overrides})


def test_flat_settings_reads_both_layouts():
    config = _config().resolve(8).to_dict()
    assert flat_settings(config)["top_k"] == 64 == flat_settings(_flat(config))["top_k"]
    assert TrainConfig.from_dict(_flat(config)).to_dict() == config


@pytest.mark.parametrize("architecture", ["batchtopk", "jumprelu"])
def test_a_checkpoint_with_a_flat_config_resumes_exactly(architecture, tmp_path):
    rows = torch.randn(1024, 8, generator=torch.Generator().manual_seed(0))
    budget = {"k_per_token": None, "target_l0": 2.0} if architecture == "jumprelu" else {}
    config = _config(architecture=architecture, **budget)
    Trainer(config, TensorSource(rows), tmp_path / "whole").fit()
    Trainer(config, TensorSource(rows), tmp_path / "part").fit(until_step=6)
    state_file = tmp_path / "part" / CHECKPOINT / STATE_FILE
    state = json.loads(state_file.read_text())
    state["config"] = _flat(state["config"])  # as earlier versions saved it
    state_file.write_text(json.dumps(state))
    config_file = tmp_path / "part" / "config.json"
    config_file.write_text(json.dumps(_flat(json.loads(config_file.read_text()))))
    resumed = Trainer(config, TensorSource(rows), tmp_path / "part")
    assert resumed.step == 6
    resumed.fit()
    whole, part = read_log(tmp_path / "whole"), read_log(tmp_path / "part")
    key = ("loss", "fvu", "l0")
    assert [[r.get(k) for k in key] for r in whole if "loss" in r] == [
        [r.get(k) for k in key] for r in part if "loss" in r
    ]
    whole_sae = load_file(tmp_path / "whole" / CHECKPOINT / "sae.safetensors")
    part_sae = load_file(tmp_path / "part" / CHECKPOINT / "sae.safetensors")
    assert all(torch.equal(whole_sae[k], part_sae[k]) for k in whole_sae)


def test_the_trainer_state_is_the_state_dicts_of_its_parts(tmp_path):
    rows = torch.randn(512, 8, generator=torch.Generator().manual_seed(1))
    trainer = Trainer(_config(steps=4, checkpoint_every=0), TensorSource(rows), tmp_path)
    trainer.fit()
    state = trainer.state_dict()
    assert set(state["parts"]) == {"dead", "coefficient", "window"}
    assert torch.equal(state["parts"]["dead"]["since_fired"], trainer.dead.since_fired)
    again = Trainer(_config(steps=4, checkpoint_every=0), TensorSource(rows), tmp_path)
    loaded = again.state_dict()
    assert loaded["step"] == 4 and loaded["config"] == state["config"]
    for part, values in state["parts"].items():
        for key, value in values.items():
            other = loaded["parts"][part][key]
            assert torch.equal(other, value) if isinstance(value, torch.Tensor) else other == value
