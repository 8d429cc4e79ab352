"""The VAE and the conditional VAE (Kingma & Welling 2014; Sohn et al. 2015).

    inference:   q(z | x[, c]) = N(loc(x, c), diag(scale(x, c)^2))
    prior:       p(z) = N(0, I);  CVAE: p(z | c) = N(m_c, diag(s_c^2)), learned per class
    generative:  p(x | z[, c]) = Bernoulli(sigmoid(logits(z, c)))  or  N(mean(z, c), sigma^2 I)
    objective:   ELBO = E_q[log p(x|z,c)] - KL(q(z|x,c) || p(z[|c]))   (objectives.elbo)

With cfg.model == "cvae" the class label c in {0..K-1} enters both networks as a one-hot vector.
The CVAE's prior is a learned Gaussian per class (cfg.class_prior; it starts as N(0, I)): the
encoder still puts some class information in z (digits of one style, coats of one shape), so the
region of latent space that codes class c is not all of N(0, I), and a z ~ N(0, I) decoded as
"trouser" can come out as a shirt. Sampling z ~ p(z|c) draws from where class c's codes live.
KL(q(z|x,c) || p(z|c)) stays closed form.
A beta-VAE is the same model trained with beta != 1 (a parameter of the objective, not a class).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Independent

from ..config import ModelConfig
from ..distributions import bernoulli_likelihood, diagonal_gaussian, gaussian_likelihood, likelihood_mean
from ..errors import VaekitError
from ..nets import make_networks
from ..objectives import elbo


class VAE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.model == "cvae" and cfg.num_classes < 2:
            raise VaekitError("a conditional VAE (--model cvae) needs a labelled dataset with at least 2 classes")
        self.cfg = cfg
        self.encoder, self.decoder = make_networks(cfg)
        # Non-persistent buffers: they follow .to(device) but are not saved in checkpoints.
        self.register_buffer("prior_loc", torch.zeros(cfg.latent_dim), persistent=False)
        self.register_buffer("prior_scale", torch.ones(cfg.latent_dim), persistent=False)
        if cfg.model == "cvae" and cfg.class_prior:  # p(z|c): one row per class, (K, D)
            self.class_prior_loc = nn.Parameter(torch.zeros(cfg.num_classes, cfg.latent_dim))
            self.class_prior_log_scale = nn.Parameter(torch.zeros(cfg.num_classes, cfg.latent_dim))

    @property
    def conditional(self) -> bool:
        return self.cfg.model == "cvae"

    def _onehot(self, c: torch.Tensor | None) -> torch.Tensor | None:
        if not self.conditional:
            return None
        if c is None:
            raise VaekitError("a conditional VAE needs class labels c")
        return F.one_hot(c, self.cfg.num_classes).to(self.prior_loc.dtype)

    # ---- inference: q(z | x, c)
    def posterior(self, x: torch.Tensor, c: torch.Tensor | None = None) -> Independent:
        loc, scale = self.encoder(x, self._onehot(c))
        return diagonal_gaussian(loc, scale)

    # ---- generative: p(z[|c]) and p(x | z, c)
    def prior(self, c: torch.Tensor | None = None) -> Independent:
        """N(0, I) (event shape (D,)); with a class prior, p(z|c) for labels c: (B,) (batch shape (B,))."""
        if self.conditional and self.cfg.class_prior:
            if c is None:
                raise VaekitError("this conditional VAE has a prior per class: p(z|c) needs labels c")
            return diagonal_gaussian(self.class_prior_loc[c], self.class_prior_log_scale[c].exp())
        return diagonal_gaussian(self.prior_loc, self.prior_scale)

    def likelihood(self, z: torch.Tensor, c: torch.Tensor | None = None) -> Independent:
        out = self.decoder(z, self._onehot(c))  # (B, C, H, W)
        if self.cfg.likelihood == "bernoulli":
            return bernoulli_likelihood(out)
        return gaussian_likelihood(out, self.cfg.sigma)

    # ---- objective
    def forward(
        self, x: torch.Tensor, c: torch.Tensor | None = None, *, beta: float = 1.0, free_bits: float = 0.0
    ) -> dict[str, torch.Tensor]:
        """Per-image ELBO terms and the training loss of a batch; see objectives.elbo."""
        return elbo(self, x, c, beta=beta, free_bits=free_bits)

    # ---- uses
    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | list[int] | int | None = None) -> torch.Tensor:
        """n images E[x|z,c], z ~ p(z[|c]): (n, C, H, W) in [0, 1]. A CVAE needs `labels` (one int or n ints)."""
        device = self.prior_loc.device
        c = None
        if labels is not None:
            if not self.conditional:
                raise VaekitError("labels were given but this model is not conditional (train with --model cvae)")
            c = torch.as_tensor(labels, device=device, dtype=torch.long).expand(n) if isinstance(labels, int) else (
                torch.as_tensor(labels, device=device, dtype=torch.long))
            if c.shape != (n,):
                raise VaekitError(f"got {c.numel()} labels for {n} samples")
            if c.min() < 0 or c.max() >= self.cfg.num_classes:
                raise VaekitError(f"labels must be in 0..{self.cfg.num_classes - 1}")
        elif self.conditional:
            raise VaekitError("a conditional VAE needs labels to sample (e.g. --label 7)")
        prior = self.prior(c)
        z = prior.sample(() if prior.batch_shape else (n,))  # (n, D)
        return likelihood_mean(self.likelihood(z, c))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """E[x | z = posterior mean]: (B, C, H, W) in [0, 1]."""
        return likelihood_mean(self.likelihood(self.posterior(x, c).mean, c))

    @torch.no_grad()
    def redraw_as_every_class(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Style transfer: encode x with its own labels c, decode each z with every class.

        x: (B, C, H, W), c: (B,) -> (B, K, C, H, W); entry [i, k] is image i's style drawn as class k.
        """
        if not self.conditional:
            raise VaekitError("analogies need a conditional model (train with --model cvae)")
        z = self.posterior(x, c).mean  # (B, D)
        b, k = len(x), self.cfg.num_classes
        classes = torch.arange(k, device=z.device).repeat(b)  # (B*K,)
        images = likelihood_mean(self.likelihood(z.repeat_interleave(k, 0), classes))
        return images.view(b, k, *images.shape[1:])
