"""Formats other tools read and write: SAELens directories, the Hugging Face Hub layout,
Neuronpedia exports, circuit-tracer transcoder sets.

They name where an SAE reads its activations (hook points, model ids), so they live
here, above sae/ and hooks/: a dictionary in sae/ knows no model and no trainer.
"""

from .circuit_tracer import export_circuit_tracer
from .hub import from_pretrained, pretrained_metadata, push_to_hub, save_pretrained
from .neuronpedia import export_neuronpedia
from .saelens import export_saelens, import_saelens, saelens_metadata

__all__ = [
    "export_circuit_tracer",
    "export_neuronpedia",
    "export_saelens",
    "from_pretrained",
    "import_saelens",
    "pretrained_metadata",
    "push_to_hub",
    "saelens_metadata",
    "save_pretrained",
]
