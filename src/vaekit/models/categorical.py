"""The categorical-latent VAE (Jang, Gu & Poole 2017; Maddison, Mnih & Teh 2017): z is G independent
categorical variables of K categories each, one-hot coded as a (G, K) array, flattened to D = G*K.

    inference:   q(z | x) = prod_g Cat(z_g; softmax(logits_g(x)))          logits: (B, G, K)
    prior:       p(z) = prod_g Cat(z_g; 1/K)                                uniform
    generative:  p(x | z) = Bernoulli(sigmoid(decoder(z))) or N(decoder(z), sigma^2 I)
    KL:          KL(q || p) = sum_g sum_k q_gk (log q_gk + log K)           exact, from the logits
    ELBO:        E_q[log p(x|z)] - KL

A categorical sample has no reparameterization, so the gradient of E_q[log p(x|z)] with respect
to the encoder needs an estimator (--estimator):

    gumbel            z = softmax((logits + g) / tau), g ~ Gumbel(0, 1): a relaxed sample on the
                      simplex, differentiable; biased for tau > 0, its variance grows as tau -> 0
    straight-through  z = one_hot(argmax(logits + g)) in the forward pass, the relaxed sample's
                      gradient in the backward pass (Bengio et al. 2013; Jang's "ST Gumbel")
    reinforce         z a true categorical sample; the score function (recon - b) grad log q(z|x),
                      unbiased; b a moving average of the batch-mean reconstruction term (a buffer
                      of the model, so checkpoints and resume keep it; --no-baseline: b = 0)

Relaxed samples are drawn in log space (torch's ExpRelaxedCategorical), so tau = 0.1 stays finite.
The temperature follows the global step t: tau(t) = max(tau_min, tau0 exp(-r t)). Defaults: tau0 = 1
and tau_min = 0.5 as Jang et al.; r = 1e-4 (theirs: about 3e-5 over many more steps), so that tau
reaches tau_min at step 6,931, about halfway through vaekit's automatic 13,200 steps.

Validation and evaluation use true one-hot samples only: -ELBO and the IWAE bound are then bounds on
-log p(x) in nats, comparable with the Gaussian VAE's. The logged training -ELBO is the true one for
reinforce (its surrogate's value is detached away) and the relaxed one for gumbel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical, Independent
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

from ..config import ModelConfig, _opt
from ..distributions import likelihood_image, likelihood_mean
from ..errors import VaekitError
from ..likelihoods import pixel_likelihood
from ..nets import make_classifier, make_decoder
from ..objectives import iwae_bound
from .base import EvalContext, check_count, class_labels, warmup_epochs

ESTIMATORS = ("gumbel", "straight-through", "reinforce")
BASELINE_DECAY = 0.99  # of the moving-average baseline; about the last 100 steps


@dataclass(frozen=True)
class CategoricalConfig(ModelConfig):
    model: str = "categorical"
    groups: int = _opt(20, "categorical latent variables G", low=1, high=4096)
    categories: int = _opt(10, "categories K of each variable", low=2, high=4096)
    estimator: str = _opt("gumbel", "gradient estimator of the reconstruction term", ESTIMATORS)
    tau0: float = _opt(1.0, "initial temperature of the relaxed samples", low=0, low_open=True)
    tau_min: float = _opt(0.5, "temperature floor", low=0, low_open=True)
    anneal_rate: float = _opt(1e-4, "temperature decay per step: tau = max(tau_min, tau0 exp(-rate step))", low=0)
    baseline: bool = _opt(True, "reinforce: subtract a moving-average baseline (--no-baseline: plain REINFORCE)")
    # Not a flag: the latent is --groups x --categories (kept equal to G*K for code that reads D).
    latent_dim: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tau_min > self.tau0:
            raise VaekitError(f"tau_min ({self.tau_min:g}) must not exceed tau0 ({self.tau0:g})")
        object.__setattr__(self, "latent_dim", self.groups * self.categories)


class CategoricalVAE(nn.Module):
    Config = CategoricalConfig
    labels = "none"
    classifies = False
    bound = "neg_elbo"  # the per-example term validation keeps the best weights by
    axis_size = 0  # set per instance: a latent axis is one variable, its K one-hot dimensions
    names = {"axis": "variable"}

    @staticmethod
    def training_defaults(options: dict) -> dict:
        """A KL warm-up over 100 epochs: the exact KL pulls every q(z_g|x) onto the uniform prior before the
        decoder has learnt to read the codes, and a run can end in posterior collapse (KL near 0, no
        active variable; see health.py). Not for a fine-tuning (--init-from)."""
        return {} if options.get("init_from") else {"kl_warmup": warmup_epochs(options)}

    def __init__(self, cfg: CategoricalConfig):
        super().__init__()
        self.cfg = cfg
        self.groups, self.categories = cfg.groups, cfg.categories
        self.axis_size = cfg.categories
        self.encoder = make_classifier(cfg, cfg.groups * cfg.categories)  # x -> logits (B, G*K)
        self.decoder = make_decoder(cfg, cfg.groups * cfg.categories)  # z (B, G*K) -> pixels
        # The reinforce baseline: an exponential moving average of the batch-mean reconstruction term,
        # with the number of updates for its bias correction. Persistent: checkpoints keep it.
        self.register_buffer("baseline_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("baseline_updates", torch.zeros((), dtype=torch.long))

    @property
    def num_classes(self) -> int:
        return 0

    # ---- inference: q(z | x)
    def posterior_logits(self, x: torch.Tensor) -> torch.Tensor:
        """log q(z_g = k | x), normalised: (B, G, K)."""
        logits = self.encoder(x).view(len(x), self.groups, self.categories)
        return F.log_softmax(logits.float(), dim=-1)

    def kl(self, log_q: torch.Tensor) -> torch.Tensor:
        """KL(q(z_g|x) || uniform) per variable, exact: (B, G)."""
        return (log_q.exp() * (log_q + math.log(self.categories))).sum(-1)

    # ---- generative: p(z) uniform, p(x | z)
    def likelihood(self, z: torch.Tensor) -> Independent:
        """z: (..., B, G*K) one-hot codes (or relaxed ones); batch shape (..., B)."""
        out = self.decoder(z)
        return pixel_likelihood(out, self.cfg)

    def _onehot(self, index: torch.Tensor) -> torch.Tensor:
        """Category indices (..., G) -> flat one-hot codes (..., G*K)."""
        return F.one_hot(index, self.categories).flatten(-2).float()

    # ---- sample z: relaxed, straight-through, or discrete
    def relaxed_sample(self, log_q: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
        """softmax((log q + Gumbel noise) / tau), computed as a log-softmax: (B, G, K) on the simplex."""
        temperature = torch.as_tensor(temperature, dtype=log_q.dtype, device=log_q.device)
        return ExpRelaxedCategorical(temperature, logits=log_q, validate_args=False).rsample().exp()

    # ---- objective
    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, *, beta: float | torch.Tensor = 1.0,
        free_bits: float = 0.0, temperature: float | torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-image -ELBO terms and the loss of a batch; training samples z with the estimator, eval
        (validation) with true one-hot samples."""
        log_q = self.posterior_logits(x)  # (B, G, K)
        kl_per_group = self.kl(log_q)  # (B, G)
        kl = kl_per_group.sum(-1)
        estimator = self.cfg.estimator if self.training else "discrete"
        tau = self.cfg.tau0 if temperature is None else temperature
        if estimator in ("gumbel", "straight-through"):
            z = self.relaxed_sample(log_q, tau)
            if estimator == "straight-through":  # hard forward, relaxed backward
                z = F.one_hot(z.argmax(-1), self.categories).to(z) - z.detach() + z
            z = z.flatten(1)
        else:  # a true sample: no gradient reaches the encoder through z
            index = Categorical(logits=log_q, validate_args=False).sample()  # (B, G)
            z = self._onehot(index)
        recon = -self.likelihood(z).log_prob(x)  # (B,)
        kl_term = kl_per_group.mean(0).clamp(min=free_bits).sum() if free_bits > 0 else kl.mean()
        loss = recon.mean() + beta * kl_term
        terms = {"neg_elbo": recon + kl, "recon": recon, "kl": kl}
        if estimator == "reinforce":
            log_q_z = log_q.gather(-1, index[..., None])[..., 0].sum(-1)  # log q(z|x): (B,)
            signal = recon.detach() - self._baseline()  # (B,)
            surrogate = (signal * log_q_z).mean()
            loss = loss + surrogate - surrogate.detach()  # the gradient of the score function, value 0
            self._update_baseline(recon.detach().mean())
            terms["reinforce_signal"] = signal
        return {"loss": loss, **terms}

    def _baseline(self) -> torch.Tensor:
        """The bias-corrected moving average of the reconstruction term (0 before any update or with --no-baseline)."""
        if not self.cfg.baseline:
            return torch.zeros((), device=self.baseline_mean.device)
        correction = 1 - BASELINE_DECAY ** self.baseline_updates.double()
        return torch.where(self.baseline_updates > 0, self.baseline_mean / correction.clamp(min=1e-12), 0.0).float()

    @torch.no_grad()
    def _update_baseline(self, batch_recon: torch.Tensor) -> None:
        self.baseline_mean.lerp_(batch_recon.to(self.baseline_mean), 1 - BASELINE_DECAY)
        self.baseline_updates += 1

    def knobs(self, step: int) -> dict[str, float]:
        """The temperature at global step `step` (relaxed estimators)."""
        cfg = self.cfg
        if cfg.estimator == "reinforce":  # no relaxed sample, no temperature
            return {}
        return {"temperature": max(cfg.tau_min, cfg.tau0 * math.exp(-cfg.anneal_rate * step))}

    @torch.no_grad()
    def bounds(self, x: torch.Tensor, y: torch.Tensor | None, num_samples: int, chunk: int) -> dict[str, torch.Tensor]:
        """With true one-hot samples z_k ~ q(z|x):

            recon      = -(1/K) sum_k log p(x|z_k)                        (B,)
            kl         = exact KL(q || uniform)  (-ELBO = recon + kl)     (B,)
            kl_per_dim = the KL of each variable                          (B, G)
            nll        = -IWAE_K,  log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)
        """
        log_q = self.posterior_logits(x)  # (B, G, K)
        kl_per_group = self.kl(log_q)
        posterior = Categorical(logits=log_q, validate_args=False)
        log_prior = -self.groups * math.log(self.categories)
        log_lik, log_w = [], []
        for start in range(0, num_samples, chunk):
            k = min(chunk, num_samples - start)
            index = posterior.sample((k,))  # (k, B, G)
            ll = self.likelihood(self._onehot(index)).log_prob(x)  # (k, B): each image broadcast over its k codes
            log_lik.append(ll)
            log_w.append(ll + log_prior - posterior.log_prob(index).sum(-1))
        return {"recon": -torch.cat(log_lik).mean(0), "kl": kl_per_group.sum(-1), "kl_per_dim": kl_per_group,
                "nll": -iwae_bound(torch.cat(log_w))}

    def metrics(self, context: EvalContext) -> dict:
        return {}

    # ---- uses
    def sample(self, n: int, labels: object = None) -> torch.Tensor:
        """n images E[x|z], z drawn from the uniform prior: (n, C, H, W) in [0, 1]."""
        n = check_count(n)
        class_labels(labels, n, 0, self.baseline_mean.device)  # refuses labels
        index = torch.randint(self.categories, (n, self.groups), device=self.baseline_mean.device)
        return likelihood_mean(self.likelihood(self._onehot(index)))

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The posterior mean of the one-hot code, q(z_g = k | x): (B, G*K)."""
        return self.posterior_logits(x).exp().flatten(1)

    def _mode(self, z: torch.Tensor) -> torch.Tensor:
        """The most probable category of each variable of codes z: (B, G*K) -> one-hot (B, G*K)."""
        return self._onehot(z.view(len(z), self.groups, self.categories).argmax(-1))

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x | z = the mode of q(z|x)]: (B, C, H, W)."""
        return likelihood_mean(self.likelihood(self._mode(self.encode(x))))

    def decode(self, z: torch.Tensor, labels: object = None, *, draw: bool = False) -> torch.Tensor:
        """The mean image E[x | z] of codes z: (B, G*K), one-hot per variable (or a point of each simplex);
        draw=True: an image drawn from p(x|z)."""
        class_labels(labels, len(z), 0, z.device)
        if z.dim() != 2 or z.shape[1] != self.groups * self.categories:
            raise VaekitError(f"codes must have shape (n, {self.groups * self.categories}), got {tuple(z.shape)}")
        return likelihood_image(self.likelihood(z.float()), draw)

    def traversal(self, z: torch.Tensor, steps: int = 9) -> torch.Tensor:
        """The mode of code z: (D,), with each variable set to each of its K categories: (G, K, D)."""
        base = self._mode(z[None])[0].view(self.groups, self.categories)
        walk = base.expand(self.groups, self.categories, self.groups, self.categories).clone()  # (G, K, G, K)
        variable = torch.arange(self.groups, device=z.device)
        walk[variable, :, variable, :] = torch.eye(self.categories, device=z.device)
        return walk.flatten(2)


__all__ = ["CategoricalConfig", "CategoricalVAE", "ESTIMATORS"]
