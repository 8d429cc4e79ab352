"""The autoregressive likelihood (--autoregressive): a proper distribution over binary images whose pixel i
depends on the pixels before it only, drawn pixel by pixel from the same distribution it scores."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit.autoregressive import AutoregressiveBernoulli, PixelContext
from vaekit.models import CVAE, VAE

SHAPE = (1, 3, 4)  # 12 pixels: all 4,096 images can be enumerated


def random_likelihood(n: int = 1, seed: int = 0) -> AutoregressiveBernoulli:
    torch.manual_seed(seed)
    net = PixelContext(math.prod(SHAPE), 3, 7)
    for p in net.parameters():  # the output and direct maps start at zero: give them weights to test
        torch.nn.init.normal_(p)
    base, context = torch.randn(1, *SHAPE), torch.randn(1, 3)
    return AutoregressiveBernoulli(base.expand(n, *SHAPE), net, context.expand(n, 3))


def every_image() -> torch.Tensor:
    codes = torch.arange(2 ** math.prod(SHAPE))
    return ((codes[:, None] >> torch.arange(math.prod(SHAPE))) & 1).float().view(-1, *SHAPE)  # (4096, 1, 3, 4)


def test_each_pixel_depends_on_the_pixels_before_it_only():
    likelihood = random_likelihood()
    x = torch.bernoulli(torch.full((1, *SHAPE), 0.5)).requires_grad_()
    logits = likelihood.logits(x).flatten()
    jacobian = torch.stack([torch.autograd.grad(logits[i], x, retain_graph=True)[0].flatten() for i in range(len(logits))])
    depends, earlier = jacobian != 0, torch.ones_like(jacobian, dtype=torch.bool).tril(-1)
    assert not depends[~earlier].any()  # pixel i: no path from a pixel j >= i
    assert depends[earlier].all()  # and a path from every j < i (the direct map alone gives one)


def test_it_is_a_distribution_over_binary_images():
    """sum_x p(x|z) = 1 over all 2^12 images (float32 sums 4,096 terms)."""
    images = every_image()
    total = random_likelihood(len(images)).log_prob(images).exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-4)


def test_ancestral_samples_follow_the_distribution_it_scores():
    images = every_image()
    probs = random_likelihood(len(images)).log_prob(images).exp()  # (4096,)
    exact = (probs[:, None] * images.flatten(1)).sum(0)  # P(x_i = 1), each pixel
    torch.manual_seed(1)
    n = 20000
    drawn = random_likelihood(n).sample()
    assert set(drawn.unique().tolist()) <= {0.0, 1.0}
    frequency = drawn.flatten(1).mean(0)
    tolerance = 5 * (exact * (1 - exact) / n).sqrt() + 1e-3  # five standard errors of a frequency
    assert ((frequency - exact).abs() <= tolerance).all(), (frequency, exact)


def test_the_mean_field_picture_is_each_pixels_probability_given_the_earlier_ones():
    likelihood = random_likelihood(2)
    picture = likelihood.mean  # x_i := p(x_i = 1 | x_<i), filled one pixel at a time
    assert torch.allclose(torch.sigmoid(likelihood.logits(picture)), picture, atol=1e-5)


def test_a_fresh_autoregressive_vae_is_its_factorized_twin():
    """The output and direct maps start at zero, so log p(x|z) equals the factorized decoder's."""
    cfg = VAE.Config(image_shape=(1, 4, 4), latent_dim=3, hidden=16, arch="mlp")
    torch.manual_seed(0)
    plain = VAE(cfg)
    torch.manual_seed(0)
    autoregressive = VAE(dataclasses.replace(cfg, autoregressive=True))
    x, z = torch.bernoulli(torch.full((50, 1, 4, 4), 0.5)), torch.randn(50, 3)
    assert torch.allclose(plain.likelihood(z).log_prob(x), autoregressive.likelihood(z).log_prob(x), atol=1e-5)
    assert torch.allclose(plain.decode(z), autoregressive.decode(z), atol=1e-5)


def test_the_conditional_vae_conditions_the_masked_network_on_the_class_too():
    cvae = CVAE(CVAE.Config(image_shape=(1, 4, 4), latent_dim=3, hidden=16, arch="mlp", num_classes=3, autoregressive=True))
    for p in cvae.pixel_context.parameters():
        torch.nn.init.normal_(p)
    x, z = torch.bernoulli(torch.full((1, 1, 4, 4), 0.5)), torch.randn(1, 3)
    corrections = [(lik.logits(x) - lik.base_logits) for lik in (cvae.likelihood(z, torch.tensor([c])) for c in range(3))]
    assert not torch.allclose(corrections[0], corrections[1]) and not torch.allclose(corrections[1], corrections[2])


