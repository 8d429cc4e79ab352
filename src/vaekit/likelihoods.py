"""Pixel likelihoods p(x|z): one class each, chosen by name through LIKELIHOODS.

Every likelihood keeps one interface, which the models and objectives already use:

    kind = LIKELIHOODS[name]
    kind.channels(C, cfg)     numbers the decoder outputs per pixel for images of C channels
    kind.build(out, cfg)      the distribution, from the decoder's output out: (..., B, P, H, W)
    dist.log_prob(x)          x: (B, C, H, W) in [0, 1] -> (..., B), summed over the C*H*W values;
                              K latent samples per image (out: (K, B, P, H, W)) share one copy of x
    dist.mean                 E[x|z] as an image (..., B, C, H, W)
    kind.initial_bias(cfg)    (P,) the decoder's starting output per pixel, or None (zeros)
    kind.discrete             whether log_prob is a log-probability of discrete values (then
                              -log2 p(x) / D is bits/dim), or a log-density of real values (nats only)

    bernoulli              binary pixels (BCE on logits)
    gaussian               N(mean, sigma^2) with a fixed sigma: a density of continuous values
    logistic-mixture       PixelCNN++'s discretized logistic mixture (Salimans et al. 2017) over
                           2^bits levels, RGB channels' means linear in the earlier channels
    discretized-gaussian   a Gaussian per value with a learned per-pixel scale, discretized the same way

The discretized ones put the 2^bits = L levels k = 0..L-1 at c_k = k / (L - 1) in [0, 1], each with
the bin [c_k - h, c_k + h], h = 1 / (2 (L - 1)); the bottom bin takes (-inf, c_0 + h] and the top one
[c_{L-1} - h, inf), so the L probabilities sum to 1 exactly (docs/likelihoods.md). A value x in
[0, 1] is in level floor(x L), the top one for x = 1: 8-bit data j/255 is level j at 8 bits and
floor(j / 2^(8 - bits)) at fewer (Glow's 5-bit data), and a value already on the grid stays put.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch.distributions import Distribution, constraints

from .config import DataConfig, ModelConfig
from .data import BINARIZED_RECIPES, ImageDataset
from .distributions import bernoulli_likelihood, gaussian_likelihood
from .errors import VaekitError

# The floor on a discretized component's log-scale: any scale gives a proper distribution; the floor
# keeps the gradients finite when a bin is fitted exactly (PixelCNN++ floors at -7 on its [-1, 1] scale).
MIN_LOG_SCALE = -7.0 - math.log(2.0)
# ... and the ceiling: a scale of e^7 (1100 times the [0, 1] range) is flat over it already; beyond, the
# bin width 2h / s underflows and log P would be -inf.
MAX_LOG_SCALE = 7.0
GAUSSIAN_REACH = 1000.0


def _log_positive(x: torch.Tensor) -> torch.Tensor:
    """log x for x >= 0 that rounding may have made 0: never -inf (a -inf times a 0 mask, or in the
    branch a torch.where drops, still makes a NaN gradient)."""
    return torch.log(x.clamp(min=torch.finfo(x.dtype).tiny))


def levels(bits: int) -> int:
    return 2**bits


def bin_index(x: torch.Tensor, bits: int) -> torch.Tensor:
    """The level k in 0..2^bits - 1 of values x in [0, 1] (same shape, x's dtype): floor(x L), 1 -> L - 1."""
    top = levels(bits) - 1
    return torch.floor(x * levels(bits)).clamp_(0, top)


def log_bin_probability_logistic(k: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor, bits: int) -> torch.Tensor:
    """log P(level k) of a logistic(loc, exp(log_scale)) discretized to 2^bits levels on [0, 1], elementwise.

    With a = (c_k + h - loc) / s and b = (c_k - h - loc) / s, sigma the logistic sigmoid,

        sigma(a) - sigma(b) = sigma(a) (1 - sigma(b)) (1 - exp(-(a - b))),

    (sigma(x) / (1 - sigma(x)) = e^x), so log P = -softplus(-a) - softplus(b) + log(-expm1(-2h / s)):
    no cancellation in either tail. The bottom bin drops the b and width terms (b = -inf), the top one
    the a and width terms (a = +inf)."""
    top = levels(bits) - 1
    h = 0.5 / top
    inv_scale = torch.exp(-log_scale)
    centered = k / top - loc
    a = (centered + h) * inv_scale
    b = (centered - h) * inv_scale
    # 0/1 masks of the constant k (products, not torch.where: cheaper backward passes)
    not_top, not_bottom = (k < top).to(loc.dtype), (k > 0).to(loc.dtype)
    log_width = _log_positive(-torch.expm1(-2 * h * inv_scale))
    return -F.softplus(-a) * not_top - F.softplus(b) * not_bottom + log_width * (not_top * not_bottom)


def log_bin_probability_gaussian(k: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor, bits: int) -> torch.Tensor:
    """log P(level k) of N(loc, exp(log_scale)^2) discretized to 2^bits levels on [0, 1], elementwise.

    log(Phi(a) - Phi(b)) = log Phi(a) + log(-expm1(log Phi(b) - log Phi(a))) with Phi's log from
    log_ndtr; a bin right of the mean (a + b > 0) uses Phi(-b) - Phi(-a) instead, so the subtraction is
    always of two numbers far from 1. Bottom bin: log Phi(a); top bin: log Phi(-b)."""
    top = levels(bits) - 1
    h = 0.5 / top
    inv_scale = torch.exp(-log_scale)
    centered = k / top - loc
    # Beyond 1000 standard deviations a bin's probability is below e^-500000 (0 in float64), and float32's
    # log_ndtr gradient there is wrong or NaN: the edges are clamped to +-1000.
    a = ((centered + h) * inv_scale).clamp(-GAUSSIAN_REACH, GAUSSIAN_REACH)
    b = ((centered - h) * inv_scale).clamp(-GAUSSIAN_REACH, GAUSSIAN_REACH)
    right = a + b > 0
    hi, lo = torch.where(right, -b, a), torch.where(right, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    interior = log_hi + _log_positive(-torch.expm1(torch.special.log_ndtr(lo) - log_hi))
    return torch.where(k == 0, torch.special.log_ndtr(a), torch.where(k == top, torch.special.log_ndtr(-b), interior))


class PixelLikelihood:
    """What every likelihood kind declares (see the module docstring)."""

    name: ClassVar[str]
    discrete: ClassVar[bool]

    @staticmethod
    def channels(image_channels: int, cfg: ModelConfig) -> int:
        return image_channels

    @staticmethod
    def initial_bias(cfg: ModelConfig) -> torch.Tensor | None:
        return None

    @classmethod
    def describe(cls, cfg: ModelConfig) -> str:
        raise NotImplementedError


class Bernoulli(PixelLikelihood):
    name, discrete = "bernoulli", True

    @staticmethod
    def build(out: torch.Tensor, cfg: ModelConfig) -> Distribution:
        return bernoulli_likelihood(out)

    @classmethod
    def describe(cls, cfg: ModelConfig) -> str:
        return "Bernoulli likelihood"


class Gaussian(PixelLikelihood):
    name, discrete = "gaussian", False

    @staticmethod
    def build(out: torch.Tensor, cfg: ModelConfig) -> Distribution:
        return gaussian_likelihood(out, cfg.sigma)

    @classmethod
    def describe(cls, cfg: ModelConfig) -> str:
        return f"Gaussian likelihood, fixed sigma {cfg.sigma:g}"


class DiscretizedLogisticMixture(Distribution, PixelLikelihood):
    """p(x|z) = prod_pixels sum_m pi_m prod_c DLogistic(x_c; mu'_mc, s_mc) over 2^bits levels per value.

    Per pixel and component m (PixelCNN++): a logit, C means, C log-scales and C(C-1)/2 coefficients
    (tanh) that make each channel's mean linear in the earlier channels' observed values:
    mu'_1 = mu_1, mu'_2 = mu_2 + a_m x_1, mu'_3 = mu_3 + b_m x_1 + g_m x_2 (RGB). The mixture is over
    the whole pixel: log p(pixel) = logsumexp_m [log pi_m + sum_c log P(x_c | m)].

    params: (..., B, P, H, W) with P = M (1 + 2C + C(C-1)/2), in the order logits, means, log-scales,
    coefficients (each M-major). The decoder's 0 maps to mean 0.5."""

    name, discrete = "logistic-mixture", True
    arg_constraints: dict = {}
    support = constraints.real  # a discrete set of levels in [0, 1]; not checked (validate_args=False)

    def __init__(self, params: torch.Tensor, image_channels: int, components: int, bits: int):
        c, m = image_channels, components
        pairs = c * (c - 1) // 2
        if params.shape[-3] != m * (1 + 2 * c + pairs):
            raise ValueError(f"expected {m * (1 + 2 * c + pairs)} parameter channels, got {params.shape[-3]}")
        lead, (h, w) = params.shape[:-3], params.shape[-2:]
        self.bits, self.image_channels, self.components = bits, c, m
        # split, not sliced: one concatenation in the backward pass instead of a zero-filled copy per slice
        self.logits, rest = params.split([m, params.shape[-3] - m], dim=-3)  # logits: (..., M, H, W)
        loc, log_scale, coeffs = rest.reshape(*lead, m, 2 * c + pairs, h, w).split([c, c, pairs], dim=-3)
        self.loc = loc + 0.5  # (..., M, C, H, W)
        self.log_scale = log_scale.clamp(MIN_LOG_SCALE, MAX_LOG_SCALE)
        self.coeffs = torch.tanh(coeffs)  # (..., M, C(C-1)/2, H, W)
        super().__init__(lead, torch.Size((c, h, w)), validate_args=False)

    @staticmethod
    def channels(image_channels: int, cfg: ModelConfig) -> int:
        c = image_channels
        return cfg.mixture_components * (1 + 2 * c + c * (c - 1) // 2)

    @staticmethod
    def initial_bias(cfg: ModelConfig) -> torch.Tensor:
        """A fresh decoder's mixture: the M components' means spread evenly over [0, 1] ((m + 1/2) / M) with
        scales 1 / (M + 4), about their spacing. Near uniform over the levels (7.6 bits/dim on the
        natural-image benchmark's training tiles, against 9.8 with every mean at 1/2 and scale 1)."""
        c, m = cfg.image_shape[0], cfg.mixture_components
        bias = torch.zeros(m * (1 + 2 * c + c * (c - 1) // 2))
        per_component = bias[m:].view(m, -1)  # (M, 2C + C(C-1)/2): means, log-scales, coefficients
        per_component[:, :c] = ((torch.arange(m, dtype=bias.dtype) + 0.5) / m - 0.5)[:, None]
        per_component[:, c: 2 * c] = -math.log(m + 4)
        return bias

    @classmethod
    def build(cls, out: torch.Tensor, cfg: ModelConfig) -> DiscretizedLogisticMixture:
        return cls(out, cfg.image_shape[0], cfg.mixture_components, cfg.bits)

    @classmethod
    def describe(cls, cfg: ModelConfig) -> str:
        return (f"discretized logistic mixture, {cfg.mixture_components} components, {cfg.bits} bits "
                f"({levels(cfg.bits)} levels per value)")

    def _means(self, values: torch.Tensor) -> torch.Tensor:
        """mu' given the earlier channels' values (..., 1, C, H, W) (observed, or the means for E[x])."""
        means, pair = [self.loc[..., :, 0, :, :]], 0
        for c in range(1, self.image_channels):
            mean = self.loc[..., :, c, :, :]
            for j in range(c):
                mean = mean + self.coeffs[..., :, pair, :, :] * values[..., :, j, :, :]
                pair += 1
            means.append(mean)
        return torch.stack(torch.broadcast_tensors(*means), -3)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log p(x|z) for images x: (B, C, H, W) in [0, 1]: (..., B)."""
        k = bin_index(value, self.bits).unsqueeze(-4)  # (B, 1, C, H, W)
        centers = k / (levels(self.bits) - 1)
        per_value = log_bin_probability_logistic(k, self._means(centers), self.log_scale, self.bits)
        log_mix = torch.log_softmax(self.logits, dim=-3) + per_value.sum(-3)  # (..., B, M, H, W)
        return torch.logsumexp(log_mix, dim=-3).sum((-2, -1))

    @property
    def mean(self) -> torch.Tensor:
        """E[x|z] per value, (..., B, C, H, W), from the logistics' means (their discretization and the
        edge bins are ignored: a picture, not a number)."""
        means, pair = [], 0
        for c in range(self.image_channels):  # E[x_c | m] from the earlier channels' means
            mean = self.loc[..., :, c, :, :]
            for j in range(c):
                mean = mean + self.coeffs[..., :, pair, :, :] * means[j]
                pair += 1
            means.append(mean)
        weights = torch.softmax(self.logits, dim=-3).unsqueeze(-3)  # (..., M, 1, H, W)
        return (weights * torch.stack(means, -3)).sum(-4)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """Values on the grid k / (L - 1): a component per pixel, then each channel's logistic given the
        earlier channels' drawn values, rounded to the nearest level (edges clamped): exactly the
        discretized distribution."""
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.logits.shape  # (..., M, H, W)
            component = torch.distributions.Categorical(logits=self.logits.movedim(-3, -1).expand(
                *shape[:-3], *shape[-2:], self.components)).sample().unsqueeze(-3)  # (..., 1, H, W)
            top = levels(self.bits) - 1
            pick = lambda t: t.expand(*shape[:-3], *t.shape[-4:]).gather(  # noqa: E731
                -4, component.unsqueeze(-4).expand(*shape[:-3], 1, t.shape[-3], *shape[-2:])).squeeze(-4)
            loc, log_scale, coeffs = pick(self.loc), pick(self.log_scale), pick(self.coeffs)  # (..., C or pairs, H, W)
            values, pair = [], 0
            for c in range(self.image_channels):
                mean = loc[..., c, :, :]
                for j in range(c):
                    mean = mean + coeffs[..., pair, :, :] * values[j]
                    pair += 1
                u = torch.rand_like(mean)  # in [0, 1): u = 0 gives -inf, the bottom level
                x = mean + log_scale[..., c, :, :].exp() * (u.log() - (-u).log1p())  # the logistic's quantile
                values.append(torch.round(x * top).clamp_(0, top) / top)
            return torch.stack(values, -3)


class DiscretizedGaussian(Distribution, PixelLikelihood):
    """p(x|z) = prod_values DGaussian(x; mu, s) over 2^bits levels: a Gaussian with a learned scale per
    value (the decoder outputs C means then C log-scales), discretized like the logistic mixture."""

    name, discrete = "discretized-gaussian", True
    arg_constraints: dict = {}
    support = constraints.real

    def __init__(self, params: torch.Tensor, bits: int):
        c = params.shape[-3] // 2
        self.bits = bits
        loc, log_scale = params.split([c, c], dim=-3)
        self.loc = loc + 0.5
        self.log_scale = log_scale.clamp(MIN_LOG_SCALE, MAX_LOG_SCALE)
        super().__init__(params.shape[:-3], torch.Size((c, *params.shape[-2:])), validate_args=False)

    @staticmethod
    def channels(image_channels: int, cfg: ModelConfig) -> int:
        return 2 * image_channels

    @staticmethod
    def initial_bias(cfg: ModelConfig) -> torch.Tensor:
        """A fresh decoder: means 1/2 with scale 1/4, about the spread of values uniform on [0, 1]."""
        c = cfg.image_shape[0]
        return torch.cat([torch.zeros(c), torch.full((c,), -math.log(4.0))])

    @classmethod
    def build(cls, out: torch.Tensor, cfg: ModelConfig) -> DiscretizedGaussian:
        return cls(out, cfg.bits)

    @classmethod
    def describe(cls, cfg: ModelConfig) -> str:
        return f"discretized Gaussian with a learned scale per value, {cfg.bits} bits ({levels(cfg.bits)} levels)"

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        k = bin_index(value, self.bits)
        return log_bin_probability_gaussian(k, self.loc, self.log_scale, self.bits).sum((-3, -2, -1))

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            top = levels(self.bits) - 1
            shape = torch.Size(sample_shape) + self.loc.shape
            x = self.loc.expand(shape) + self.log_scale.exp().expand(shape) * torch.randn(shape, device=self.loc.device)
            return torch.round(x * top).clamp_(0, top) / top


LIKELIHOODS: dict[str, type] = {k.name: k for k in (Bernoulli, Gaussian, DiscretizedLogisticMixture, DiscretizedGaussian)}


def likelihood_kind(cfg: ModelConfig) -> type:
    """The likelihood class of a model config; "auto" not yet resolved against data (a model built
    directly, not trained) is Bernoulli, vaekit's original default."""
    return LIKELIHOODS["bernoulli" if cfg.likelihood == "auto" else cfg.likelihood]


def pixel_likelihood(out: torch.Tensor, cfg: ModelConfig) -> Distribution:
    """p(x|z) from the decoder's output (..., B, P, H, W), by cfg.likelihood."""
    return likelihood_kind(cfg).build(out, cfg)


def initial_bias(cfg: ModelConfig) -> torch.Tensor | None:
    """(P,): what a fresh decoder outputs per pixel for cfg's likelihood (None: no offset)."""
    return likelihood_kind(cfg).initial_bias(cfg)


def parameter_channels(cfg: ModelConfig) -> int:
    """P: the decoder's outputs per pixel for cfg's likelihood and image channels."""
    return likelihood_kind(cfg).channels(cfg.image_shape[0], cfg)


def choose_likelihood(model_cfg: ModelConfig, data_cfg: DataConfig, dataset: ImageDataset) -> tuple[ModelConfig, str]:
    """The model config with --likelihood auto resolved against the data, and one line that says which
    likelihood models what, and what its numbers mean.

    auto: binary pixels, or the MNIST family (grey levels binarized by their recipes, as always) ->
    bernoulli; 8-bit (uint8) grey or colour -> logistic-mixture; real values in [0, 1] -> gaussian.
    Bernoulli on other non-binary data needs --binarize dynamic or static, given: never silently."""
    name, given = model_cfg.likelihood, model_cfg.likelihood != "auto"
    recipe, binary = dataset.name in BINARIZED_RECIPES, dataset.is_binary
    eight_bit = dataset.train.x.dtype == torch.uint8
    if not given:
        if binary or recipe:
            name = "bernoulli"
        else:
            name = "logistic-mixture" if eight_bit else "gaussian"
    model_cfg = dataclasses.replace(model_cfg, likelihood=name)
    kind = LIKELIHOODS[name]
    colour = "colour" if dataset.image_shape[0] == 3 else "grey-level"
    pixels = (f"binary pixels" if binary else f"8-bit {colour} pixels" if eight_bit and dataset.train.max_value == 255
              else f"{colour} pixels with levels 0..{dataset.train.max_value:g}" if eight_bit
              else f"real-valued {colour} pixels in [0, 1]")
    mode = data_cfg.binarize if data_cfg.binarize != "auto" else "dynamic" if name == "bernoulli" else "none"
    if name == "bernoulli" and not binary and data_cfg.binarize == "auto" and not recipe:
        raise VaekitError(f"{dataset.name} has {pixels}, and the Bernoulli likelihood models binary ones: binarize "
                          "them with --binarize dynamic or static, given, or leave --likelihood out for "
                          f"{'the discretized logistic mixture of the 8-bit values' if eight_bit else 'the Gaussian'}")
    how = "--likelihood" if given else "chosen from the data; --likelihood changes it"
    if name == "bernoulli" and not binary:
        why = f"binarized by its recipe (--binarize {mode})" if recipe and data_cfg.binarize == "auto" else \
            f"binarized (--binarize {mode})"
        meaning = "-log p(x) and bits/dim are of the binarized pixels" if mode != "none" else ""
        return model_cfg, f"vaekit: {dataset.name}: {pixels}, {why}: Bernoulli likelihood ({how}); {meaning}".rstrip("; ")
    if kind.discrete:
        levels_of = "" if name == "bernoulli" else (
            " (the 8-bit values floored to these levels)" if eight_bit and model_cfg.bits < 8 else
            " (each value floored to its level)" if not eight_bit else "")
        meaning = f"-log p(x) and bits/dim are exact for the discrete values{levels_of}"
    else:
        meaning = ("its -log p(x) is a density of continuous values, in nats: not bits/dim of discrete pixels "
                   "(for 8-bit pixels use --likelihood logistic-mixture)")
    return model_cfg, f"vaekit: {dataset.name}: {pixels}: {kind.describe(model_cfg)} ({how}); {meaning}"


__all__ = ["choose_likelihood", "LIKELIHOODS", "Bernoulli", "Gaussian", "DiscretizedLogisticMixture", "DiscretizedGaussian", "bin_index",
           "initial_bias", "likelihood_kind", "parameter_channels", "pixel_likelihood"]
