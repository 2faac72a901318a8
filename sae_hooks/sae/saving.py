"""What an SAE writes of itself and rebuilds itself from: config.json + model.safetensors,
as a mixin of the SAE class (config, save, from_config, load_weights).

Kept apart from base.py so the model class holds the maths and this one the on-disk
contract (file names, config keys, format version, tensor-name layout). Reading a
directory back (`load_sae`, the header and finite checks) is persistence.py's, which
sits above base.py and the registry.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import save_file

from .encoders import build_encoder, legacy_encoder

Self = TypeVar("Self", bound="SAEPersistence")

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


class SAEPersistence:
    """config() / save / from_config / load_weights of an SAE (mixed into `SAE`)."""

    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments plus "architecture"; enough for `load_sae`."""
        if self._encoder_name is None:
            raise ValueError(
                f"a custom encoder module ({type(self.encoder).__name__}) cannot be rebuilt "
                "from config.json; register a factory with register_encoder(name, factory) "
                "and pass encoder_module=name"
            )
        shape = self.input_shape[0] if len(self.input_shape) == 1 else list(self.input_shape)
        return {
            "architecture": self.architecture,
            "format_version": FORMAT_VERSION,
            "input_shape": shape,
            "nb_concepts": self.nb_concepts,
            "encoder_module": self._encoder_name,
            "dictionary_params": self.dictionary.config(),
            **self._variant_config(),
        }

    def _variant_config(self) -> dict[str, Any]:
        return {}

    def save(self, path: str | os.PathLike) -> Path:
        """Write `path/config.json` and `path/model.safetensors` (no pickle)."""
        config = self.config()
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path} exists and is not a directory")
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        _atomic_write(path / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, {"format": "pt"}))
        text = json.dumps(config, indent=2) + "\n"
        _atomic_write(path / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
        return path

    @classmethod
    def from_config(
        cls: type[Self], config: dict[str, Any], device: str | torch.device = "cpu"
    ) -> Self:
        """A freshly initialised SAE of the architecture and size `config` describes."""
        if not isinstance(config, dict):
            raise ValueError(f"an SAE config must be a JSON object, got {type(config).__name__}")
        config = dict(config)
        arch = config.pop("architecture", None)
        if arch != cls.architecture:
            raise ValueError(f"config architecture {arch!r} does not match {cls.__name__}")
        version = config.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise ValueError(
                f"unsupported SAE format_version {version!r}; this sae-hooks reads {FORMAT_VERSION}"
            )
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "device"}
        unknown = sorted(set(config) - accepted)
        if unknown:
            raise ValueError(
                f"unknown keys {unknown} in {arch!r} config; accepted: {sorted(accepted)}"
            )
        missing = sorted({"input_shape", "nb_concepts"} - set(config))
        if missing:
            raise ValueError(f"{arch!r} config lacks required keys {missing}")
        if isinstance(config["input_shape"], list):
            config["input_shape"] = tuple(config["input_shape"])
        return cls(**config, device=device)

    def load_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load a state dict strictly, adopting its floating dtype."""
        self._match_layout(tensors)
        weight = tensors.get("dictionary.weight")
        if weight is not None and weight.is_floating_point():
            self.to(weight.dtype)
        try:
            self.load_state_dict(tensors, strict=True)
        except RuntimeError as err:
            raise ValueError(f"weights do not fit {type(self).__name__}: {err}") from err

    def _match_layout(self, names: Iterable[str]) -> None:
        """Adopt the encoder layout the tensor names were saved with; the names must match."""
        names = set(names)
        legacy = legacy_encoder(self._encoder_name, names)
        if legacy is not None:  # an SAE saved before its encoder name changed meaning
            device = self.dictionary.weight.device
            self.encoder, self._encoder_name, self._structured = build_encoder(
                legacy, self.input_shape, self.nb_concepts, device
            )
        expected = set(self.state_dict())
        if expected != names:
            raise ValueError(
                f"weights do not match {type(self).__name__}: missing {sorted(expected - names)}, "
                f"unexpected {sorted(names - expected)}"
            )


def _atomic_write(target: Path, write) -> None:
    """Write to a temporary name, then rename: a killed save never leaves half a file."""
    tmp = target.with_name(target.name + ".tmp")
    write(str(tmp))
    os.replace(tmp, target)
