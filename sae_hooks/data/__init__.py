"""Deterministic, resumable sources of model inputs: token contexts and image batches."""

from sae_hooks.data.batch import InputBatch, InputBatches, as_input_batch
from sae_hooks.data.images import ImageBatches, image_batches
from sae_hooks.data.text import TextBatches, load_texts, pydoc_texts, text_batches

__all__ = [
    "ImageBatches",
    "InputBatch",
    "InputBatches",
    "TextBatches",
    "as_input_batch",
    "image_batches",
    "load_texts",
    "pydoc_texts",
    "text_batches",
]
