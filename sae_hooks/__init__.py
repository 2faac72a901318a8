"""sae-hooks: capture transformer activations, train sparse autoencoders, splice them back."""

__version__ = "0.1.0"
