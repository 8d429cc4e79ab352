"""The identities of docs/theory.md, checked numerically through the functions training uses.

Most checks run on a linear-Gaussian latent model, where every quantity has a closed form:

    p(z) = N(0, I_d),   p(x | z) = N(W z + b, s^2 I_D)
    =>  p(x) = N(b, W W^T + s^2 I),   p(z | x) = N(S W^T (x - b) / s^2, S),  S = (I + W^T W / s^2)^-1

and q(z|x) is any diagonal Gaussian we choose. The model below exposes posterior / prior /
likelihood built from vaekit.distributions, so vaekit.objectives treats it like any VAE.
The references (log p(x), the exact posterior) use torch's MultivariateNormal, not vaekit.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import MultivariateNormal, kl_divergence


from vaekit.distributions import (
    bernoulli_likelihood,
    diagonal_gaussian,
    gaussian_likelihood,
    gaussian_nll_constant,
    standard_normal,
)
from vaekit.evaluate import evaluate
from vaekit.models import VAE
from vaekit.models.vae import VAEConfig
from vaekit.objectives import elbo, gaussian_latent_bounds, importance_samples, iwae_bound

LATENT, PIXELS = 2, 5  # d, D


@pytest.fixture(autouse=True)
def _float64():
    """Exact identities are checked in float64 (vaekit's priors follow the default dtype)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class LinearGaussian:
    """p(z) = N(0, I), p(x|z) = N(Wz + b, s^2 I); q(z|x) = N(A (x - b) + m, diag(scale^2)).

    x: (B, 1, 1, D) so that the pixel likelihood sums over the same 3 image dimensions as for images.
    """

    labels = "none"  # the model contract (models/base.py), as far as evaluate() asks

    def __init__(self, W, b, s: float, A, m, scale):
        """W: (D, d), b: (D,), s: the pixel noise; A: (d, D), m: (d,), scale: (d,) parametrize q."""
        self.W, self.b, self.s, self.A, self.m, self.scale = W, b, s, A, m, scale

    # ---- the three pieces the objectives use
    def posterior(self, x: torch.Tensor, c=None):
        loc = (x.flatten(1) - self.b) @ self.A.T + self.m
        return diagonal_gaussian(loc, self.scale.expand_as(loc))

    def prior(self, c=None):
        return standard_normal(self.W.shape[1])

    def likelihood(self, z: torch.Tensor, c=None):
        return gaussian_likelihood((z @ self.W.T + self.b).view(*z.shape[:-1], 1, 1, self.W.shape[0]), self.s)

    def eval(self):
        return self

    # ---- what evaluate() asks of a model (models/base.py)
    def bounds(self, x, y, num_samples, chunk):
        return gaussian_latent_bounds(self, x, num_samples=num_samples, chunk=chunk)

    def encode(self, x, y=None):
        return self.posterior(x).mean

    # ---- closed-form references
    def evidence(self) -> MultivariateNormal:
        """p(x) = N(b, W W^T + s^2 I)."""
        cov = self.W @ self.W.T + self.s**2 * torch.eye(self.W.shape[0])
        return MultivariateNormal(self.b, cov)

    def log_evidence(self, x: torch.Tensor) -> torch.Tensor:
        return self.evidence().log_prob(x.flatten(1))

    def exact_posterior_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(G, S): p(z|x) = N(G (x - b), S)."""
        d = self.W.shape[1]
        S = torch.linalg.inv(torch.eye(d) + self.W.T @ self.W / self.s**2)
        return S @ self.W.T / self.s**2, S

    def exact_posterior(self, x: torch.Tensor) -> MultivariateNormal:
        G, S = self.exact_posterior_params()
        return MultivariateNormal((x.flatten(1) - self.b) @ G.T, S)

    def with_q(self, A: torch.Tensor, m: torch.Tensor, scale: torch.Tensor) -> LinearGaussian:
        return LinearGaussian(self.W, self.b, self.s, A, m, scale)


def make_model(seed: int, *, orthogonal: bool = False) -> LinearGaussian:
    """A random linear-Gaussian model with an arbitrary (wrong) q. With orthogonal columns of W the
    exact posterior covariance is diagonal, so q can also be set to the exact posterior."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(PIXELS, LATENT, generator=g)
    if orthogonal:
        Q, _ = torch.linalg.qr(W)
        W = Q * torch.tensor([2.0, 0.7])
    b = torch.randn(PIXELS, generator=g)
    A = 0.3 * torch.randn(LATENT, PIXELS, generator=g)
    m = 0.5 * torch.randn(LATENT, generator=g)
    scale = 0.4 + torch.rand(LATENT, generator=g)
    return LinearGaussian(W, b, 0.6, A, m, scale)


def exactly_inferred(model: LinearGaussian) -> LinearGaussian:
    G, S = model.exact_posterior_params()
    assert torch.allclose(S, torch.diag(torch.diag(S)), atol=1e-12), "needs a diagonal exact posterior"
    return model.with_q(G, torch.zeros(LATENT), torch.diag(S).sqrt())


def imperfectly_inferred(model: LinearGaussian, shift: float, widen: float) -> LinearGaussian:
    """q = the exact posterior with its mean moved by `shift` standard deviations and its scale times `widen`."""
    exact = exactly_inferred(model)
    return model.with_q(exact.A, shift * exact.scale, widen * exact.scale)


def data(model: LinearGaussian, n: int, seed: int) -> torch.Tensor:
    """n draws from the model's p(x), shaped (n, 1, 1, D)."""
    g = torch.Generator().manual_seed(seed)
    root = torch.linalg.cholesky(model.evidence().covariance_matrix)
    return (model.b + torch.randn(n, PIXELS, generator=g) @ root.T).view(n, 1, 1, PIXELS)


def expect_exactly(q, f) -> torch.Tensor:
    """E_{z ~ q}[f(z)] for a diagonal Gaussian q of batch (B,) over (d,), exact when f is a polynomial
    of degree <= 3 in z (every log-density of the linear-Gaussian model is quadratic in z).

    The 2d points loc +- sqrt(d) scale_i e_i, each of weight 1/(2d), have q's mean and covariance and
    symmetric odd moments, so they integrate quadratics exactly. f maps (2d, B, d) to (2d, B).
    """
    loc, scale = q.base_dist.loc, q.base_dist.scale
    d = loc.shape[-1]
    offsets = math.sqrt(d) * torch.cat([torch.eye(d), -torch.eye(d)])  # (2d, d)
    return f(loc + offsets[:, None, :] * scale).mean(0)


def log_likelihood(model, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | z) through the model's vaekit likelihood, for z: (S, B, d) -> (S, B)."""
    s = z.shape[0]
    xs = x.expand(s, *x.shape).reshape(-1, *x.shape[1:])
    return model.likelihood(z.reshape(-1, z.shape[-1])).log_prob(xs).view(s, -1)


def exact_elbo(model: LinearGaussian, x: torch.Tensor) -> torch.Tensor:
    """E_q[log p(x|z)] (exactly) - KL(q || p(z)) (closed form, as returned by objectives.elbo): (B,)."""
    expected_log_lik = expect_exactly(model.posterior(x), lambda z: log_likelihood(model, z, x))
    return expected_log_lik - elbo(model, x)["kl"]


def as_full_gaussian(q) -> MultivariateNormal:
    """A diagonal Gaussian as a MultivariateNormal, to take its KL to the full-covariance exact posterior."""
    return MultivariateNormal(q.base_dist.loc, torch.diag_embed(q.base_dist.scale**2))


def mean_se(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error along the last dimension."""
    return v.mean(-1), v.std(-1) / math.sqrt(v.shape[-1])


# ---------------------------------------------------------------------------------------------
# 1. log p(x) = ELBO + KL(q(z|x) || p(z|x))


def test_evidence_decomposition():
    model = make_model(0)
    x = data(model, 4, seed=1)
    posterior_gap = kl_divergence(as_full_gaussian(model.posterior(x)), model.exact_posterior(x))
    exact = exact_elbo(model, x)
    log_px = model.log_evidence(x)
    assert (posterior_gap > 0.1).all()  # q is really wrong, so the identity is not trivially 0 = 0
    torch.testing.assert_close(exact + posterior_gap, log_px, atol=1e-10, rtol=0)
    assert (exact < log_px).all()

    # The one-sample estimate that training uses is unbiased for that ELBO.
    n = 20_000
    torch.manual_seed(2)
    terms = elbo(model, x.repeat_interleave(n, 0))
    estimate, se = mean_se(-terms["neg_elbo"].view(4, n))
    assert ((estimate - exact).abs() < 3 * se).all(), (estimate - exact, se)


def test_elbo_is_tight_at_the_exact_posterior():
    model = exactly_inferred(make_model(3, orthogonal=True))
    x = data(model, 3, seed=4)
    log_px = model.log_evidence(x)
    torch.testing.assert_close(exact_elbo(model, x), log_px, atol=1e-10, rtol=0)

    # log w = log p(x, z) - log q(z|x) = log p(x) for every z: the weights have no variance.
    torch.manual_seed(5)
    log_w = importance_samples(model, x, num_samples=1000)["log_weights"]  # (K, B)
    assert log_w.std(0).max() < 1e-10
    torch.testing.assert_close(log_w, log_px.expand_as(log_w), atol=1e-10, rtol=0)
    torch.testing.assert_close(iwae_bound(log_w), log_px, atol=1e-10, rtol=0)
    # ... while the reconstruction term alone still varies with z.
    assert importance_samples(model, x, num_samples=1000)["log_likelihood"].std(0).min() > 0.1


# ---------------------------------------------------------------------------------------------
# 2, 3. The three forms of the ELBO


def test_three_forms_of_the_elbo_agree():
    model = make_model(6)
    x = data(model, 5, seed=7)
    q, prior = model.posterior(x), model.prior()
    exact_q = model.exact_posterior(x)

    evidence_minus_gap = model.log_evidence(x) - kl_divergence(as_full_gaussian(q), exact_q)
    recon_minus_kl = exact_elbo(model, x)
    joint_plus_entropy = expect_exactly(q, lambda z: log_likelihood(model, z, x) + prior.log_prob(z)) + q.entropy()
    expected_log_weight = expect_exactly(q, lambda z: log_likelihood(model, z, x) + prior.log_prob(z) - q.log_prob(z))
    for other in (recon_minus_kl, joint_plus_entropy, expected_log_weight):
        torch.testing.assert_close(other, evidence_minus_gap, atol=1e-10, rtol=0)
    # The entropy of N(loc, diag(scale^2)) is sum_j (1/2) log(2 pi e scale_j^2).
    torch.testing.assert_close(q.entropy(), 0.5 * torch.log(2 * math.pi * math.e * q.base_dist.scale**2).sum(-1))


# ---------------------------------------------------------------------------------------------
# 4. Reconstruction terms are the familiar losses


def test_bernoulli_nll_is_summed_bce():
    g = torch.Generator().manual_seed(8)
    logits = 4 * torch.randn(6, 1, 8, 8, generator=g)
    x = torch.rand(6, 1, 8, 8, generator=g).round()
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
    nll = -bernoulli_likelihood(logits).log_prob(x)
    p = torch.sigmoid(logits)
    textbook = -(x * p.log() + (1 - x) * (1 - p).log()).sum((1, 2, 3))
    torch.testing.assert_close(nll, bce, atol=1e-10, rtol=0)
    torch.testing.assert_close(nll, textbook, atol=1e-8, rtol=0)


def test_gaussian_nll_is_scaled_squared_error_plus_constant():
    g = torch.Generator().manual_seed(9)
    loc = torch.randn(6, 3, 4, 4, generator=g)
    x = torch.rand(6, 3, 4, 4, generator=g)
    num_pixels = 3 * 4 * 4
    for sigma in (0.1, 0.7, 2.0):
        sse = F.mse_loss(loc, x, reduction="none").sum((1, 2, 3))
        nll = -gaussian_likelihood(loc, sigma).log_prob(x)
        constant = gaussian_nll_constant(num_pixels, sigma)
        torch.testing.assert_close(nll - constant, sse / (2 * sigma**2), atol=1e-10, rtol=0)
        assert constant == pytest.approx(num_pixels / 2 * math.log(2 * math.pi * sigma**2))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_training_reconstruction_term_is_that_loss_at_one_sample(likelihood):
    """objectives.elbo's `recon` for the real VAE is the BCE / scaled SSE (+ constant) of the decoder's
    output at the one reparameterized sample z = loc + scale * eps."""
    torch.manual_seed(10)
    model = VAE(VAEConfig(image_shape=(1, 8, 8), latent_dim=3, width=4, hidden=16, likelihood=likelihood)).eval()
    x = torch.rand(5, 1, 8, 8)
    if likelihood == "bernoulli":
        x = x.round()
    torch.manual_seed(11)
    recon = elbo(model, x)["recon"]
    torch.manual_seed(11)
    z = model.posterior(x).rsample()
    out = model.decoder(z)  # logits or means, (B, C, H, W)
    if likelihood == "bernoulli":
        expected = F.binary_cross_entropy_with_logits(out, x, reduction="none").sum((1, 2, 3))
    else:
        sigma = model.cfg.sigma
        sse = F.mse_loss(out, x, reduction="none").sum((1, 2, 3))
        expected = sse / (2 * sigma**2) + gaussian_nll_constant(64, sigma)
    torch.testing.assert_close(recon, expected, atol=1e-8, rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# 5. KL(N(mu, diag sigma^2) || N(0, I)) in closed form


def test_closed_form_kl_matches_textbook_and_monte_carlo():
    model = make_model(12)
    model.scale = torch.tensor([0.3, 1.8])  # one narrow, one wider than the prior
    x = data(model, 4, seed=13) * 2
    q, prior = model.posterior(x), model.prior()
    kl = elbo(model, x)["kl"]  # what training uses: normal_kl(q.base_dist, p.base_dist).sum(-1)

    mu, sigma = q.base_dist.loc, q.base_dist.scale
    textbook = 0.5 * (mu**2 + sigma**2 - 1 - torch.log(sigma**2)).sum(-1)  # Kingma & Welling, appendix B
    torch.testing.assert_close(kl, textbook, atol=1e-12, rtol=0)

    torch.manual_seed(14)
    z = q.sample((100_000,))  # (N, B, d)
    estimate, se = mean_se((q.log_prob(z) - prior.log_prob(z)).T)
    assert ((estimate - kl).abs() < 3 * se).all(), (estimate - kl, se)
    assert (kl > 0).all()


def test_normal_kl_is_torchs_closed_form_for_any_pair_of_normals():
    from torch.distributions import Normal

    from vaekit.distributions import UnitNormal, normal_kl

    torch.manual_seed(15)
    q = Normal(torch.randn(5, 3, dtype=torch.float64), torch.rand(5, 3, dtype=torch.float64) + 0.1)
    p = Normal(torch.randn(5, 3, dtype=torch.float64), torch.rand(5, 3, dtype=torch.float64) + 0.1)  # a learned prior
    unit = UnitNormal(torch.zeros(5, 3, dtype=torch.float64), torch.ones(5, 3, dtype=torch.float64))
    torch.testing.assert_close(normal_kl(q, p), kl_divergence(q, p), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(normal_kl(q, unit), kl_divergence(q, Normal(unit.loc, unit.scale)), atol=1e-12, rtol=1e-12)
    assert torch.equal(normal_kl(q, q), torch.zeros(5, 3, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# 6. The IWAE bound


def test_iwae_one_sample_is_the_one_sample_elbo():
    model = make_model(15)
    x = data(model, 6, seed=16)
    torch.manual_seed(17)
    terms = elbo(model, x)
    torch.manual_seed(17)
    s = importance_samples(model, x, num_samples=1)
    torch.manual_seed(17)
    q = model.posterior(x)
    z = q.rsample()

    # Same random numbers, same z: the reconstruction terms are identical ...
    torch.testing.assert_close(s["log_likelihood"][0], -terms["recon"], atol=1e-12, rtol=0)
    # ... and IWAE_1 = log w = log p(x|z) - [log q(z|x) - log p(z)]: the one-sample ELBO whose KL is
    # estimated at the same z rather than taken in closed form (as objectives.elbo does).
    iwae_1 = iwae_bound(s["log_weights"])
    torch.testing.assert_close(iwae_1, s["log_weights"][0], atol=0, rtol=0)
    sampled_kl = q.log_prob(z) - model.prior().log_prob(z)
    torch.testing.assert_close(iwae_1, -terms["recon"] - sampled_kl, atol=1e-12, rtol=0)

    # In expectation both are the ELBO.
    n = 20_000
    torch.manual_seed(18)
    log_w = importance_samples(model, x.repeat_interleave(n, 0), num_samples=1)["log_weights"]
    iwae_mean, iwae_se = mean_se(iwae_bound(log_w).view(6, n))
    exact = exact_elbo(model, x)
    assert ((iwae_mean - exact).abs() < 3 * iwae_se).all(), (iwae_mean - exact, iwae_se)


def test_iwae_rises_with_k_in_expectation():
    model = imperfectly_inferred(make_model(19, orthogonal=True), shift=1.0, widen=0.7)
    x = data(model, 1, seed=20)
    log_px, exact = model.log_evidence(x), exact_elbo(model, x)
    reps = 2000
    torch.manual_seed(21)
    log_w = importance_samples(model, x.expand(reps, -1, -1, -1), num_samples=100)["log_weights"]  # (100, reps)
    # IWAE_1, IWAE_10, IWAE_100 from nested subsets of the same draws (paired differences).
    bounds = {k: iwae_bound(log_w[:k]) for k in (1, 10, 100)}
    mean1, se1 = mean_se(bounds[1])
    assert abs(mean1 - exact) < 3 * se1  # IWAE_1 is the ELBO
    for small, big in ((1, 10), (10, 100)):
        rise, se = mean_se(bounds[big] - bounds[small])
        assert rise > 3 * se, (small, big, rise, se)
    mean100, se100 = mean_se(bounds[100])
    assert mean100 < log_px + 3 * se100  # still a lower bound
    assert log_px - mean100 < 0.5 * (log_px - exact)  # and most of the ELBO's gap is gone


def test_iwae_approaches_log_evidence():
    model = imperfectly_inferred(make_model(22, orthogonal=True), shift=0.3, widen=1.2)
    x = data(model, 4, seed=23)
    log_px = model.log_evidence(x)
    assert (log_px - exact_elbo(model, x) > 0.1).all()  # the ELBO is > 0.1 nats below log p(x) ...
    reps = 8
    torch.manual_seed(24)
    s = importance_samples(model, x.repeat_interleave(reps, 0), num_samples=5000, chunk=1000)
    iwae_5000 = iwae_bound(s["log_weights"]).view(4, reps).mean(-1)
    assert ((iwae_5000 - log_px).abs() < 0.01).all(), iwae_5000 - log_px  # ... IWAE_5000 is within 0.01


# ---------------------------------------------------------------------------------------------
# The convention: summed over pixels and latent dimensions, averaged over images, in nats


def test_reported_numbers_follow_the_convention():
    model = imperfectly_inferred(make_model(25, orthogonal=True), shift=0.3, widen=1.2)
    x = data(model, 64, seed=26)
    torch.manual_seed(27)
    terms = elbo(model, x)
    assert terms["neg_elbo"].shape == terms["recon"].shape == terms["kl"].shape == (64,)  # one number per image
    torch.testing.assert_close(terms["loss"], terms["neg_elbo"].mean(), atol=1e-12, rtol=0)  # averaged over images

    report = evaluate(model, x, iw_samples=2000)
    assert report["kl"] == pytest.approx(float(terms["kl"].mean()), abs=1e-10)
    # Same 64 images: only Monte-Carlo noise separates the report from the exact values (the *_se
    # fields measure the spread over images, not that noise).
    assert report["neg_elbo"] == pytest.approx(float(-exact_elbo(model, x).mean()), abs=0.02)
    assert report["nll"] == pytest.approx(float(-model.log_evidence(x).mean()), abs=0.01)
    assert report["nll_bits_per_dim"] == pytest.approx(report["nll"] / (PIXELS * math.log(2)))
    assert report["neg_elbo_bits_per_dim"] == pytest.approx(report["neg_elbo"] / (PIXELS * math.log(2)))


# ---------------------------------------------------------------------------------------------
# 7. Why reparameterize: the pathwise gradient is unbiased and has low variance


def test_reparameterized_gradient_is_unbiased_and_low_variance():
    model = imperfectly_inferred(make_model(28, orthogonal=True), shift=0.5, widen=0.8)
    x = data(model, 1, seed=29)
    n = 8000
    # One copy of q's offset m per replicate, so one backward pass gives n independent gradient draws.
    m = model.m.expand(n, LATENT).clone().requires_grad_(True)
    model.m = m
    xs = x.expand(n, -1, -1, -1)

    exact_grad = torch.autograd.grad(exact_elbo(model, xs).sum(), m)[0][0]

    torch.manual_seed(30)  # pathwise: what training does, z = loc + scale * eps inside objectives.elbo
    pathwise = torch.autograd.grad(-elbo(model, xs)["neg_elbo"].sum(), m)[0]

    torch.manual_seed(30)  # score function: E_q[log p(x|z) grad log q(z)] + the closed-form KL's gradient
    q = model.posterior(xs)
    z = q.sample()
    log_lik = model.likelihood(z).log_prob(xs)
    surrogate = (log_lik * q.log_prob(z)).sum() - elbo(model, xs)["kl"].sum()
    score = torch.autograd.grad(surrogate, m)[0]

    for draws in (pathwise, score):
        mean, se = mean_se(draws.T)
        assert ((mean - exact_grad).abs() < 3 * se).all(), (mean - exact_grad, se)  # both unbiased ...
    assert (pathwise.var(0) * 20 < score.var(0)).all(), (pathwise.var(0), score.var(0))  # ... one far noisier


# ---------------------------------------------------------------------------------------------
# docs/theory.md and this file name each other


def test_every_derivation_names_a_test_that_exists():
    text = (Path(__file__).parents[1] / "docs" / "theory.md").read_text(encoding="utf-8")
    named = set(re.findall(r"^Checked by: tests/test_theory\.py::(\w+)$", text, flags=re.MULTILINE))
    defined = {name for name in globals() if name.startswith("test_")}
    assert named <= defined, named - defined
    assert defined - named == {"test_every_derivation_names_a_test_that_exists"}
