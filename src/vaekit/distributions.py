"""Priors, posteriors and likelihoods: thin wrappers over torch.distributions.

Every model returns these objects, so the objectives never see a raw tensor of parameters.
Pixel likelihoods are defined on logits / means and summed over the 3 image dimensions (C, H, W);
latent distributions are summed over the last dimension. `validate_args=False` keeps the hot path
free of checks that the data pipeline already made.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Bernoulli, Independent, Normal


def diagonal_gaussian(loc: torch.Tensor, scale: torch.Tensor) -> Independent:
    """q(z|x) = N(loc, diag(scale^2)); loc, scale: (B, D)."""
    return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)


def standard_normal(latent_dim: int, device: torch.device | str = "cpu") -> Independent:
    """p(z) = N(0, I) over (D,)."""
    zeros = torch.zeros(latent_dim, device=device)
    return Independent(Normal(zeros, torch.ones_like(zeros), validate_args=False), 1, validate_args=False)


def bernoulli_likelihood(logits: torch.Tensor) -> Independent:
    """p(x|z) = prod_pixels Bernoulli(sigmoid(logits)); -log_prob is the BCE summed over pixels.

    logits: (B, C, H, W). Defined on logits for numerical stability (never sigmoid-then-BCE).
    """
    return Independent(Bernoulli(logits=logits, validate_args=False), 3, validate_args=False)


def gaussian_likelihood(loc: torch.Tensor, sigma: float) -> Independent:
    """p(x|z) = N(loc, sigma^2 I); -log_prob = ||x - loc||^2 / (2 sigma^2) + (D/2) log(2 pi sigma^2)."""
    return Independent(Normal(loc, torch.full_like(loc, sigma), validate_args=False), 3, validate_args=False)


def pixel_likelihood(out: torch.Tensor, kind: str, sigma: float) -> Independent:
    """p(x|z) from the decoder's output: Bernoulli logits (kind "bernoulli") or Gaussian means."""
    return bernoulli_likelihood(out) if kind == "bernoulli" else gaussian_likelihood(out, sigma)


def gaussian_nll_constant(num_pixels: int, sigma: float) -> float:
    """The data-independent part of -log N(x; loc, sigma^2 I): (D/2) log(2 pi sigma^2)."""
    return 0.5 * num_pixels * math.log(2 * math.pi * sigma**2)


def likelihood_mean(likelihood: Independent) -> torch.Tensor:
    """E[x|z] as an image in [0,1] (the Bernoulli probabilities or the Gaussian mean, clamped)."""
    return likelihood.base_dist.mean.clamp(0, 1)
