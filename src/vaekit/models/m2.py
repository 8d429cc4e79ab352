"""The semi-supervised VAE "M2" (Kingma, Rezende, Mohamed & Welling 2014): the label y is a latent
variable, observed where it is known and summed out where it is not.

    generative:  p(y) = Cat(1/K),  p(z) = N(0, I) or a --prior mixture (priors.py),
                 p(x | y, z) = Bernoulli(logits(z, y)) or N(mean(z, y), s^2)
    inference:   q(y | x) = Cat(softmax(classifier(x))),   q(z | x, y) = N(loc(x, y), diag(scale(x, y)^2))

    labelled x, y:   -L(x, y) = -E_q(z|x,y)[log p(x|y,z)] + KL(q(z|x,y) || p(z)) - log p(y)
    unlabelled x:    -U(x)    = sum_y q(y|x) [-L(x, y)] - H(q(y|x))
                              = sum_y q(y|x) [recon_y + KL_z,y] + KL(q(y|x) || p(y))
    training loss:   (sum over the batch of -L or -U  +  alpha * sum over its labelled images of -log q(y|x)) / B
                     (--classifier-shift s: -log q(y|x') there, x' the labelled image moved by up to s pixels)

p(z) does not depend on y. With --prior vamp it is (1/M) sum_m q(z | u_m, y_m): the pseudo-inputs u_m
carry fixed labels y_m = m mod K, so every class has its share of them. The mixtures have no closed-form
KL: z's KL is then the one-sample estimate log q(z|x,y) - log p(z) (objectives.latent_kl).

In training the sum over y is exact: each unlabelled image is decoded as every class in one batched
pass, never with a sampled y. -U(x) is a bound on -log p(x), comparable with the VAE's -ELBO; validation
and evaluation treat every image as unlabelled and score q(y|x) on the known labels separately. The
IWAE estimate of -log p(x) (bounds) samples y with z from q(y|x) q(z|x,y): K samples per image in all,
the VAE's cost at the same K (K per class cost 10x and moved -log p(x) by 0.01 nats on digits).

alpha weighs the classifier's log-loss per labelled image against that image's -ELBO (nats). Kingma
et al. set alpha = 0.1 N on an objective summed over the N training images with the classifier term
averaged over the N_l labelled ones; per labelled image that is 0.1 N / N_l, the default here (about
1.4 on digits with 10 labels per class, 57 on Fashion-MNIST; Pyro's example uses 46). One difference
stays: every batch draws `--labelled-share` of its images from the labelled ones (data.EpochPlan), so
the labelled bounds weigh about (share / (1 - share)) N_u / N_l times more against the unlabelled ones
than in Kingma's objective (13x on digits, 570x on Fashion-MNIST at 10 labels per class). With very
few labels among many images that weight lets q(y|x) memorise the labelled ones, which a smaller share
counters (0.02: one labelled image per batch of 64) and a smaller alpha does not; with few images
overall a small share starves the classifier instead. The default share is therefore 10 x the labelled
fraction, at most 0.5 (prepare.labelled_share: 0.5 on digits at 10 labels per class, 1/64 on
Fashion-MNIST); BENCHMARKS.md
("Semi-supervised classification") has the measurements behind alpha's and the share's defaults.

M1+M2 (Kingma et al.'s stacked model, --init-latents RUN): M2 models the codes z1 of a trained VAE (M1)
instead of the pixels. The VAE is frozen inside this model (`base`), so evaluate and predict take raw
images: x -> z1 = E[z1|x], the VAE's posterior mean (as M1's feature; z1 ~ q(z1|x) in training measured
worse: label error 0.24 against 0.19 on one digits draw) -> M2 on z1 with MLP networks and a diagonal
Gaussian p(z1 | y, z2) of learned scale; pictures decode z1 with the VAE's decoder. The bound is then
on -log p(z1), a density of continuous codes, not a probability of the pixels.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, Independent

from ..augment import random_shift
from ..classifier import judge_conditional_samples
from ..config import ModelConfig, _opt, from_dict, to_dict
from ..distributions import diagonal_gaussian, kl_per_dim, likelihood_image
from ..errors import VaekitError
from ..likelihoods import pixel_likelihood
from ..nets import Decoder, Encoder, make_classifier, make_networks
from ..objectives import iwae_bound, latent_kl
from ..priors import components_option, make_prior, prior_option
from .base import EvalContext, check_count, class_labels, gaussian_traversal
from .vae import VAE, VAEConfig


@dataclass(frozen=True)
class M2Config(ModelConfig):
    model: str = "m2"
    prior: str = prior_option()
    prior_components: int = components_option()
    alpha: float | None = _opt(None, "weight of -log q(y|x) per labelled image, against that image's -ELBO "
                               "(default: Kingma et al.'s 0.1 N / N_labelled; 0 turns the classifier term off)", low=0)
    classifier_dropout: float = _opt(0.5, "dropout before q(y|x)'s logits in training (regularises the classifier "
                                     "on few labels)", low=0, high=1, high_open=True)
    classifier_shift: int = _opt(0, "in training, the classifier's log-loss sees each labelled image moved by up "
                                 "to this many pixels (a random translation each time)", low=0, high=256)
    init_latents: str | None = _opt(None, "a run of --model vae: M2 models its latent codes (M1+M2, Kingma et al.'s "
                                    "stacked model); evaluate and predict still take images")
    # Filled in from the data, not from flags: N_labelled / N of the training images.
    labelled_fraction: float = 1.0
    # Filled in from --init-latents: the VAE's model config (its weights are part of this model's).
    base: dict | None = None


class M2(nn.Module):
    Config = M2Config
    labels = "some"  # y = -1 marks an image whose label is unknown
    classifies = True  # predict_proba: its q(y|x)
    bound = "neg_elbo"  # the per-example term validation keeps the best weights by

    def __init__(self, cfg: M2Config):
        super().__init__()
        if cfg.num_classes < 2:
            raise VaekitError("--model m2 needs labels with at least 2 classes (y = -1 for the unknown ones)")
        self.cfg = cfg
        if cfg.base is not None:  # M1+M2: the networks see the VAE's codes z1, not the pixels
            self.base = VAE(from_dict(VAEConfig, cfg.base)).requires_grad_(False)
            self.classifier, self.encoder, self.decoder = code_networks(cfg, self.base.cfg.latent_dim)
        else:
            self.classifier = make_classifier(cfg, cfg.num_classes)  # q(y|x)
            self.encoder, self.decoder = make_networks(cfg, cfg.num_classes)  # q(z|x,y), p(x|y,z)
        self.latent_prior = make_prior(cfg.prior, cfg.latent_dim, cfg.prior_components, cfg.image_shape)  # p(z)
        # the labels of the VampPrior's pseudo-inputs, m mod K (non-persistent: rebuilt from the config)
        self.register_buffer("pseudo_labels", torch.arange(cfg.prior_components) % cfg.num_classes, persistent=False)
        self.alpha = 0.1 / max(cfg.labelled_fraction, 1e-12) if cfg.alpha is None else cfg.alpha

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    # ---- M1+M2: the run it is built on (prepare.py reads it and loads its weights into `base`)
    @staticmethod
    def base_run(cfg: M2Config) -> str | None:
        return cfg.init_latents

    @staticmethod
    def with_base(cfg: M2Config, base: ModelConfig) -> M2Config:
        if base.model != "vae":
            raise VaekitError(f"--init-latents needs a run of --model vae, got a run of --model {base.model}")
        if cfg.prior == "vamp":  # its pseudo-inputs are images, and M1+M2's encoder reads codes
            raise VaekitError("--init-latents works with --prior normal or mixture, not vamp")
        if tuple(base.image_shape) != tuple(cfg.image_shape):
            raise VaekitError(f"--init-latents: that run's images are {tuple(base.image_shape)}, these are "
                              f"{tuple(cfg.image_shape)}")
        return dataclasses.replace(cfg, base=to_dict(base))

    @property
    def names(self) -> dict[str, str]:
        if self.cfg.base is None:
            return {}
        return {"neg_elbo": "-ELBO(z1)", "recon": "-E_q[log p(z1|y,z2)]", "kl": "KL(q(y,z2|z1) || p(y,z2))",
                "nll": "-log p(z1)"}

    @property
    def density(self) -> str | None:
        """What the bound measures when it is not a probability of the pixels (M1+M2)."""
        if self.cfg.base is None:
            return None
        return "-log p(z1) is a density of the VAE's continuous codes z1, in nats: not a probability of the pixels"

    def _codes(self, x: torch.Tensor) -> torch.Tensor:
        """What M2 models: the images, or (M1+M2) the VAE's codes z1 = E[z1|x]: (B, D1)."""
        return x if self.cfg.base is None else self.base.posterior(x).mean

    def _images(self, likelihood: Distribution, draw: bool = False) -> torch.Tensor:
        """Images of p(x|y,z): its mean (or a draw); M1+M2 decodes the mean (or a draw) of p(z1|y,z2)."""
        if self.cfg.base is None:
            return likelihood_image(likelihood, draw)
        return self.base.decode(likelihood.sample() if draw else likelihood.mean, draw=draw)

    # ---- inference: q(y | x) and q(z | x, y)
    def label_posterior(self, x: torch.Tensor) -> torch.Tensor:
        """log q(y|x): (B, K); in training with --classifier-dropout before the logits layer."""
        features = self.classifier[:-1](x)
        features = F.dropout(features, self.cfg.classifier_dropout, self.training)
        return F.log_softmax(self.classifier[-1](features), dim=-1)

    def posterior(self, x: torch.Tensor, y: torch.Tensor, features: torch.Tensor | None = None) -> Independent:
        """q(z|x,y); `features`: the encoder body's output for x, when it was computed once for every class."""
        loc, scale = self.encoder.head(self.encoder.body(x) if features is None else features, self._onehot(y))
        return diagonal_gaussian(loc, scale)

    # ---- generative: p(z), p(y) uniform, p(x | y, z)
    def prior(self, y: torch.Tensor | None = None) -> Distribution:
        """p(z), event shape (D,), the same for every y: N(0, I) or the --prior mixture."""
        return self.latent_prior(lambda u: self.posterior(u, self.pseudo_labels[: len(u)]))

    def likelihood(self, z: torch.Tensor, y: torch.Tensor) -> Independent:
        out = self.decoder(z, self._onehot(y))
        if self.cfg.base is not None:  # p(z1 | y, z2): (..., 2, D1) -> a diagonal Gaussian of learned scale
            return diagonal_gaussian(out[..., 0, :], F.softplus(out[..., 1, :]) + 1e-3)
        return pixel_likelihood(out, self.cfg)

    def _onehot(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, self.cfg.num_classes).to(self.encoder.out.weight.dtype)

    def _every_class(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image once per class, class-major: x (B, ...) -> (K*B, ...), y (K*B,) = 0..0, 1..1, ..."""
        k = self.cfg.num_classes
        return x.repeat(k, *([1] * (x.dim() - 1))), torch.arange(k, device=x.device).repeat_interleave(len(x))

    def _neg_elbo_given_y(self, x: torch.Tensor, y: torch.Tensor, prior: Distribution,
                          features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One reparameterised sample: -log p(x|y,z) and KL(q(z|x,y) || p(z)), each (B,)."""
        if not len(x):  # a batch without labelled (or without unlabelled) images: no terms, not an error
            return x.new_zeros(0), x.new_zeros(0)
        posterior = self.posterior(x, y, features)
        z = posterior.rsample()
        recon = -self.likelihood(z, y).log_prob(x)
        return recon, latent_kl(posterior, prior, z)[0]

    # ---- objective
    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, *, beta: float | torch.Tensor = 1.0, free_bits: float = 0.0
    ) -> dict[str, torch.Tensor]:
        if free_bits:
            raise VaekitError("--free-bits is not defined for --model m2 (its KL mixes classes): leave it at 0")
        y = torch.full((len(x),), -1, device=x.device) if y is None else y
        images, x = x, self._codes(x)
        log_qy = self.label_posterior(x)  # (B, K)
        prior = self.prior()  # once per batch (the VampPrior encodes its pseudo-inputs)
        known = y >= 0
        if not self.training:  # validation: every image as unlabelled (a bound on -log p(x)), q(y|x) scored apart
            known_y = y[known]
            terms = self._unlabelled(x, log_qy, prior, beta)
            del terms["weighted"]
            terms["classifier_nll"] = -log_qy[known].gather(1, known_y[:, None])[:, 0]
            terms["label_error"] = (log_qy[known].argmax(-1) != known_y).float()
            terms["loss"] = terms["neg_elbo"].mean()
            return terms
        xl, yl, log_qy_l = x[known], y[known], log_qy[known]
        if self.cfg.classifier_shift:  # the classifier's term on translated copies of the labelled images
            log_qy_l = self.label_posterior(self._codes(random_shift(images[known], self.cfg.classifier_shift)))
        recon_l, kl_l = self._neg_elbo_given_y(xl, yl, prior)
        log_k = math.log(self.cfg.num_classes)  # -log p(y)
        labelled = recon_l + kl_l + log_k
        classifier_nll = -log_qy_l.gather(1, yl[:, None])[:, 0]
        terms = self._unlabelled(x[~known], log_qy[~known], prior, beta)
        loss = (terms.pop("weighted").sum() + (recon_l + beta * kl_l + log_k).sum()
                + self.alpha * classifier_nll.sum()) / len(x)
        return {"loss": loss, **terms, "labelled_neg_elbo": labelled, "classifier_nll": classifier_nll}

    def _unlabelled(self, x: torch.Tensor, log_qy: torch.Tensor, prior: Distribution,
                    beta: float | torch.Tensor) -> dict[str, torch.Tensor]:
        """-U(x) = recon + kl with y summed out exactly; `weighted` has the KL of z weighted by beta."""
        k = self.cfg.num_classes
        qy = log_qy.exp()  # (B, K)
        features = self.encoder.body(x).repeat(k, 1)  # (K*B, F): the encoder's body once per image, not per class
        recon_y, kl_y = (t.view(k, len(x)).T for t in self._neg_elbo_given_y(*self._every_class(x), prior, features))
        recon = (qy * recon_y).sum(-1)
        kl_z = (qy * kl_y).sum(-1)
        kl_label = label_kl(log_qy)
        return {"neg_elbo": recon + kl_z + kl_label, "recon": recon, "kl": kl_z + kl_label,
                "weighted": recon + beta * kl_z + kl_label}

    def knobs(self, step: int) -> dict[str, float]:
        return {}

    @torch.no_grad()
    def bounds(self, x: torch.Tensor, y: torch.Tensor | None, num_samples: int, chunk: int) -> dict[str, torch.Tensor]:
        """Per image, importance sampling over the whole latent (y, z) with the proposal q(y|x) q(z|x,y):

            nll   = -log (1/K) sum_k p(x|y_k,z_k) p(z_k) p(y_k) / (q(z_k|x,y_k) q(y_k|x)),
                    y_k ~ q(y|x), z_k ~ q(z|x,y_k)                 (IWAE_K over (y, z), Burda et al. 2016)
            recon = -(1/K) sum_k log p(x|y_k,z_k)
            kl    = sum_y q(y|x) KL(q(z|x,y) || p(z)) + KL(q(y|x) || p(y))   (closed form where it exists)
            label_error on the known labels

        K samples per image in all, not K per class: the cost of the VAE's IWAE at the same K, and like
        it a bound that rises to log p(x) as K grows (an image the classifier is unsure of spreads its
        samples over its likely classes)."""
        k, b = self.cfg.num_classes, len(x)
        x = self._codes(x)
        log_qy = self.label_posterior(x)  # (B, K)
        qy = log_qy.exp()
        prior = self.prior()
        xs, ys = self._every_class(x)
        every = self.posterior(xs, ys, self.encoder.body(x).repeat(k, 1))  # q(z|x,y) for every y: batch (K*B,)
        loc, scale = (t.view(k, b, -1) for t in (every.mean, every.stddev))  # (K, B, D)
        log_w, log_lik = [], []
        for start in range(0, num_samples, chunk):
            n = min(chunk, num_samples - start)
            y_k = torch.multinomial(qy, n, replacement=True).T  # (n, B)
            pick = y_k[..., None].expand(-1, -1, loc.shape[-1])  # (n, B, D)
            posterior = diagonal_gaussian(loc.gather(0, pick), scale.gather(0, pick))  # q(z|x,y_k): batch (n, B)
            z = posterior.sample()
            ll = self.likelihood(z, y_k).log_prob(x)  # (n, B)
            log_lik.append(ll)
            log_w.append(ll + prior.log_prob(z) - posterior.log_prob(z) - math.log(k) - log_qy.T.gather(0, y_k))
        log_w, log_lik = torch.cat(log_w), torch.cat(log_lik)
        terms = {"recon": -log_lik.mean(0), "nll": -iwae_bound(log_w)}
        kl_label = label_kl(log_qy)
        per_dim = kl_per_dim(every, prior)  # (K*B, D), or None for a mixture prior
        if per_dim is None:  # the K-sample estimate of the whole KL, so that -ELBO = recon + kl
            terms["kl"] = (log_lik - log_w).mean(0)
        else:
            terms["kl_per_dim"] = (qy.T[..., None] * per_dim.view(k, b, -1)).sum(0)  # (B, D)
            terms["kl"] = terms["kl_per_dim"].sum(-1) + kl_label
        y = torch.full((b,), -1, device=x.device) if y is None else y
        terms["label_error"] = (log_qy.argmax(-1) != y)[y >= 0].float()
        return terms

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """q(y|x): (B, K)."""
        return self.label_posterior(self._codes(x)).exp()

    def metrics(self, context: EvalContext) -> dict:
        """How recognisable its samples of each class are, judged as the CVAE's are."""
        return judge_conditional_samples(self, context)

    # ---- uses
    def sample(self, n: int, labels: torch.Tensor | list[int] | int | None = None) -> torch.Tensor:
        """n images E[x|y,z], z ~ p(z): (n, C, H, W) in [0, 1], for labels y (one int or n ints)."""
        n = check_count(n)
        y = class_labels(labels, n, self.num_classes, self.encoder.out.weight.device)
        return self._images(self.likelihood(self.prior().sample((n,)), y))

    def _known_or_predicted(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        guess = self.label_posterior(x).argmax(-1)
        return guess if y is None else torch.where(y >= 0, y, guess)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[z | x, y], with y the known label or else the classifier's guess: (B, D)."""
        x = self._codes(x)
        return self.posterior(x, self._known_or_predicted(x, y)).mean

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = self._codes(x)
        y = self._known_or_predicted(x, y)
        return self._images(self.likelihood(self.posterior(x, y).mean, y))

    def decode(self, z: torch.Tensor, labels: torch.Tensor | list[int] | int | None = None, *,
               draw: bool = False) -> torch.Tensor:
        """The mean image E[x | y, z] of latent points z: (B, D) and labels (draw=True: an image drawn from p(x|y,z))."""
        return self._images(self.likelihood(z, class_labels(labels, len(z), self.num_classes, z.device)), draw)

    def traversal(self, z: torch.Tensor, steps: int = 9) -> torch.Tensor:
        """Each dimension of z: (D,) over its prior's quantiles: (D, steps, D)."""
        return gaussian_traversal(z, steps)


def label_kl(log_qy: torch.Tensor) -> torch.Tensor:
    """KL(q(y|x) || p(y)) with p(y) uniform over the K classes, from log q(y|x): (B, K) -> (B,)."""
    return (log_qy.exp() * (log_qy + math.log(log_qy.shape[-1]))).sum(-1)


def code_networks(cfg: M2Config, code_dim: int) -> tuple[nn.Module, Encoder, Decoder]:
    """M1+M2's MLPs on codes z1: (B, D1): q(y|z1) (a hidden layer), q(z2|z1,y) and p(z1|y,z2) -> (B, 2, D1)."""
    classifier = nn.Sequential(nn.Linear(code_dim, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.num_classes))
    k = cfg.num_classes
    encoder = Encoder(nn.Identity(), code_dim, k, cfg.hidden, cfg.latent_dim, cfg.hidden_layers, cfg.gated)
    decoder = Decoder([], (2, code_dim), k, cfg.hidden, cfg.latent_dim, False, cfg.hidden_layers, cfg.gated)
    return classifier, encoder, decoder
