"""The evaluation numbers: bounds, chunking, latent usage."""

import math

import pytest
import torch


from vaekit.evaluate import default_max_batch, evaluate, format_report
from vaekit.models import VAE
from vaekit.models.vae import VAEConfig


@pytest.fixture
def model_and_data():
    torch.manual_seed(0)
    model = VAE(VAEConfig(image_shape=(1, 8, 8), latent_dim=4)).eval()
    return model, torch.rand(40, 1, 8, 8).bernoulli()


def test_chunked_evaluation_equals_one_big_batch(model_and_data):
    model, x = model_and_data
    big = evaluate(model, x, iw_samples=50, max_batch=10**6)
    small = evaluate(model, x, iw_samples=50, max_batch=7)
    # Same images, same K, but the draws are split differently: equal up to Monte-Carlo noise.
    assert small["nll"] == pytest.approx(big["nll"], abs=3 * math.hypot(big["nll_se"], 0.05))
    assert small["kl"] == pytest.approx(big["kl"], rel=1e-5)  # closed form: no noise
    one_chunk = evaluate(model, x, iw_samples=50, max_batch=50 * 40)
    same = evaluate(model, x, iw_samples=50, max_batch=50 * 40)
    assert one_chunk["nll"] == same["nll"]  # fixed seed: repeatable


def test_the_decoder_pass_is_small_on_the_cpu_and_large_on_a_gpu():
    # CPU: below glibc's mmap threshold (BENCHMARKS.md, evaluation); GPU: enough pairs to keep the device busy
    assert default_max_batch((1, 28, 28)) == default_max_batch((1, 28, 28), "cpu") == 2**18 // 784 == 334
    assert default_max_batch((1, 28, 28), torch.device("cuda")) == 2**23 // 784 == 10699
    assert default_max_batch((1, 8, 8), "cuda") == 65536 and default_max_batch((3, 256, 256), "cuda") == 4096
    assert default_max_batch((3, 256, 256)) == 256 and default_max_batch((1, 8, 8)) == 4096


def test_iwae_below_neg_elbo_and_tightens_with_k(digits_run):
    import vaekit

    results = {k: vaekit.evaluate(digits_run, iw_samples=k, device="cpu") for k in (1, 10, 100)}
    for r in results.values():
        assert r["nll"] <= r["neg_elbo"] + 3 * r["neg_elbo_se"]
    assert results[100]["nll"] <= results[100]["neg_elbo"]
    assert results[100]["nll"] < results[10]["nll"] < results[1]["nll"]


def test_report_fields(model_and_data):
    model, x = model_and_data
    r = evaluate(model, x, iw_samples=5)
    assert r["n_images"] == 40 and r["iw_samples"] == 5 and r["latent_dim"] == 4
    assert len(r["kl_per_dim"]) == 4 and sum(r["kl_per_dim"]) == pytest.approx(r["kl"], abs=1e-3)
    assert r["active_units"] == sum(v > 0.01 for v in r["posterior_mean_variance"])
    assert r["nll_bits_per_dim"] == pytest.approx(r["nll"] / (64 * math.log(2)))
    assert "-log p(x) IWAE" in format_report(r)


def test_active_units_counts_dimensions_whose_mean_varies():
    model = VAE(VAEConfig(image_shape=(1, 8, 8), latent_dim=3)).eval()
    with torch.no_grad():  # make dimension 0 ignore the input: constant posterior mean
        out = model.encoder.out
        out.weight[0].zero_()
        out.weight[1:3] *= 50
    r = evaluate(model, torch.rand(50, 1, 8, 8).bernoulli(), iw_samples=2)
    assert r["posterior_mean_variance"][0] == 0
    assert min(r["posterior_mean_variance"][1:]) > 0.05  # the two scaled dimensions vary
    assert r["active_units"] == 2


def test_neg_elbo_is_exactly_recon_plus_kl_on_any_cpu():
    """The report states neg_elbo = recon + kl; it holds to the last digit whatever float32 kernels ran."""
    torch.manual_seed(3)
    for latent_dim in (2, 5, 16):
        model = VAE(VAEConfig(image_shape=(1, 8, 8), latent_dim=latent_dim)).eval()
        r = evaluate(model, torch.rand(97, 1, 8, 8).bernoulli(), iw_samples=3)
        assert r["neg_elbo"] == r["recon"] + r["kl"]
