"""Models: each file reads top to bottom as its math (encode, sample, decode, objective)."""

from .vae import VAE

__all__ = ["VAE"]
