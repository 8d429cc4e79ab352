"""Objectives, generic over any model exposing posterior(x, c), prior(c), likelihood(z, c).

Convention (one, everywhere): log-densities are summed over pixels and latent dimensions, giving
one number per image in nats; losses are averaged over the images of a batch.

    ELBO(x)   = E_q[log p(x|z)] - KL(q(z|x) || p(z))                         (Kingma & Welling 2014)
    IWAE_K(x) = log (1/K) sum_k p(x, z_k) / q(z_k|x),   z_k ~ q(z|x)          (Burda et al. 2016)

IWAE_1 is the ELBO (in expectation) and IWAE_K rises towards log p(x) as K grows.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch.distributions import Distribution, Independent

from .distributions import kl_per_dim
from .errors import VaekitError


class LatentVariableModel(Protocol):
    def posterior(self, x: torch.Tensor, c: torch.Tensor | None = None) -> Distribution: ...
    def prior(self, c: torch.Tensor | None = None) -> Distribution: ...
    def likelihood(self, z: torch.Tensor, c: torch.Tensor | None = None) -> Distribution:
        """p(x | z[, c]) for z: (..., B, D) and c: (..., B), batch shape (..., B); its log_prob takes the
        images (B, C, H, W), so K samples of each image, z: (K, B, D), share one copy of it."""


def elbo(
    model: LatentVariableModel,
    x: torch.Tensor,
    c: torch.Tensor | None = None,
    *,
    beta: float = 1.0,
    free_bits: float = 0.0,
) -> dict[str, torch.Tensor]:
    """One-sample reparameterized ELBO of a batch x: (B, C, H, W).

    Returns per-image tensors (B,) `neg_elbo`, `recon` (= -log p(x|z)), `kl` (closed form), and the
    scalar `loss` that training minimises: mean(recon) + beta * KL, where with free bits each latent
    dimension's batch-mean KL is floored at `free_bits` nats (Kingma et al. 2016, eq. 15).
    With beta = 1 and free_bits = 0, loss = mean(neg_elbo).
    """
    posterior = model.posterior(x, c)
    z = posterior.rsample()  # reparameterized: z = loc + scale * eps, eps ~ N(0, I)
    recon = -model.likelihood(z, c).log_prob(x)
    kl, kl_dims = latent_kl(posterior, model.prior(c), z)
    neg_elbo = recon + kl
    if free_bits > 0:
        if kl_dims is None:
            raise VaekitError("--free-bits needs a KL per latent dimension: a posterior and prior with a closed-form KL "
                          "(--prior normal)")
        loss = recon.mean() + beta * kl_dims.mean(0).clamp(min=free_bits).sum()
    elif isinstance(beta, float | int) and beta == 1:
        loss = neg_elbo.mean()  # the same number with two fewer operations in the step
    else:
        loss = recon.mean() + beta * kl.mean()
    return {"loss": loss, "neg_elbo": neg_elbo, "recon": recon, "kl": kl}


def latent_kl(posterior: Distribution, prior: Distribution, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """KL(q(z|x) || p(z)) per image (B,), and per latent dimension (B, D) where that exists.

    A pair with a declared closed form (distributions.CLOSED_FORM_KL: diagonal Gaussians): the closed form,
    per dimension. Any other (a mixture prior, a non-Gaussian posterior): the one-sample estimate
    log q(z|x) - log p(z) at the sample z, unbiased, with no per-dimension split (None)."""
    per_dim = kl_per_dim(posterior, prior)  # (B, D) or None
    if per_dim is not None:
        return per_dim.sum(-1), per_dim
    return posterior.log_prob(z) - prior.log_prob(z), None


def iwae_objective(model: LatentVariableModel, x: torch.Tensor, c: torch.Tensor | None = None, *,
                   num_samples: int) -> dict[str, torch.Tensor]:
    """The IWAE training objective (Burda et al. 2016): -IWAE_K of a batch with K reparameterized
    samples per image, whose gradient weighs each sample by its normalised importance weight.

    Returns per-image `neg_iwae` (-IWAE_K), the one-sample-per-draw averages `recon` and `kl` (so
    `neg_elbo` = recon + kl is the ELBO estimated from the same K samples), and `loss` = mean(neg_iwae).
    """
    posterior, prior = model.posterior(x, c), model.prior(c)
    z = posterior.rsample((num_samples,))  # (K, B, D)
    cs = None if c is None else c.expand(num_samples, *c.shape)  # (K, B)
    log_lik = model.likelihood(z, cs).log_prob(x)  # (K, B): each image broadcast over its K samples
    log_w = log_lik + prior.log_prob(z) - posterior.log_prob(z)
    neg_iwae = -iwae_bound(log_w)
    recon = -log_lik.mean(0)
    kl = (log_lik - log_w).mean(0)
    return {"loss": neg_iwae.mean(), "neg_iwae": neg_iwae, "neg_elbo": recon + kl, "recon": recon, "kl": kl}


def selected_bound(terms: dict) -> str:
    """The per-image term that training minimises and validation selects the best weights on: `neg_iwae`
    (-IWAE_K) for a model trained on the IWAE bound, else `neg_elbo`. (An IWAE-trained model's -ELBO
    gets worse as its likelihood gets better, Burda et al. 2016 sec. 5.2.)"""
    return "neg_iwae" if "neg_iwae" in terms else "neg_elbo"


BOUND_NAMES = {"neg_iwae": "-IWAE_K", "neg_elbo": "-ELBO"}


def importance_samples(
    model: LatentVariableModel,
    x: torch.Tensor,
    c: torch.Tensor | None = None,
    *,
    num_samples: int,
    chunk: int | None = None,
    posterior: Independent | None = None,
    prior: Distribution | None = None,
) -> dict[str, torch.Tensor]:
    """K samples z_k ~ q(z|x) per image; returns (K, B) tensors

        log_likelihood = log p(x|z_k)
        log_weights    = log p(x|z_k) + log p(z_k) - log q(z_k|x)    (given c: p(x|z_k,c), p(z_k|c), q(z_k|x,c))

    Samples are drawn `chunk` at a time so memory grows with chunk * B, not K * B. posterior, prior:
    q(z|x) and p(z) when the caller built them already (a VampPrior encodes its pseudo-inputs to build).
    """
    posterior = model.posterior(x, c) if posterior is None else posterior
    prior = model.prior(c) if prior is None else prior
    chunk = chunk or num_samples
    log_lik, log_w = [], []
    for start in range(0, num_samples, chunk):
        k = min(chunk, num_samples - start)
        z = posterior.sample((k,))  # (k, B, D)
        cs = None if c is None else c.expand(k, *c.shape)  # (k, B)
        ll = model.likelihood(z, cs).log_prob(x)  # (k, B)
        log_lik.append(ll)
        log_w.append(ll + prior.log_prob(z) - posterior.log_prob(z))
    return {"log_likelihood": torch.cat(log_lik), "log_weights": torch.cat(log_w)}


def iwae_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """IWAE_K = logsumexp_k log w_k - log K, from log_weights (K, B): returns (B,)."""
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])


@torch.no_grad()
def gaussian_latent_bounds(
    model: LatentVariableModel, x: torch.Tensor, c: torch.Tensor | None = None, *, num_samples: int, chunk: int
) -> dict[str, torch.Tensor]:
    """Evaluation terms per image of a model with a diagonal-Gaussian posterior:

        recon      = -(1/K) sum_k log p(x|z_k)         (B,)   the reconstruction part of -ELBO
        kl         = KL(q(z|x) || p(z))                 (B,)   closed form (a declared pair), else
                                                               (1/K) sum_k log q(z_k|x) - log p(z_k);
                                                               -ELBO = recon + kl
        kl_per_dim = the KL of each latent dimension    (B, D) (a closed-form pair only)
        nll        = -IWAE_K(x)                         (B,)
    """
    posterior, prior = model.posterior(x, c), model.prior(c)
    s = importance_samples(model, x, c, num_samples=num_samples, chunk=chunk, posterior=posterior, prior=prior)
    terms = {"recon": -s["log_likelihood"].mean(0), "nll": -iwae_bound(s["log_weights"])}
    per_dim = kl_per_dim(posterior, prior)  # (B, D): a declared closed-form pair
    if per_dim is not None:
        return {**terms, "kl": per_dim.sum(-1), "kl_per_dim": per_dim}
    # No closed form: the mean over the K samples of log q(z_k|x) - log p(z_k), so -ELBO = recon + kl
    # is -(1/K) sum_k log w_k, an unbiased estimate.
    return {**terms, "kl": (s["log_likelihood"] - s["log_weights"]).mean(0)}
