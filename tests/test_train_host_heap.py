"""A CPU training keeps the step's freed buffers mapped: glibc would otherwise hand
them back and fault them in again every step (~10,000 faults a step at 6,144 x 768)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sae_hooks.train import TrainConfig, Trainer, host_heap

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

HOST_HEAP = Path(host_heap.__file__)

STEP = f"""
import ctypes, importlib.util, resource
spec = importlib.util.spec_from_file_location("host_heap", {str(HOST_HEAP)!r})
host_heap = importlib.util.module_from_spec(spec)
spec.loader.exec_module(host_heap)  # alone: no torch, nothing else on the heap
print(host_heap.keep_freed_memory())
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
MIB = 1 << 20
libc.free(libc.malloc(20 * MIB))  # by default glibc's thresholds grow to a freed mapping
def step():  # three 19 MiB buffers written and freed together, as a step's gradients
    blocks = [libc.malloc(19 * MIB) for _ in range(3)]
    for block in blocks:
        libc.memset(block, 1, 19 * MIB)
    for block in reversed(blocks):
        libc.free(block)
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def faults_a_step(**env: str) -> tuple[str, float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", STEP],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not GLIBC, reason="glibc's thresholds only")
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    kept, kept_faults = faults_a_step()
    assert kept == "True"
    assert kept_faults < 100  # 57 MiB a step: 14,592 pages
    left, left_faults = faults_a_step(SAE_HOOKS_HOST_HEAP="default")
    assert left == "False"
    assert left_faults > 10_000


@pytest.mark.skipif(not GLIBC, reason="glibc's thresholds only")
def test_the_users_own_malloc_settings_are_left_alone():
    assert faults_a_step(MALLOC_TRIM_THRESHOLD_="0")[0] == "False"
    assert faults_a_step(MALLOC_MMAP_THRESHOLD_="65536")[0] == "False"


def test_a_cpu_trainer_keeps_freed_memory(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(host_heap, "keep_freed_memory", lambda: calls.append(1) or True)
    config = TrainConfig(nb_concepts=32, k_per_token=4, batch_size=16, steps=2, device="cpu")
    Trainer(config, torch.randn(64, 8), tmp_path)
    assert calls == [1]
