"""The Hub functions under their first import path, `from sae_hooks.hub import
from_pretrained`, which model cards pushed by earlier versions show; they live in
sae_hooks.interop.hub."""

from sae_hooks.interop.hub import (
    METADATA_FILE,
    describe_pretrained,
    from_pretrained,
    load_pretrained,
    load_sae,
    pretrained_metadata,
    push_to_hub,
    save_pretrained,
)

__all__ = [
    "METADATA_FILE",
    "describe_pretrained",
    "from_pretrained",
    "load_pretrained",
    "load_sae",
    "pretrained_metadata",
    "push_to_hub",
    "save_pretrained",
]
