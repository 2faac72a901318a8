"""Formats other tools read and write: SAELens directories, the Hugging Face Hub layout,
Neuronpedia exports, circuit-tracer transcoder sets, and pretrained SAEs from the Hub.

They name where an SAE reads its activations (hook points, model ids: `RunIdentity`),
so they live here, above sae/ and hooks/: a dictionary in sae/ knows no model and no
trainer.
"""

from .circuit_tracer import export_circuit_tracer
from .hub import (
    describe_pretrained,
    from_pretrained,
    is_pretrained_location,
    load_pretrained,
    load_sae,
    pretrained_metadata,
    push_to_hub,
    save_pretrained,
)
from .identity import RunIdentity, identity_from_run, identity_from_store
from .neuronpedia import export_neuronpedia
from .saelens import export_saelens, import_saelens, saelens_metadata

__all__ = [
    "RunIdentity",
    "describe_pretrained",
    "export_circuit_tracer",
    "export_neuronpedia",
    "export_saelens",
    "from_pretrained",
    "identity_from_run",
    "identity_from_store",
    "import_saelens",
    "is_pretrained_location",
    "load_pretrained",
    "load_sae",
    "pretrained_metadata",
    "push_to_hub",
    "saelens_metadata",
    "save_pretrained",
]
