#!/usr/bin/env python
"""gpt2_small.py through TransformerLens: the same SAE on a TransformerLens model.

Under TransformerLens 4 the model is a TransformerBridge around the local Hugging
Face GPT-2; under TransformerLens 3 a HookedTransformer with its converted weights
(sae_hooks.models.tl_from_hf picks; nothing is fetched). Same hook point, corpus, SAE and "exceptions" concept as
gpt2_small.py, so the two runs' numbers are directly comparable; hook points
may also be TransformerLens names (--point blocks.6.hook_resid_post).

  python recipes/gpt2_small_tl.py --model-dir models/gpt2
  python recipes/gpt2_small_tl.py --model-dir models/gpt2 --point blocks.6.hook_resid_post
  python recipes/gpt2_small_tl.py --tiny                          # random-init small model, seconds
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when loaded with runpy
from gpt2_small import run

from sae_hooks.recipe import print_summary, run_recipe


def main(argv: list[str] | None = None) -> None:
    print_summary(run(argv, family="tl-gpt2", name="gpt2_small_tl", doc=__doc__))


if __name__ == "__main__":
    run_recipe(main)
