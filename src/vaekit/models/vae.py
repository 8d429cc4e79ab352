"""The VAE and the conditional VAE (Kingma & Welling 2014; Sohn et al. 2015).

    inference:   q(z | x[, c]) = N(loc(x, c), diag(scale(x, c)^2))
    prior:       p(z) = N(0, I), a learned Gaussian mixture or the VampPrior (--prior, priors.py);
                 CVAE: p(z | c) = N(m_c, diag(s_c^2)), learned per class
    generative:  p(x | z[, c]) = Bernoulli(sigmoid(logits(z, c)))  or  N(mean(z, c), sigma^2 I)
                 or a discretized likelihood of 8-bit values (likelihoods.py)
                 --autoregressive: prod_i p(x_i | x_<i, z[, c]): the decoder's output plus a masked network
                 over the earlier pixels (MADE for Bernoulli pixels, autoregressive.py; masked convolutions
                 for the discretized likelihoods, pixel_cnn.py)
    objective:   ELBO = E_q[log p(x|z,c)] - KL(q(z|x,c) || p(z[|c]))   (objectives.elbo)

In the CVAE the class label c in {0..K-1} enters both networks as a one-hot vector. Its prior is a
learned Gaussian per class (CVAEConfig.class_prior; it starts as N(0, I)): the encoder still puts
some class information in z (digits of one style, coats of one shape), so the region of latent
space that codes class c is not all of N(0, I), and a z ~ N(0, I) decoded as "trouser" can come out
as a shirt. Sampling z ~ p(z|c) draws from where class c's codes live. KL(q(z|x,c) || p(z|c)) stays
closed form (so does the VAE's with --prior normal; the mixtures use a one-sample estimate, see
objectives.latent_kl). A beta-VAE is the same model trained with beta != 1 (a knob of the objective).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, Independent

from ..autoregressive import AutoregressiveBernoulli, PixelContext
from ..classifier import judge_conditional_samples
from ..config import ModelConfig, _opt
from ..distributions import diagonal_gaussian, likelihood_image, likelihood_mean
from ..errors import VaekitError
from ..likelihoods import Bernoulli, likelihood_kind, parameter_channels, pixel_likelihood
from ..nets import make_networks
from ..objectives import elbo, gaussian_latent_bounds, iwae_objective
from ..pixel_cnn import AutoregressivePixels, PixelCNNContext
from ..priors import components_option, make_prior, prior_option
from .base import EvalContext, check_count, class_labels, gaussian_traversal, warmup_epochs


def autoregressive_option() -> bool:
    return _opt(False, "p(x|z) = prod_i p(x_i | x_<i, z): the decoder's output plus a masked network over the pixels "
                "before each one, in raster order: MADE for Bernoulli pixels, masked convolutions (PixelCNN) for the "
                "discretized likelihoods of 8-bit values (drawing a picture takes one step per pixel)")


def autoregressive_hidden_option() -> int:
    return _opt(0, "width of --autoregressive's masked network (0: --hidden units for Bernoulli pixels, 64 channels "
                "for the discretized likelihoods)", low=0, high=65536)


def autoregressive_dropout_option() -> float:
    return _opt(0.0, "dropout inside --autoregressive's masked convolutions in training, on each residual block's "
                "input (PixelCNN++'s regulariser against overfitting the pixels; discretized likelihoods only)",
                low=0.0, high=1.0, high_open=True)


def train_samples_option() -> int:
    return _opt(1, "importance samples of the training objective: 1 = the ELBO, K > 1 = the IWAE bound -IWAE_K "
                "(Burda et al. 2016; K times the decoder's work per step)", low=1, high=4096)


@dataclass(frozen=True)
class VAEConfig(ModelConfig):
    model: str = "vae"
    prior: str = prior_option()
    prior_components: int = components_option()
    train_samples: int = train_samples_option()
    autoregressive: bool = autoregressive_option()
    autoregressive_hidden: int = autoregressive_hidden_option()
    autoregressive_dropout: float = autoregressive_dropout_option()


class VAE(nn.Module):
    Config = VAEConfig
    labels = "none"  # trained on images alone; labels, if the data has them, are ignored
    classifies = False
    # Fashion-MNIST: the VampPrior paper's gated MLP with a 15-minute schedule beats the conv VAE there at
    # every budget measured (BENCHMARKS.md, Fashion-MNIST); a run that names --arch gets the built-in defaults.
    dataset_defaults = {"fashion-mnist": dict(arch="mlp", hidden=300, hidden_layers=2, gated=True, latent_dim=40,
                                              batch_size=100, lr=1e-3, kl_warmup=10.0, epochs=150)}

    @staticmethod
    def training_defaults(options: dict) -> dict:
        """--prior vamp: a KL warm-up over 100 epochs (the VampPrior paper's). Without it q(z|x) moves onto
        the prior, itself a mixture of posteriors, and the run collapses: on digits at the default 600
        epochs 0 of 16 active units and -log p(x) 26.88 nats, against 15 of 16 and 21.72 with it. A run of
        fewer than 300 --epochs warms up over a third of them. Not for the IWAE bound (--train-samples > 1,
        no KL weight) nor a fine-tuning (--init-from)."""
        if options.get("prior") != "vamp" or options.get("train_samples", 1) > 1 or options.get("init_from"):
            return {}
        return {"kl_warmup": warmup_epochs(options)}

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = make_networks(cfg, self.num_classes)
        self.latent_prior = self.make_latent_prior(cfg)  # p(z) (priors.py)
        self.pixel_context = None  # a(x_<i, z) of the autoregressive likelihood
        hidden, dropout = cfg.autoregressive_hidden, cfg.autoregressive_dropout
        if cfg.autoregressive:
            kind = likelihood_kind(cfg)
            if kind is Bernoulli:
                if dropout:
                    raise VaekitError("--autoregressive-dropout is for the masked convolutions of the discretized "
                                      "likelihoods, and --likelihood bernoulli uses a masked MLP (MADE)")
                self.pixel_context = PixelContext(math.prod(cfg.image_shape), cfg.latent_dim + self.num_classes,
                                                  hidden or cfg.hidden)
            elif kind.discrete:
                self.pixel_context = PixelCNNContext(cfg.image_shape[0], parameter_channels(cfg), hidden or 64,
                                                     dropout=dropout)
            else:
                raise VaekitError(f"--autoregressive models discrete pixels, and --likelihood {cfg.likelihood} is a "
                                  "density of continuous values: use bernoulli, logistic-mixture or discretized-gaussian")
        elif hidden or dropout:
            name = "--autoregressive-hidden sizes" if hidden else "--autoregressive-dropout regularises"
            raise VaekitError(f"{name} the masked network of --autoregressive: add --autoregressive")

    @staticmethod
    def make_latent_prior(cfg: VAEConfig) -> nn.Module:
        """p(z): the --prior of the config."""
        return make_prior(cfg.prior, cfg.latent_dim, cfg.prior_components, cfg.image_shape)

    @property
    def num_classes(self) -> int:
        """Classes the model is conditioned on and can draw (0: none)."""
        return 0

    @property
    def bound(self) -> str:
        """Validated by -IWAE_K when trained on it (an IWAE-trained model's -ELBO gets worse as its likelihood
        gets better, Burda et al. 2016 sec. 5.2), else by -ELBO."""
        return "neg_iwae" if self.cfg.train_samples > 1 else "neg_elbo"

    def condition(self, c: torch.Tensor | None) -> torch.Tensor | None:
        """The one-hot class the networks see: (B, K), or None for an unconditional model."""
        return None

    # ---- inference: q(z | x[, c])
    def posterior(self, x: torch.Tensor, c: torch.Tensor | None = None) -> Independent:
        loc, scale = self.encoder(x, self.condition(c))
        return diagonal_gaussian(loc, scale)

    # ---- generative: p(z[|c]) and p(x | z[, c])
    def prior(self, c: torch.Tensor | None = None) -> Distribution:
        """p(z), event shape (D,): N(0, I), or the --prior mixture."""
        return self.latent_prior(self.posterior)

    def likelihood(self, z: torch.Tensor, c: torch.Tensor | None = None) -> Distribution:
        """p(x | z[, c]) for z: (..., B, D), batch shape (..., B): its log_prob takes images (B, C, H, W)."""
        onehot = self.condition(c)
        out = self.decoder(z, onehot)  # (..., B, C, H, W)
        if isinstance(self.pixel_context, PixelContext):
            context = z if onehot is None else torch.cat([z, onehot], -1)
            return AutoregressiveBernoulli(out, self.pixel_context, context)
        if self.pixel_context is not None:
            return AutoregressivePixels(out, self.pixel_context, lambda params: pixel_likelihood(params, self.cfg))
        return pixel_likelihood(out, self.cfg)

    # ---- objective
    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, *, beta: float | torch.Tensor = 1.0, free_bits: float = 0.0
    ) -> dict[str, torch.Tensor]:
        """Per-image ELBO terms (neg_elbo, recon, kl) and the training loss of a batch (objectives.elbo); with
        --train-samples K > 1, the IWAE bound (objectives.iwae_objective: neg_iwae too), in training and in
        validation, which then selects the best weights on it."""
        c = y if self.num_classes else None
        k = self.cfg.train_samples
        if k > 1:
            if self.training and (free_bits or (not isinstance(beta, torch.Tensor) and beta != 1)):
                raise VaekitError("--train-samples > 1 trains the IWAE bound, which has no KL weight: leave --beta, "
                                  "--kl-warmup and --free-bits at their defaults")
            return iwae_objective(self, x, c, num_samples=k)
        return elbo(self, x, c, beta=beta, free_bits=free_bits)

    def knobs(self, step: int) -> dict[str, float]:
        return {}

    @torch.no_grad()
    def bounds(self, x: torch.Tensor, y: torch.Tensor | None, num_samples: int, chunk: int) -> dict[str, torch.Tensor]:
        """recon, closed-form kl (and per dimension), nll = -IWAE_K; see objectives.gaussian_latent_bounds."""
        return gaussian_latent_bounds(self, x, y if self.num_classes else None, num_samples=num_samples, chunk=chunk)

    def metrics(self, context: EvalContext) -> dict:
        return {}

    # ---- uses
    def sample(self, n: int, labels: torch.Tensor | list[int] | int | None = None) -> torch.Tensor:
        """n images E[x|z,c], z ~ p(z[|c]): (n, C, H, W) in [0, 1]. A CVAE needs `labels` (one int or n ints)."""
        n = check_count(n)
        c = class_labels(labels, n, self.num_classes, self.encoder.out.weight.device)
        prior = self.prior(c)
        z = prior.sample(() if prior.batch_shape else (n,))  # (n, D)
        return likelihood_mean(self.likelihood(z, c))

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x | z = posterior mean]: (B, C, H, W) in [0, 1]."""
        c = y if self.num_classes else None
        return likelihood_mean(self.likelihood(self.posterior(x, c).mean, c))

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The posterior mean E[z | x[, c]]: (B, D)."""
        return self.posterior(x, y if self.num_classes else None).mean

    def decode(self, z: torch.Tensor, labels: torch.Tensor | list[int] | int | None = None, *,
               draw: bool = False) -> torch.Tensor:
        """Images of latent points z: (B, D) -> (B, C, H, W) in [0, 1]: the mean image E[x | z[, c]], or with
        draw=True an image drawn from p(x | z[, c])."""
        c = class_labels(labels, len(z), self.num_classes, z.device)
        return likelihood_image(self.likelihood(z, c), draw)

    def traversal(self, z: torch.Tensor, steps: int = 9) -> torch.Tensor:
        """Each dimension of z: (D,) over its prior's quantiles: (D, steps, D)."""
        return gaussian_traversal(z, steps)


@dataclass(frozen=True)
class CVAEConfig(ModelConfig):
    model: str = "cvae"
    class_prior: bool = _opt(True, "a learned Gaussian prior p(z|c) per class (--no-class-prior: p(z) = N(0, I))")
    train_samples: int = train_samples_option()
    autoregressive: bool = autoregressive_option()  # p(x_i | x_<i, z, c)
    autoregressive_hidden: int = autoregressive_hidden_option()
    autoregressive_dropout: float = autoregressive_dropout_option()


class CVAE(VAE):
    """The VAE with the class c given to both networks (and, by default, a prior per class)."""

    Config = CVAEConfig
    labels = "all"
    # its terms are conditional on the class c: not comparable with an unconditional model's -log p(x)
    names = {"neg_elbo": "-ELBO(x|c)", "recon": "-E_q[log p(x|z,c)]", "kl": "KL(q(z|x,c) || p(z|c))",
             "nll": "-log p(x|c)"}
    dataset_defaults: dict = {}  # measured for the unconditional VAE only

    def __init__(self, cfg: CVAEConfig):
        if cfg.num_classes < 2:
            raise VaekitError("a conditional VAE (--model cvae) needs a labelled dataset with at least 2 classes")
        super().__init__(cfg)
        if cfg.class_prior:  # p(z|c): one row per class, (K, D)
            self.class_prior_loc = nn.Parameter(torch.zeros(cfg.num_classes, cfg.latent_dim))
            self.class_prior_log_scale = nn.Parameter(torch.zeros(cfg.num_classes, cfg.latent_dim))

    @staticmethod
    def make_latent_prior(cfg: CVAEConfig) -> nn.Module:
        """N(0, I): used without a class prior (p(z|c) is the model's own parameters)."""
        return make_prior("normal", cfg.latent_dim, 0, cfg.image_shape)

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def condition(self, c: torch.Tensor | None) -> torch.Tensor:
        if c is None:
            raise VaekitError("a conditional VAE needs class labels c")
        return F.one_hot(c, self.cfg.num_classes).to(self.encoder.out.weight.dtype)

    def prior(self, c: torch.Tensor | None = None) -> Independent:
        """p(z|c) for labels c: (B,) (batch shape (B,)); N(0, I) without a class prior."""
        if not self.cfg.class_prior:
            return super().prior()
        if c is None:
            raise VaekitError("this conditional VAE has a prior per class: p(z|c) needs labels c")
        return diagonal_gaussian(self.class_prior_loc[c], self.class_prior_log_scale[c].exp())

    def metrics(self, context: EvalContext) -> dict:
        """How recognisable its samples of each class are to a judge trained on the real images."""
        return judge_conditional_samples(self, context)
