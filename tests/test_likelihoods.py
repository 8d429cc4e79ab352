"""The discretized likelihoods against closed forms: bins, normalisation, brute force, IWAE broadcasting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vaekit.config import DataConfig
from vaekit.data import Split, training_targets
from vaekit.likelihoods import (
    LIKELIHOODS, DiscretizedGaussian, DiscretizedLogisticMixture, bin_index, likelihood_kind, parameter_channels,
)
from vaekit.models.hvae import HVAE, HVAEConfig
from vaekit.models.vae import VAE, VAEConfig
from vaekit.objectives import importance_samples

DISCRETE = ("logistic-mixture", "discretized-gaussian")


def random_params(kind: str, c: int, bits: int, lead=(2,), hw=(2, 3), components=3, seed=0) -> torch.Tensor:
    cfg = VAEConfig(likelihood=kind, bits=bits, mixture_components=components, image_shape=(c, *hw))
    g = torch.Generator().manual_seed(seed)
    params = torch.randn(*lead, parameter_channels(cfg), *hw, generator=g, dtype=torch.float64)
    return params, cfg


def every_value(c: int, bits: int) -> torch.Tensor:
    """All (2^bits)^c pixels of c channels on the grid k / (L - 1): (N, c, 1, 1), float64."""
    top = 2**bits - 1
    grid = torch.cartesian_prod(*[torch.arange(top + 1, dtype=torch.float64)] * c).reshape(-1, c) / top
    return grid[:, :, None, None]


@pytest.mark.parametrize("bits", [8, 5, 1])
def test_extreme_values_land_in_the_edge_bins(bits):
    top = 2**bits - 1
    uint8 = torch.tensor([0, 1, 7, 8, 127, 128, 247, 248, 254, 255], dtype=torch.uint8)
    split = Split(uint8.reshape(-1, 1, 1, 1), None, 255.0)
    x, _ = training_targets(split, "none", 0, "cpu").batch(torch.arange(len(uint8)))  # as training sees them
    k = bin_index(x.flatten(), bits)
    assert k[0] == 0 and k[-1] == top  # 0 -> the bottom bin, 255 -> exactly the top one
    assert torch.equal(k, torch.div(uint8.long(), 2 ** (8 - bits), rounding_mode="floor").float())  # floor(j / 2^(8-b))
    on_grid = torch.arange(top + 1, dtype=torch.float32) / top  # a value already on the grid stays put
    assert torch.equal(bin_index(on_grid, bits), torch.arange(top + 1, dtype=torch.float32))


@pytest.mark.parametrize("kind", DISCRETE)
@pytest.mark.parametrize("c, bits", [(1, 8), (3, 3), (1, 5)])
def test_probabilities_of_all_values_sum_to_one(kind, c, bits):
    params, cfg = random_params(kind, c, bits, lead=(1,), hw=(1, 1), components=4)
    params = params * 2  # wide and narrow components, means inside and outside [0, 1]
    dist = LIKELIHOODS[kind].build(params, cfg)
    values = every_value(c, bits)  # (N, c, 1, 1): every pixel value
    log_p = dist.log_prob(values)  # (N,): params broadcast over the N "images"
    assert log_p.dtype == torch.float64
    assert float(torch.logsumexp(log_p, 0).exp()) == pytest.approx(1.0, abs=1e-12)


def logistic_cdf(x):
    return 1 / (1 + math.exp(-x)) if x > -700 else 0.0


def gaussian_cdf(x):
    return 0.5 * math.erfc(-x / math.sqrt(2))


def brute_force(kind: str, params: np.ndarray, x: np.ndarray, c: int, m: int, bits: int) -> float:
    """log p(x) of one image x: (c, H, W) from params: (P, H, W), pixel by pixel, from the CDFs' differences."""
    top = 2**bits - 1
    h = 0.5 / top
    total = 0.0
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            k = [min(math.floor(x[ch, i, j] * (top + 1)), top) for ch in range(c)]
            v = [kk / top for kk in k]

            def bin_prob(cdf, kk, loc, scale):
                upper = 1.0 if kk == top else cdf((v_c(kk) + h - loc) / scale)
                lower = 0.0 if kk == 0 else cdf((v_c(kk) - h - loc) / scale)
                return upper - lower

            def v_c(kk):
                return kk / top

            p = params[:, i, j]
            if kind == "discretized-gaussian":
                prob = 1.0
                for ch in range(c):
                    prob *= bin_prob(gaussian_cdf, k[ch], p[ch] + 0.5, math.exp(max(p[c + ch], -7 - math.log(2))))
                total += math.log(prob)
                continue
            pairs = c * (c - 1) // 2
            logits, rest = p[:m], p[m:].reshape(m, 2 * c + pairs)
            weights = np.exp(logits - logits.max())
            weights /= weights.sum()
            prob = 0.0
            for comp in range(m):
                loc, log_s, coef = rest[comp, :c] + 0.5, rest[comp, c:2 * c], np.tanh(rest[comp, 2 * c:])
                means = [loc[0]]
                if c == 3:
                    means += [loc[1] + coef[0] * v[0], loc[2] + coef[1] * v[0] + coef[2] * v[1]]
                pc = weights[comp]
                for ch in range(c):
                    pc *= bin_prob(logistic_cdf, k[ch], means[ch], math.exp(max(log_s[ch], -7 - math.log(2))))
                prob += pc
            total += math.log(prob)
    return total


