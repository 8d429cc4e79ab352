"""Priors, posteriors and likelihoods: thin wrappers over torch.distributions.

Every model returns these objects, so the objectives never see a raw tensor of parameters.
Pixel likelihoods are defined on logits / means and summed over the 3 image dimensions (C, H, W);
latent distributions are summed over the last dimension. `validate_args=False` keeps the hot path
free of checks that the data pipeline already made.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, MixtureSameFamily, Normal, register_kl


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


def normal_kl(q: Normal, p: Normal) -> torch.Tensor:
    """KL(q || p) elementwise between two Normals: the closed form that torch's KL registry holds for
    their types, chosen here by isinstance. torch's `kl_divergence` picks it by a min over a generator,
    which torch.compile cannot trace: every compiled training step broke in two at the KL."""
    if isinstance(p, UnitNormal):
        return _kl_normal_unit(q, p)
    var_ratio = (q.scale / p.scale).square()
    return 0.5 * (var_ratio + ((q.loc - p.loc) / p.scale).square() - 1 - var_ratio.log())


# The (posterior, prior) pairs of per-dimension distributions whose KL has a closed form here, declared:
# any other pair (a Laplace posterior, a mixture prior) gets no closed form and the objectives use the
# sample estimate log q(z|x) - log p(z). Chosen by isinstance, which torch.compile traces.
CLOSED_FORM_KL: tuple[tuple[type, type, Callable[..., torch.Tensor]], ...] = ((Normal, Normal, normal_kl),)


def kl_per_dim(posterior: Distribution, prior: Distribution) -> torch.Tensor | None:
    """KL(q || p) per latent dimension, (..., D), for two Independent distributions over (D,) whose base
    distributions are a declared pair of CLOSED_FORM_KL; None for any other pair."""
    if not (isinstance(posterior, Independent) and isinstance(prior, Independent)):
        return None
    for q_type, p_type, kl in CLOSED_FORM_KL:
        if isinstance(posterior.base_dist, q_type) and isinstance(prior.base_dist, p_type):
            return kl(posterior.base_dist, prior.base_dist)
    return None


class DiagonalGaussianMixture(MixtureSameFamily):
    """p(z) = sum_k pi_k N(z; m_k, diag(s_k^2)) over (D,), whose log-density is one matrix product.

    Each component's log-joint is linear in the features (z^2, z, 1):

        log pi_k N(z; m_k, s_k) = -1/2 z^2 . (1/s_k^2) + z . (m_k/s_k^2)
                                  + [log pi_k - sum_d (log s_kd + m_kd^2 / (2 s_kd^2)) - (D/2) log 2 pi],

    so all N x K of them are one (N, 2D+1) @ (2D+1, K) GEMM, and torch's MixtureSameFamily.log_prob's
    broadcast (N, K, D) tensor (12x the time of a Fashion-MNIST decoder pass at K = 500) is never built.
    The expansion subtracts large numbers when |z| >> s (its terms grow as |z|^2 / s^2 while their sum,
    the squared distance, may be small), so the product is taken in float64 (float32 on Apple's MPS,
    which has no float64), and the result rounded to z's dtype.
    """

    def __init__(self, logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor):
        """logits: (K,) mixture weights; loc, scale: (K, D) the components' means and standard deviations."""
        super().__init__(Categorical(logits=logits, validate_args=False), diagonal_gaussian(loc, scale),
                         validate_args=False)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) for z: (..., D); returns (...)."""
        normal = self.component_distribution.base_dist
        wide = torch.float32 if z.device.type == "mps" else torch.float64
        loc, scale = normal.loc.to(wide), normal.scale.to(wide)  # (K, D)
        precision = scale.pow(-2)
        log_pi = torch.log_softmax(self.mixture_distribution.logits.to(wide), -1)  # (K,)
        constant = (log_pi - (scale.log() + 0.5 * loc.square() * precision).sum(-1)
                    - 0.5 * z.shape[-1] * math.log(2 * math.pi))
        weights = torch.cat([-0.5 * precision, loc * precision, constant[:, None]], -1)  # (K, 2D+1)
        flat = z.reshape(-1, z.shape[-1]).to(wide)  # (N, D)
        features = torch.cat([flat.square(), flat, torch.ones_like(flat[:, :1])], -1)  # (N, 2D+1)
        log_joint = (features @ weights.T).to(z.dtype)  # (N, K): log pi_k + log N(z; m_k, s_k)
        return torch.logsumexp(log_joint, -1).reshape(z.shape[:-1])


def unit_normal(zeros: torch.Tensor, ones: torch.Tensor) -> Independent:
    """p(z) = N(0, I) over (D,) on the given zeros and ones (e.g. a module's buffers: nothing allocated)."""
    return Independent(UnitNormal(zeros, ones, validate_args=False), 1, validate_args=False)


def standard_normal(latent_dim: int, device: torch.device | str = "cpu") -> Independent:
    """p(z) = N(0, I) over (D,)."""
    zeros = torch.zeros(latent_dim, device=device)
    return unit_normal(zeros, torch.ones_like(zeros))


class PixelBernoulli(Bernoulli):
    """Bernoulli(sigmoid(logits)) whose log_prob is one BCE pass; images (B, C, H, W) broadcast against
    logits (K, B, C, H, W) of K latent samples each, without a copy."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits, value = torch.broadcast_tensors(self.logits, value)  # views, no copies
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none")


def bernoulli_likelihood(logits: torch.Tensor) -> Independent:
    """p(x|z) = prod_pixels Bernoulli(sigmoid(logits)); -log_prob is the BCE summed over pixels.

    logits: (B, C, H, W). Defined on logits for numerical stability (never sigmoid-then-BCE).
    """
    return Independent(PixelBernoulli(logits=logits, validate_args=False), 3, validate_args=False)


def gaussian_likelihood(loc: torch.Tensor, sigma: float) -> Independent:
    """p(x|z) = N(loc, sigma^2 I); -log_prob = ||x - loc||^2 / (2 sigma^2) + (D/2) log(2 pi sigma^2)."""
    return Independent(Normal(loc, torch.full_like(loc, sigma), validate_args=False), 3, validate_args=False)


def gaussian_nll_constant(num_pixels: int, sigma: float) -> float:
    """The data-independent part of -log N(x; loc, sigma^2 I): (D/2) log(2 pi sigma^2)."""
    return 0.5 * num_pixels * math.log(2 * math.pi * sigma**2)


def likelihood_image(likelihood: Distribution, draw: bool = False) -> torch.Tensor:
    """Images in [0, 1] of p(x|z): the mean E[x|z] (likelihood_mean), or with draw=True one x drawn from
    p(x|z) (binary pixels for a Bernoulli likelihood; no gradient flows through a draw)."""
    if not draw:
        return likelihood_mean(likelihood)
    return likelihood.sample().clamp(0, 1)


def likelihood_mean(likelihood: Distribution) -> torch.Tensor:
    """E[x|z] as an image in [0,1] (the Bernoulli probabilities or the Gaussian mean, clamped; an
    autoregressive likelihood's mean-field picture; a discretized one's mean, likelihoods.py)."""
    return likelihood.mean.clamp(0, 1)
