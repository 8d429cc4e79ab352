"""Priors of the Gaussian VAE (--prior normal | mixture | vamp): densities against brute force, the
one-sample KL against the closed form, sampling from the prior, and runs that train and evaluate."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

import vaekit
from vaekit import VaekitError
from vaekit.cli import main
from vaekit.models.vae import VAE, VAEConfig
from vaekit.objectives import elbo, latent_kl
from vaekit.priors import GaussianMixture, StandardNormal

TINY = dict(dataset="digits", width=8, hidden=32, latent_dim=4, progress=False)


def tiny(prior: str, components: int = 3) -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(image_shape=(1, 8, 8), latent_dim=2, width=4, hidden=16, prior=prior,
                         prior_components=components)).double()


def test_mixture_density_is_the_weighted_sum_of_its_components():
    prior = GaussianMixture(2, 3).double()
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.3, -1.0, 2.0]))
        prior.log_scale.normal_()
    z = torch.randn(5, 2, dtype=torch.float64)
    weights = torch.softmax(prior.logits, 0)
    brute = sum(weights[k] * Normal(prior.loc[k], prior.log_scale[k].exp()).log_prob(z).sum(-1).exp() for k in range(3))
    assert torch.allclose(prior().log_prob(z), brute.log(), rtol=1e-12)


def test_float32_mixture_density_survives_the_expanded_square():
    """The GEMM form expands (z - m)^2 / s^2, which cancels when s is small and z far from 0. Harder than
    the trained Fashion-MNIST VampPrior (K = 500, D = 40, scales 0.42-0.84): scales down to 0.02, |z| up
    to about 10. In float32 it must still match the float64 brute force as closely as torch's own
    broadcast MixtureSameFamily does."""
    from torch.distributions import Categorical, MixtureSameFamily

    from vaekit.distributions import DiagonalGaussianMixture, diagonal_gaussian

    torch.manual_seed(0)
    k, d = 500, 40
    loc, scale, logits = 3 * torch.randn(k, d), 0.02 + 0.3 * torch.rand(k, d), torch.randn(k)
    z = (loc[:64] + scale[:64] * torch.randn(64, d)).view(8, 8, d)  # near components, (8, 8, D)
    exact = MixtureSameFamily(Categorical(logits=logits.double()),
                              diagonal_gaussian(loc.double(), scale.double())).log_prob(z.double())
    fast = DiagonalGaussianMixture(logits, loc, scale).log_prob(z)
    broadcast = MixtureSameFamily(Categorical(logits=logits), diagonal_gaussian(loc, scale)).log_prob(z)
    assert fast.shape == (8, 8) and fast.dtype == torch.float32
    assert (fast.double() - exact).abs().max() <= max(1e-4, (broadcast.double() - exact).abs().max())


def test_vamp_prior_is_the_mean_posterior_of_its_pseudo_inputs():
    model = tiny("vamp", components=4)
    z = torch.randn(6, 2, dtype=torch.float64)
    u = model.latent_prior.pseudo_inputs()
    assert u.shape == (4, 1, 8, 8) and bool(((u > 0) & (u < 1)).all())
    per_input = torch.stack([model.posterior(u[k : k + 1]).log_prob(z) for k in range(4)])  # (K, B)
    assert torch.allclose(model.prior().log_prob(z), torch.logsumexp(per_input, 0) - math.log(4), rtol=1e-12)
    # the pseudo-inputs are learned: the prior's density has a gradient with respect to them
    model.prior().log_prob(z).sum().backward()
    assert model.latent_prior.pseudo_logits.grad.abs().sum() > 0


def test_one_sample_kl_is_unbiased_and_closed_form_stays_where_it_exists():
    model = tiny("mixture", components=1)
    with torch.no_grad():  # one component at N(0, I): the mixture is the standard normal
        model.latent_prior.loc.zero_()
    x = torch.bernoulli(torch.full((3, 1, 8, 8), 0.3, dtype=torch.float64))
    posterior = model.posterior(x)
    closed, per_dim = latent_kl(posterior, StandardNormal(2).double()(), posterior.rsample())
    assert per_dim is not None and torch.allclose(closed, per_dim.sum(-1))
    z = posterior.rsample((200_000,))  # (S, B, D)
    estimate, none = latent_kl(posterior, model.prior(), z)
    assert none is None
    assert torch.allclose(estimate.mean(0), closed, atol=0.01)


def test_sampling_draws_from_the_mixture_prior():
    model = tiny("mixture", components=2)
    with torch.no_grad():
        model.latent_prior.loc.copy_(torch.tensor([[-10.0, 0.0], [10.0, 0.0]]))
        model.latent_prior.logits.copy_(torch.tensor([0.0, math.log(3)]))  # weights 1/4, 3/4
    seen = []
    model.decoder.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    model.sample(8000)
    z = seen[0]
    share = float((z[:, 0] > 0).double().mean())
    assert abs(share - 0.75) < 0.02  # 4 standard errors
    assert abs(float(z[z[:, 0] > 0, 0].mean()) - 10) < 0.05


@pytest.mark.parametrize("prior", ["mixture", "vamp"])
def test_evaluation_with_a_mixture_prior_is_a_real_bound(prior):
    model = tiny(prior).eval()
    x = torch.bernoulli(torch.full((4, 1, 8, 8), 0.3, dtype=torch.float64))
    terms = model.bounds(x, None, num_samples=500, chunk=100)
    assert "kl_per_dim" not in terms  # no closed form: a Monte Carlo KL, with no split per dimension
    # log-mean-exp >= mean of the same log-weights: IWAE_K >= the ELBO estimate, sample by sample
    assert (terms["nll"] <= terms["recon"] + terms["kl"] + 1e-9).all()


def test_evaluation_encodes_the_pseudo_inputs_once_per_batch_of_images():
    from vaekit.evaluate import evaluate

    model = tiny("vamp", components=5).float().eval()
    built = []
    model.latent_prior.register_forward_hook(lambda *_: built.append(1))
    evaluate(model, torch.bernoulli(torch.full((3, 1, 8, 8), 0.3)), iw_samples=20, max_batch=10)
    assert len(built) == 3  # K = 20 > 10 pairs per pass: one image per batch, the prior built once for each


def test_free_bits_needs_a_closed_form_kl():
    model = tiny("vamp")
    with pytest.raises(VaekitError, match="--free-bits needs a KL per latent dimension"):
        elbo(model, torch.zeros(2, 1, 8, 8, dtype=torch.float64), free_bits=0.5)


def test_the_default_prior_adds_nothing_to_the_checkpoint():
    assert set(tiny("normal").state_dict()) == {k for k in tiny("normal").state_dict() if k.startswith(("encoder.", "decoder."))}


@pytest.mark.parametrize("prior", ["mixture", "vamp"])
def test_a_run_with_each_prior_trains_and_evaluates(prior, tmp_path, capsys):
    import json

    run = vaekit.train(tmp_path / prior, prior=prior, prior_components=5, epochs=2, **TINY)
    capsys.readouterr()  # what training printed
    assert main(["evaluate", str(run), "--iw-samples", "20", "--limit", "30", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["neg_elbo"] == result["recon"] + result["kl"] and "kl_per_dim" not in result
    assert (run / "traversal.png").stat().st_size > 0


def test_prior_belongs_to_the_vae(tmp_path, capsys):
    code = main(["train", "--model", "cvae", "--prior", "vamp", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "--prior is a setting of --model vae or m2 or hvae, not of --model cvae" in err
    assert len(err.strip().splitlines()) == 1


# ---- the IWAE training objective (--train-samples K)

def test_iwae_objective_is_a_tighter_bound_from_the_same_samples():
    from vaekit.objectives import iwae_objective

    model = tiny("normal")
    x = torch.bernoulli(torch.full((5, 1, 8, 8), 0.3, dtype=torch.float64))
    one = iwae_objective(model, x, num_samples=1)
    assert torch.allclose(one["neg_iwae"], one["neg_elbo"], rtol=1e-12)  # IWAE_1 is the ELBO
    many = iwae_objective(model, x, num_samples=16)
    assert (many["neg_iwae"] <= many["neg_elbo"] + 1e-9).all()  # log-mean-exp >= mean, sample by sample
    many["loss"].backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_train_samples_trains_the_iwae_bound_and_refuses_a_kl_weight(tmp_path):
    import json

    run = vaekit.train(tmp_path / "iwae", train_samples=4, epochs=2, **TINY)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_neg_iwae"] <= rows[-1]["train_neg_elbo"]
    assert rows[-1]["val_neg_iwae"] <= rows[-1]["val_neg_elbo"]  # validated on the bound it trains
    with pytest.raises(VaekitError, match="--train-samples > 1 trains the IWAE bound"):
        vaekit.train(tmp_path / "warm", train_samples=4, kl_warmup=1, epochs=1, **TINY)


def test_an_iwae_trained_model_keeps_the_best_weights_by_validation_iwae(tmp_path, monkeypatch, capsys):
    """Its -ELBO gets worse while its likelihood improves (Burda et al. 2016), so the best epoch and early
    stopping go by the validation -IWAE_K: here epoch 2, though the -ELBO kept falling."""
    import sys

    from safetensors.torch import load_file

    options = dict(train_samples=4, lr_schedule="constant", **TINY)
    two = vaekit.train(tmp_path / "two", epochs=2, **options)
    loop = sys.modules["vaekit.train"]
    real, scripted = loop.validate, iter([(30.0, 31.0), (20.0, 21.0), (25.0, 11.0), (26.0, 10.0)])

    def validate(*args, **kwargs):
        neg_iwae, neg_elbo = next(scripted)
        return {**real(*args, **kwargs), "neg_iwae": neg_iwae, "neg_elbo": neg_elbo}

    monkeypatch.setattr(loop, "validate", validate)
    capsys.readouterr()
    four = vaekit.train(tmp_path / "four", epochs=6, patience=2, **options)
    assert "the validation -IWAE_K has not improved since epoch 2 (--patience 2)" in capsys.readouterr().err
    best = load_file(four / "model.safetensors")
    after_two = {k[6:]: v for k, v in load_file(two / "last.safetensors").items() if k.startswith("model.")}
    assert all(torch.equal(best[k], after_two[k]) for k in best)
    assert 'data-epoch="2"' in (four / "report.html").read_text()  # the report's best epoch agrees
