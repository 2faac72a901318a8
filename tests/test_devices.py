"""Where tensors go: a model's device, input dicts moved there, an SAE's device and dtype."""

from __future__ import annotations

import torch
from torch import nn

from sae_hooks.devices import model_device, sae_device_dtype, to_device
from sae_hooks.eval import ConstantReconstruction


def test_model_device_is_that_of_the_first_parameter():
    assert model_device(nn.Linear(2, 2, device="meta")) == torch.device("meta")
    assert model_device(nn.ReLU()) == torch.device("cpu")  # no parameters
    assert model_device(object()) == torch.device("cpu")  # not even a module


def test_to_device_moves_tensors_only():
    inputs = {"input_ids": torch.ones(2, 3, dtype=torch.long), "doc_offset": 7}
    moved = to_device(inputs, "meta")
    assert moved["input_ids"].device == torch.device("meta") and moved["doc_offset"] == 7
    assert inputs["input_ids"].device == torch.device("cpu")  # a copy, the input is untouched


def test_sae_device_dtype():
    like = torch.zeros(1, dtype=torch.bfloat16)
    assert sae_device_dtype(nn.Linear(2, 2).double(), like) == (torch.device("cpu"), torch.float64)
    buffer_only = ConstantReconstruction(torch.zeros(4)).to("meta")
    assert sae_device_dtype(buffer_only) == (torch.device("meta"), torch.float32)
    assert sae_device_dtype(nn.ReLU(), like) == (torch.device("cpu"), torch.bfloat16)
    assert sae_device_dtype(object(), like) == (torch.device("cpu"), torch.bfloat16)
    assert sae_device_dtype(nn.ReLU()) == (torch.device("cpu"), torch.float32)
