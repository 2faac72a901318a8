"""Measurement helpers shared by the benchmark scripts."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_kb(key: str) -> int | None:
    try:
        match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


class PeakMemory:
    """Peak memory while a block runs: CUDA allocations, or the process's peak RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.bytes = device, None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _proc_kb("VmHWM")
            self.bytes = None if peak is None else peak * 1024


def machine(device: torch.device) -> str:
    """The device, in words, and how busy the machine is (timings depend on it)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{model}, {torch.get_num_threads()} threads, load average {load_average():.1f}"


def load_average() -> float:
    """The 1-minute load average (NaN where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    """`min / median / max` of repeated measurements, each formatted with `fmt`."""
    lo, mid, hi = min(values), statistics.median(values), max(values)
    return " / ".join(fmt.format(v) for v in (lo, mid, hi))