@pytest.mark.parametrize("kind", DISCRETE)
@pytest.mark.parametrize("c, bits", [(3, 8), (1, 8), (3, 5)])
def test_log_prob_matches_the_closed_form(kind, c, bits):
    params, cfg = random_params(kind, c, bits, lead=(2,), hw=(2, 3), components=3, seed=c + bits)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (2, c, 2, 3), generator=g).double() / 255
    x[0, :, 0, 0], x[1, :, 0, 1] = 0.0, 1.0  # the edge bins too
    got = LIKELIHOODS[kind].build(params, cfg).log_prob(x)
    want = [brute_force(kind, params[b].numpy(), x[b].numpy(), c, 3, bits) for b in range(2)]
    assert got.tolist() == pytest.approx(want, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("kind", DISCRETE)
def test_float32_matches_float64(kind):
    params, cfg = random_params(kind, 3, 8, lead=(4,), hw=(4, 4))
    x = torch.randint(0, 256, (4, 3, 4, 4), generator=torch.Generator().manual_seed(2)).double() / 255
    wide = LIKELIHOODS[kind].build(params, cfg).log_prob(x)
    narrow = LIKELIHOODS[kind].build(params.float(), cfg).log_prob(x.float())
    assert narrow.double().tolist() == pytest.approx(wide.tolist(), rel=1e-5)


@pytest.mark.parametrize("kind", DISCRETE)
def test_log_prob_broadcasts_over_latent_samples(kind):
    """likelihood(z: (K, B, D)).log_prob(x: (B, ...)) = each sample's own log_prob of its image."""
    params, cfg = random_params(kind, 3, 8, lead=(5, 2), hw=(4, 4))
    x = torch.randint(0, 256, (2, 3, 4, 4), generator=torch.Generator().manual_seed(3)).double() / 255
    together = LIKELIHOODS[kind].build(params, cfg).log_prob(x)
    assert together.shape == (5, 2)
    one_by_one = torch.stack([torch.stack([LIKELIHOODS[kind].build(params[k, b:b + 1], cfg).log_prob(x[b:b + 1])[0]
                                           for b in range(2)]) for k in range(5)])
    assert torch.allclose(together, one_by_one, rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", DISCRETE)
def test_samples_lie_on_the_grid_and_follow_the_probabilities(kind):
    params, cfg = random_params(kind, 1, 2, lead=(1,), hw=(1, 1), components=2, seed=5)
    dist = LIKELIHOODS[kind].build(params, cfg)
    torch.manual_seed(0)
    draws = dist.sample((40000,)).flatten()  # 2 bits: levels 0, 1/3, 2/3, 1
    counts = torch.bincount(torch.round(draws * 3).long(), minlength=4).double() / len(draws)
    probs = dist.log_prob(every_value(1, 2)).exp()
    assert torch.allclose(counts, probs, atol=0.015)  # 40,000 draws: standard error <= 0.0025


@pytest.mark.parametrize("model_cls, cfg_cls", [(VAE, VAEConfig), (HVAE, HVAEConfig)])
@pytest.mark.parametrize("kind", DISCRETE)
def test_models_take_the_discretized_likelihoods(model_cls, cfg_cls, kind):
    torch.manual_seed(0)
    model = model_cls(cfg_cls(likelihood=kind, arch="resnet", width=4, hidden=16, latent_dim=3, image_shape=(3, 8, 8)))
    x = torch.randint(0, 256, (5, 3, 8, 8)).float() / 255
    terms = model(x)
    assert terms["neg_elbo"].shape == (5,) and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    if model_cls is VAE:
        s = importance_samples(model, x, num_samples=4, chunk=3)
        assert s["log_weights"].shape == (4, 5)
    assert model.sample(3).shape == (3, 3, 8, 8)


@pytest.mark.parametrize("arch", ["conv", "resnet", "mlp"])
@pytest.mark.parametrize("kind", DISCRETE)
@pytest.mark.parametrize("channels", [1, 3])
def test_a_fresh_decoder_starts_near_uniform_over_the_levels(arch, kind, channels, monkeypatch):
    """The likelihood's initial_bias: a fresh model pays about 8 bits per value for the 256 grey levels,
    where the decoder's zeros alone (mean 1/2, scale 1) pay 0.4 to 1.9 bits more."""
    def fresh_bits() -> torch.Tensor:
        torch.manual_seed(0)
        model = VAE(VAEConfig(likelihood=kind, arch=arch, width=4, hidden=16, latent_dim=3,
                              image_shape=(channels, 8, 8)))
        x = torch.arange(256.0).view(256, 1, 1, 1).expand(256, channels, 8, 8) / 255
        with torch.no_grad():
            return -model.likelihood(torch.zeros(256, 3)).log_prob(x).mean() / (x[0].numel() * math.log(2))

    started = fresh_bits()
    monkeypatch.setattr(LIKELIHOODS[kind], "initial_bias", staticmethod(lambda cfg: None))
    zeros = fresh_bits()
    assert started < 9.0 and zeros - started > 0.3


def test_auto_is_bernoulli_without_data():
    assert likelihood_kind(VAEConfig()).name == "bernoulli"
    assert DiscretizedLogisticMixture.discrete and DiscretizedGaussian.discrete
    assert not LIKELIHOODS["gaussian"].discrete
    assert DataConfig().binarize == "auto"


@pytest.mark.parametrize("kind", DISCRETE)
def test_extreme_parameters_give_finite_values_and_gradients(kind):
    """Scales far beyond either end and means far outside [0, 1], in float32 as training runs."""
    params, cfg = random_params(kind, 3, 8, lead=(6,), hw=(2, 2))
    params = params.float()
    params[0] *= 80  # huge and tiny scales, far means
    params[1] -= 60
    params[2] += 60
    params[3] = 0.0
    params.requires_grad_(True)
    x = torch.randint(0, 256, (6, 3, 2, 2), generator=torch.Generator().manual_seed(4)).float() / 255
    x[:, :, 0, 0], x[:, :, 1, 1] = 0.0, 1.0
    log_p = LIKELIHOODS[kind].build(params, cfg).log_prob(x)
    log_p.sum().backward()
    assert torch.isfinite(log_p).all() and torch.isfinite(params.grad).all()
