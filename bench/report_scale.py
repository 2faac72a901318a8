"""How big the dashboard folder is, and how fast its pages open, at 3k and 24k latents.

    PYTHONPATH=. python bench/report_scale.py            # needs /usr/bin/chromium

A TopK SAE (k = 32, d = 256) over 20,000 random rows; records the build time, the
folder size, the largest data file and Chromium's time to a drawn index / latent page.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sae_hooks.report import build_dashboard
from sae_hooks.sae import TopKSAE


def open_ms(url: str, profile: str) -> tuple[float, int]:
    """(wall seconds of headless Chromium, the page's own ms to data-ready)."""
    t = time.perf_counter()
    out = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    m = re.search(r'data-ms="(\d+)"', out)
    return time.perf_counter() - t, int(m.group(1)) if m else -1


def main() -> None:
    torch.manual_seed(0)
    rows = torch.randn(20_000, 256)
    for n in (3072, 24576):
        sae = TopKSAE(256, n, top_k=32)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            index = build_dashboard(
                sae,
                {
                    "acts": rows,
                    "doc_index": torch.arange(20_000) // 64,
                    "position": torch.arange(20_000) % 64,
                    "token_ids": torch.randint(0, 5000, (20_000,)),
                },
                Path(tmp) / "r",
                progress=False,
            )
            build = time.perf_counter() - t
            files = [p for p in index.parent.rglob("*") if p.is_file()]
            size = sum(p.stat().st_size for p in files)
            big = max(p.stat().st_size for p in files if "latents" in p.parts)
            idx = (index.parent / "data" / "index.js").stat().st_size
            wall_i, ms_i = open_ms(index.as_uri(), f"{tmp}/p")
            wall_l, ms_l = open_ms(index.parent.as_uri() + f"/latent.html?id={n - 1}", f"{tmp}/p")
            print(
                f"{n} latents: build {build:.0f} s, {len(files)} files, {size / 1e6:.1f} MB "
                f"(index.js {idx / 1e6:.2f} MB, largest chunk {big / 1e3:.0f} KB); index "
                f"drawn at {ms_i} ms ({wall_i:.1f} s wall), latent page {ms_l} ms "
                f"({wall_l:.1f} s wall)",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
