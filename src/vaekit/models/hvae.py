"""A VAE with two stochastic layers, z2 -> z1 -> x (the hierarchical VAE of Tomczak & Welling 2018):

    generative:  p(z2)  = N(0, I), a Gaussian mixture or the VampPrior over z2 (--prior, priors.py)
                 p(z1 | z2) = N(loc(z2), diag(scale(z2)^2))
                 p(x | z1, z2) = Bernoulli(sigmoid(logits(z1, z2))) or N(mean(z1, z2), sigma^2 I)
    inference:   q(z2 | x) = N(...),  q(z1 | x, z2) = N(...)
    ELBO:        E_q[log p(x|z1,z2)] - E_q(z2|x)[KL(q(z1|x,z2) || p(z1|z2))] - KL(q(z2|x) || p(z2))
    IWAE:        log w_k = log p(x|z1,z2) + log p(z1|z2) + log p(z2) - log q(z1|x,z2) - log q(z2|x),
                 (z1, z2)_k ~ q(z2|x) q(z1|x,z2): the joint over both layers

Training uses one reparameterized sample of each layer; KL(q(z1|x,z2) || p(z1|z2)) is closed form at
the sampled z2, and KL(q(z2|x) || p(z2)) is closed form for the normal prior and a one-sample
estimate for the mixtures (objectives.latent_kl). Evaluation estimates both KLs from the K samples:
-ELBO = recon + kl = -(1/K) sum_k log w_k. A point of the latent space (encode, decode, the
traversals) is (z1, z2) concatenated: (B, D1 + D2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, Independent

from ..config import ModelConfig, _opt
from ..distributions import diagonal_gaussian, likelihood_image, likelihood_mean, normal_kl
from ..errors import VaekitError
from ..likelihoods import pixel_likelihood
from ..nets import make_encoder, make_networks
from ..objectives import iwae_bound, latent_kl
from ..priors import components_option, make_prior, prior_option
from .base import EvalContext, check_count, class_labels, gaussian_traversal


@dataclass(frozen=True)
class HVAEConfig(ModelConfig):
    model: str = "hvae"
    prior: str = prior_option()  # over z2
    prior_components: int = components_option()
    top_latent_dim: int = _opt(0, "dimension of the top layer z2 (0: the same as --latent-dim, the dimension of z1)",
                               low=0, high=4096)


class HVAE(nn.Module):
    Config = HVAEConfig
    labels = "none"
    classifies = False
    bound = "neg_elbo"  # the per-example term validation keeps the best weights by
    names = {"recon": "-E_q[log p(x|z1,z2)]", "kl": "KL(q(z1,z2|x) || p(z1,z2))"}

    def __init__(self, cfg: HVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.d1, self.d2 = cfg.latent_dim, cfg.top_latent_dim or cfg.latent_dim
        self.top_encoder = make_encoder(cfg, self.d2)  # x -> q(z2|x)
        self.encoder, self.decoder = make_networks(cfg, self.d2)  # (x, z2) -> q(z1|x,z2); (z1, z2) -> p(x|z1,z2)
        self.conditional_prior_net = nn.Sequential(  # z2 -> p(z1|z2)
            nn.Linear(self.d2, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, 2 * self.d1))
        self.latent_prior = make_prior(cfg.prior, self.d2, cfg.prior_components, cfg.image_shape)  # p(z2)

    @property
    def num_classes(self) -> int:
        return 0

    # ---- inference: q(z2 | x), q(z1 | x, z2)
    def top_posterior(self, x: torch.Tensor) -> Independent:
        return diagonal_gaussian(*self.top_encoder(x))

    def bottom_posterior(self, features: torch.Tensor, z2: torch.Tensor) -> Independent:
        """q(z1 | x, z2) from the encoder body's features of x: (..., F) and z2: (..., D2)."""
        return diagonal_gaussian(*self.encoder.head(features, z2))

    # ---- generative: p(z2), p(z1 | z2), p(x | z1, z2)
    def prior(self) -> Distribution:
        """p(z2), event shape (D2,)."""
        return self.latent_prior(self.top_posterior)

    def conditional_prior(self, z2: torch.Tensor) -> Independent:
        loc, raw_scale = self.conditional_prior_net(z2).chunk(2, dim=-1)
        return diagonal_gaussian(loc, F.softplus(raw_scale) + 1e-5)

    def likelihood(self, z1: torch.Tensor, z2: torch.Tensor) -> Independent:
        out = self.decoder(z1, z2)
        return pixel_likelihood(out, self.cfg)

    # ---- objective
    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, *, beta: float | torch.Tensor = 1.0, free_bits: float = 0.0
    ) -> dict[str, torch.Tensor]:
        """One reparameterized sample of each layer: per-image -ELBO, recon, kl (= kl_top + kl_bottom)."""
        q2 = self.top_posterior(x)
        z2 = q2.rsample()
        q1 = self.bottom_posterior(self.encoder.body(x), z2)
        z1 = q1.rsample()
        recon = -self.likelihood(z1, z2).log_prob(x)
        kl_bottom_dims = normal_kl(q1.base_dist, self.conditional_prior(z2).base_dist)  # (B, D1), given z2
        kl_top, kl_top_dims = latent_kl(q2, self.prior(), z2)
        kl_bottom = kl_bottom_dims.sum(-1)
        kl = kl_top + kl_bottom
        if free_bits > 0:
            if kl_top_dims is None:
                raise VaekitError("--free-bits needs a KL per latent dimension: a prior with a closed-form KL (--prior normal)")
            kl_term = torch.cat([kl_bottom_dims, kl_top_dims], -1).mean(0).clamp(min=free_bits).sum()
        else:
            kl_term = kl.mean()
        loss = recon.mean() + beta * kl_term
        return {"loss": loss, "neg_elbo": recon + kl, "recon": recon, "kl": kl, "kl_top": kl_top, "kl_bottom": kl_bottom}

    def knobs(self, step: int) -> dict[str, float]:
        return {}

    @torch.no_grad()
    def bounds(self, x: torch.Tensor, y: torch.Tensor | None, num_samples: int, chunk: int) -> dict[str, torch.Tensor]:
        """recon, kl (both KLs estimated from the samples) and nll = -IWAE_K with the joint weights."""
        q2, prior = self.top_posterior(x), self.prior()
        features = self.encoder.body(x)  # (B, F): the body of q(z1|x, z2) runs once per image
        log_lik, log_w = [], []
        for start in range(0, num_samples, chunk):
            k = min(chunk, num_samples - start)
            z2 = q2.sample((k,))  # (k, B, D2)
            q1 = self.bottom_posterior(features.expand(k, *features.shape), z2)
            z1 = q1.sample()  # (k, B, D1)
            ll = self.likelihood(z1, z2).log_prob(x)  # (k, B): each image broadcast over its k samples
            log_lik.append(ll)
            log_w.append(ll + self.conditional_prior(z2).log_prob(z1) + prior.log_prob(z2) - q1.log_prob(z1)
                         - q2.log_prob(z2))
        log_lik, log_w = torch.cat(log_lik), torch.cat(log_w)  # (K, B)
        return {"recon": -log_lik.mean(0), "kl": (log_lik - log_w).mean(0), "nll": -iwae_bound(log_w)}

    def metrics(self, context: EvalContext) -> dict:
        return {}

    # ---- uses: a latent point is (z1, z2) concatenated, (B, D1 + D2)
    def sample(self, n: int, labels: object = None) -> torch.Tensor:
        """n images E[x|z1,z2], z2 ~ p(z2), z1 ~ p(z1|z2): (n, C, H, W) in [0, 1]."""
        n = check_count(n)
        class_labels(labels, n, 0, self.top_encoder.out.weight.device)  # refuses labels
        z2 = self.prior().sample((n,))
        return likelihood_mean(self.likelihood(self.conditional_prior(z2).sample(), z2))

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """(E[z1 | x, z2 = E[z2|x]], E[z2|x]): (B, D1 + D2)."""
        z2 = self.top_posterior(x).mean
        return torch.cat([self.bottom_posterior(self.encoder.body(x), z2).mean, z2], -1)

    def decode(self, z: torch.Tensor, labels: object = None, *, draw: bool = False) -> torch.Tensor:
        """The mean image E[x | z1, z2] of latent points (z1, z2): (B, D1 + D2) (draw=True: drawn from p(x|z1,z2))."""
        class_labels(labels, len(z), 0, z.device)
        if z.dim() != 2 or z.shape[1] != self.d1 + self.d2:
            raise VaekitError(f"latent points must have shape (n, {self.d1 + self.d2}) (z1 then z2), got {tuple(z.shape)}")
        return likelihood_image(self.likelihood(z[:, : self.d1], z[:, self.d1 :]), draw)

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(self.encode(x))

    def traversal(self, z: torch.Tensor, steps: int = 9) -> torch.Tensor:
        """Each coordinate of (z1, z2) over N(0, 1) quantiles: (D1 + D2, steps, D1 + D2)."""
        return gaussian_traversal(z, steps)


__all__ = ["HVAE", "HVAEConfig"]