@pytest.mark.parametrize("model, options", [
    (VAE, dict(arch="mlp", autoregressive=True)), (VAE, dict(arch="mlp")), (VAE, dict(arch="conv")),
    (VAE, dict(arch="mlp", likelihood="gaussian")), (CVAE, dict(arch="conv", autoregressive=True, num_classes=3)),
])
def test_k_latent_samples_of_each_image_share_it(model, options):
    """likelihood(z: (K, B, D)).log_prob(x: (B, ...)) is each image scored under each of its K codes (the
    IWAE's samples): the same numbers as K stacked copies of the images, without making the copies."""
    torch.manual_seed(0)
    net = model(model.Config(image_shape=(1, 8, 8), latent_dim=3, hidden=16, width=4, **options))
    for p in net.parameters():  # the masked network's output maps start at zero: give them weights
        torch.nn.init.normal_(p, std=0.3)
    x, z = torch.bernoulli(torch.full((5, 1, 8, 8), 0.5)), torch.randn(4, 5, 3)
    c = torch.tensor([0, 1, 2, 0, 1]) if model is CVAE else None
    shared = net.likelihood(z, None if c is None else c.expand(4, 5)).log_prob(x)
    copies = net.likelihood(z.flatten(0, 1), None if c is None else c.repeat(4)).log_prob(x.repeat(4, 1, 1, 1))
    assert shared.shape == (4, 5)
    torch.testing.assert_close(shared, copies.view(4, 5), rtol=1e-5, atol=1e-4)


def test_train_grow_evaluate_and_draw(tmp_path, capsys):
    """--init-from a factorized run adds the masked network, started fresh and said so; the run trains,
    evaluates (-log p(x) <= -ELBO) and draws its pictures; the reverse does not fit."""
    from vaekit.cli import main

    options = dict(dataset="digits", width=8, hidden=32, latent_dim=4, progress=False)
    source = vaekit.train(tmp_path / "source", epochs=2, **options)
    capsys.readouterr()
    grown = vaekit.train(tmp_path / "grown", epochs=2, autoregressive=True, init_from=str(source), **options)
    assert "5 tensors are not in that run and start fresh (pixel_context)" in capsys.readouterr().err
    before, after = load_file(source / "model.safetensors"), load_file(grown / "model.safetensors")
    assert set(after) - set(before) == {f"pixel_context.{k}" for k in
                                        ("hidden_in.weight", "hidden_in.bias", "context.weight", "hidden_out.weight", "direct.weight")}
    result = vaekit.evaluate(grown, iw_samples=64)
    assert result["nll"] <= result["neg_elbo"] + 1e-3
    assert (grown / "samples.png").is_file()
    samples = vaekit.load(grown).sample(3)
    assert samples.shape == (3, 1, 8, 8) and 0 <= samples.min() and samples.max() <= 1

    code = main(["train", "--init-from", str(grown), "--width", "8", "--hidden", "32", "--latent-dim", "4",
                 "--out", str(tmp_path / "shrunk")])
    err = capsys.readouterr().err
    assert code == 2 and "(the model settings that differ: autoregressive)" in err and len(err.strip().splitlines()) == 1


def test_a_gaussian_likelihood_cannot_be_autoregressive(tmp_path, capsys):
    from vaekit.cli import main

    code = main(["train", "--autoregressive", "--likelihood", "gaussian", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "--autoregressive models discrete pixels, and --likelihood gaussian is a density" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_the_masked_network_has_its_own_width_and_needs_autoregressive(tmp_path, capsys):
    from vaekit.cli import main

    cfg = VAE.Config(image_shape=(1, 4, 4), latent_dim=3, hidden=16, arch="mlp", autoregressive=True)
    assert VAE(cfg).pixel_context.context.out_features == 16  # 0: --hidden
    assert VAE(dataclasses.replace(cfg, autoregressive_hidden=40)).pixel_context.context.out_features == 40
    code = main(["train", "--autoregressive-hidden", "40", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "--autoregressive-hidden sizes the masked network of --autoregressive: add --autoregressive" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
