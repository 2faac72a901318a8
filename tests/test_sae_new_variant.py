"""Adding an SAE variant is one class and its registration: nothing else is edited.

`GateSAE` below is the whole variant. It declares its training through the
TrainingContract hooks (no penalty, its own Adam betas, a gate initialised from
data), and then trains through Trainer, saves, loads with load_sae and splices into
a model without any change to sae_hooks.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import sae_hooks.train
from sae_hooks.hooks import capture_batch, splice
from sae_hooks.sae import SAE, SAE_REGISTRY, load_sae
from sae_hooks.train import TensorSource, TrainConfig, read_log, train

POINT = "resid_post.1"


class GateSAE(SAE):
    """Toy variant: ReLU codes at or below one gate, set once from data, are zeroed."""

    architecture = "toy_gate"
    penalty_field = None  # sparse through the gate, no penalty
    default_adam_betas = (0.8, 0.99)

    def __init__(
        self,
        input_shape: int | tuple[int, ...],
        nb_concepts: int,
        quantile: float = 0.9,
        encoder_module: str | nn.Module | None = None,
        dictionary_params: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(input_shape, nb_concepts, encoder_module, dictionary_params, device)
        self.quantile = quantile
        self.register_buffer("gate", torch.zeros((), device=device))

    def _sparsify(self, pre: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return codes * (codes > self.gate)

    def _variant_config(self) -> dict[str, Any]:
        return {"quantile": self.quantile}

    @torch.no_grad()
    def init_from_data(self, sample: torch.Tensor, config: Any) -> None:
        _, codes = self._pre_codes(sample)
        self.gate.fill_(codes.flatten().quantile(self.quantile))


@pytest.fixture(scope="module", autouse=True)
def _unregister_after():
    yield
    SAE_REGISTRY.pop(GateSAE.architecture, None)


def test_a_variant_declared_in_one_class_trains_saves_loads_and_splices(tiny_gpt2, tmp_path):
    torch.manual_seed(0)
    ids = torch.randint(0, tiny_gpt2.config.vocab_size, (16, 32))
    rows = capture_batch(tiny_gpt2, POINT, ids).acts[POINT].float()
    d = rows.shape[1]
    config = TrainConfig(
        architecture="toy_gate",
        nb_concepts=4 * d,
        extra={"quantile": 0.95},
        steps=40,
        batch_size=64,
        lr=1e-3,
        b_dec_init="mean",
        init_rows=256,
        log_every=10,
        val_every=0,
        checkpoint_every=0,
        progress=False,
    )
    trained = train(config, TensorSource(rows), tmp_path / "run")

    assert type(trained) is GateSAE and trained.quantile == 0.95
    assert trained.gate.item() > 0  # init_from_data ran on the sample
    saved_config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved_config["adam_betas"] == [0.8, 0.99]  # the class's default, not ReLU's
    assert saved_config["aux_coefficient"] == 0.0
    log = [r for r in read_log(tmp_path / "run") if "loss" in r]
    assert not any("l1_coefficient" in r or "l0_coefficient" in r for r in log)
    assert log[-1]["fvu"] < log[0]["fvu"]
    assert 0 < log[-1]["l0"] < 0.2 * config.nb_concepts

    loaded = load_sae(tmp_path / "run" / "sae")
    assert type(loaded) is GateSAE and loaded.gate.item() == trained.gate.item()
    torch.testing.assert_close(loaded(rows).x_hat, trained(rows).x_hat)

    with torch.no_grad():
        clean = tiny_gpt2(ids).logits
        with splice(tiny_gpt2, POINT, loaded, record_latents=True) as spliced:
            edited = tiny_gpt2(ids).logits
    torch.testing.assert_close(
        spliced.latents[POINT].reshape(-1, loaded.nb_concepts), loaded.encode(rows)[1]
    )
    assert not torch.allclose(clean, edited)


def test_train_package_names_no_architecture():
    """Every variant-specific decision lives on the SAE class, none in sae_hooks/train."""
    names = {name for name in SAE_REGISTRY if name != GateSAE.architecture}
    found = []
    for path in sorted(Path(sae_hooks.train.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.name}:{node.lineno} {node.value!r}")
    assert found == []
