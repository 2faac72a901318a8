"""Deterministic, resumable sources of model inputs: token contexts and image batches."""

from sae_hooks.data.batch import InputBatch, InputBatches, as_input_batch
from sae_hooks.data.documents import Documents, as_documents
from sae_hooks.data.images import ImageBatches, image_batches
from sae_hooks.data.sources import load_texts, open_documents, pydoc_texts
from sae_hooks.data.text import TextBatches, text_batches

__all__ = [
    "Documents",
    "ImageBatches",
    "InputBatch",
    "InputBatches",
    "TextBatches",
    "as_documents",
    "as_input_batch",
    "image_batches",
    "load_texts",
    "open_documents",
    "pydoc_texts",
    "text_batches",
]
