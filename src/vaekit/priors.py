"""Priors p(z) over the Gaussian latent space: each a module that returns a torch Distribution with
event shape (D,). PRIORS is the one mapping from names (--prior) to them.

    normal    N(0, I)                                              the KL to q(z|x) has a closed form
    mixture   sum_k pi_k N(m_k, diag(s_k^2))                       learned pi, m, s (K components)
    vamp      (1/K) sum_k q(z | u_k)                               the VampPrior (Tomczak & Welling 2018):
                                                                   the aggregate posterior of K learned
                                                                   pseudo-inputs u_k, through the encoder

The mixtures have no closed-form KL: training uses the one-sample estimate log q(z|x) - log p(z) at
the reparameterized z (objectives.latent_kl), and the IWAE needs nothing new (it only reads log p(z)).
Each prior is called with the model's posterior q(.|x) (the VampPrior encodes its pseudo-inputs with
it; the others ignore it), so the encoder is not registered twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.distributions import Independent

from .config import _opt
from .distributions import DiagonalGaussianMixture, unit_normal

Posterior = Callable[[torch.Tensor], Independent]


class StandardNormal(nn.Module):
    """p(z) = N(0, I)."""

    def __init__(self, latent_dim: int, components: int = 0, image_shape: tuple[int, ...] = ()):
        super().__init__()
        # Non-persistent buffers: they follow .to(device) but are not saved in checkpoints.
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(latent_dim), persistent=False)

    def forward(self, posterior: Posterior | None = None) -> Independent:
        return unit_normal(self.loc, self.scale)


class GaussianMixture(nn.Module):
    """p(z) = sum_k softmax(logits)_k N(loc_k, diag(exp(log_scale_k)^2)), K components."""

    def __init__(self, latent_dim: int, components: int, image_shape: tuple[int, ...] = ()):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(components))
        self.loc = nn.Parameter(torch.randn(components, latent_dim))  # spread out: the components start apart
        self.log_scale = nn.Parameter(torch.zeros(components, latent_dim))

    def forward(self, posterior: Posterior | None = None) -> DiagonalGaussianMixture:
        return DiagonalGaussianMixture(self.logits, self.loc, self.log_scale.exp())


class VampPrior(nn.Module):
    """p(z) = (1/K) sum_k q(z | u_k), pseudo-inputs u_k = sigmoid(pseudo_logits_k): images in (0, 1)."""

    def __init__(self, latent_dim: int, components: int, image_shape: tuple[int, ...] = ()):
        super().__init__()
        self.pseudo_logits = nn.Parameter(0.01 * torch.randn(components, *image_shape))  # (K, C, H, W)

    def pseudo_inputs(self) -> torch.Tensor:
        return torch.sigmoid(self.pseudo_logits)

    def forward(self, posterior: Posterior | None = None) -> DiagonalGaussianMixture:
        if posterior is None:
            raise ValueError("the VampPrior needs the encoder's posterior q(z|x)")
        q = posterior(self.pseudo_inputs()).base_dist  # (K, D) means and scales
        return DiagonalGaussianMixture(q.loc.new_zeros(q.loc.shape[0]), q.loc, q.scale)


PRIORS: dict[str, type[nn.Module]] = {"normal": StandardNormal, "mixture": GaussianMixture, "vamp": VampPrior}


def prior_option() -> Any:
    """The `prior` field of a model config that lets the user choose p(z) (--prior)."""
    return _opt("normal", "p(z): normal N(0, I), mixture (a learned Gaussian mixture) or vamp (the VampPrior: a "
                "mixture of the posteriors of learned pseudo-inputs)", tuple(PRIORS))


def components_option() -> Any:
    """The `prior_components` field (--prior-components)."""
    return _opt(100, "components of a mixture or vamp prior", low=1, high=100000)


def make_prior(name: str, latent_dim: int, components: int, image_shape: tuple[int, ...]) -> nn.Module:
    return PRIORS[name](latent_dim, components, image_shape)
