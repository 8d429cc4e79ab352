"""Priors, posteriors and likelihoods: thin wrappers over torch.distributions.

Every model returns these objects, so the objectives never see a raw tensor of parameters.
Pixel likelihoods are defined on logits / means and summed over the 3 image dimensions (C, H, W);
latent distributions are summed over the last dimension. `validate_args=False` keeps the hot path
free of checks that the data pipeline already made.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Independent, Normal, register_kl


def diagonal_gaussian(loc: torch.Tensor, scale: torch.Tensor) -> Independent:
    """q(z|x) = N(loc, diag(scale^2)); loc, scale: (B, D)."""
    return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)


class UnitNormal(Normal):
    """N(0, 1) per dimension: a Normal whose KL from another Normal takes the short closed form."""


@register_kl(Normal, UnitNormal)
def _kl_normal_unit(q: Normal, p: UnitNormal) -> torch.Tensor:
    """KL(N(m, s^2) || N(0, 1)) = (m^2 + s^2 - 1) / 2 - log s, elementwise (fewer operations than the
    general Normal-Normal form, which divides by and subtracts the prior's 1 and 0)."""
    return 0.5 * (q.loc.square() + q.scale.square() - 1) - q.scale.log()


def unit_normal(zeros: torch.Tensor, ones: torch.Tensor) -> Independent:
    """p(z) = N(0, I) over (D,) on the given zeros and ones (e.g. a module's buffers: nothing allocated)."""
    return Independent(UnitNormal(zeros, ones, validate_args=False), 1, validate_args=False)


def standard_normal(latent_dim: int, device: torch.device | str = "cpu") -> Independent:
    """p(z) = N(0, I) over (D,)."""
    zeros = torch.zeros(latent_dim, device=device)
    return unit_normal(zeros, torch.ones_like(zeros))


class PixelBernoulli(Bernoulli):
    """Bernoulli(sigmoid(logits)) whose log_prob of targets shaped like the logits skips the broadcast."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if value.shape != self.logits.shape:
            return super().log_prob(value)
        return -F.binary_cross_entropy_with_logits(self.logits, value, reduction="none")


def bernoulli_likelihood(logits: torch.Tensor) -> Independent:
    """p(x|z) = prod_pixels Bernoulli(sigmoid(logits)); -log_prob is the BCE summed over pixels.

    logits: (B, C, H, W). Defined on logits for numerical stability (never sigmoid-then-BCE).
    """
    return Independent(PixelBernoulli(logits=logits, validate_args=False), 3, validate_args=False)


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
