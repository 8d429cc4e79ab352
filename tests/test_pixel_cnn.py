"""--autoregressive with a discretized likelihood (pixel_cnn.py): a proper distribution over 8-bit images
whose pixel (i, j) depends on the pixels before it in raster order only, drawn pixel by pixel from the
distribution it scores, and a VAE that trains, evaluates and draws with it."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

import vaekit
from vaekit.likelihoods import DiscretizedGaussian, DiscretizedLogisticMixture
from vaekit.models import VAE
from vaekit.pixel_cnn import AutoregressivePixels, MaskedConv2d, PixelCNNContext


def random_net(channels: int, params: int, seed: int = 0, blocks: int = 2, kernel: int = 3) -> PixelCNNContext:
    torch.manual_seed(seed)
    net = PixelCNNContext(channels, params, 8, blocks=blocks, kernel=kernel)
    for p in net.parameters():  # the output map starts at zero: give it weights to test
        torch.nn.init.normal_(p, std=0.5)
    return net


# (likelihood from its parameters, image channels, parameter channels, bits)
KINDS = {
    "logistic-mixture grey": (lambda p: DiscretizedLogisticMixture(p, 1, 3, 2), 1, 9, 2),
    "logistic-mixture RGB": (lambda p: DiscretizedLogisticMixture(p, 3, 2, 1), 3, 20, 1),
    "discretized-gaussian": (lambda p: DiscretizedGaussian(p, 2), 1, 2, 2),
}


def every_image(channels: int, bits: int, height: int = 2, width: int = 2) -> torch.Tensor:
    top = 2**bits - 1
    values = itertools.product(range(top + 1), repeat=channels * height * width)
    return torch.tensor(list(values), dtype=torch.float).view(-1, channels, height, width) / top


def random_likelihood(name: str, n: int, seed: int = 0) -> AutoregressivePixels:
    build, channels, params, _ = KINDS[name]
    theta = torch.randn(1, params, 2, 2, generator=torch.Generator().manual_seed(seed + 1))
    return AutoregressivePixels(theta.expand(n, -1, -1, -1), random_net(channels, params, seed), build)


def test_each_pixels_parameters_depend_on_the_pixels_before_it_only():
    net = random_net(3, 20, blocks=2, kernel=5)
    x = torch.rand(1, 3, 5, 6, requires_grad=True)
    theta = net(net.features(x), torch.randn(1, 20, 5, 6))  # (1, 20, 5, 6)
    positions = [(i, j) for i in range(5) for j in range(6)]
    for n, (i, j) in enumerate(positions):
        grad = torch.autograd.grad(theta[0, :, i, j].sum(), x, retain_graph=True)[0][0].abs().sum(0)  # (5, 6)
        reads = {(a, b) for a, b in positions if grad[a, b] > 0}
        assert reads <= set(positions[:n]), (i, j)  # no path from (i, j) itself or a later pixel
        neighbours = {(i, j - 1), (i - 1, j), (i - 1, j + 1)} & set(positions)
        assert neighbours <= reads  # the left, upper and upper-right neighbours are read


@pytest.mark.parametrize("kernel,center", [(3, True), (5, False), (7, True)])
def test_a_masked_convolution_is_the_full_convolution_with_its_mask(kernel, center):
    torch.manual_seed(0)
    conv = MaskedConv2d(4, 6, kernel, center)
    x = torch.randn(2, 4, 9, 7)
    full = torch.nn.functional.conv2d(x, conv.weight * conv.mask, conv.bias, padding=kernel // 2)  # k x k, H kept
    torch.testing.assert_close(conv(x), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", KINDS)
def test_it_is_a_distribution_over_the_discrete_images(name):
    """sum over every image of p(x|z) = 1 (2x2 images; RGB at 1 bit, where G and B depend on R)."""
    _, channels, _, bits = KINDS[name]
    images = every_image(channels, bits)
    total = random_likelihood(name, len(images)).log_prob(images).double().exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("name", ["logistic-mixture grey", "logistic-mixture RGB"])
def test_pixel_by_pixel_samples_follow_the_distribution_it_scores(name):
    _, channels, _, bits = KINDS[name]
    images = every_image(channels, bits)
    exact = random_likelihood(name, len(images)).log_prob(images).double().exp()  # (number of images,)
    torch.manual_seed(1)
    n = 20000
    drawn = random_likelihood(name, n).sample()
    top = 2**bits - 1
    weights = (top + 1) ** torch.arange(images[0].numel() - 1, -1, -1)
    code = lambda x: ((x.flatten(1) * top).round().long() * weights).sum(1)  # noqa: E731  image -> its index
    assert torch.equal(code(images), torch.arange(len(images)))
    frequency = torch.bincount(code(drawn), minlength=len(images)).double() / n
    tolerance = 5 * (exact * (1 - exact) / n).sqrt() + 1e-3  # five standard errors of a frequency
    assert ((frequency - exact).abs() <= tolerance).all()


def test_drawing_in_windows_is_exact():
    """Each pixel is drawn from the stack run on the window its parameters read (reach rows above, reach
    columns either side): the mean-field picture equals each pixel's mean under one full-image pass."""
    net = random_net(3, 30, blocks=2, kernel=5)
    assert net.reach == 4  # smaller than the 9 x 11 image: the windows are crops
    build = lambda p: DiscretizedLogisticMixture(p, 3, 3, 8)  # noqa: E731
    theta = torch.randn(2, 30, 9, 11)
    picture = AutoregressivePixels(theta, net, build).mean  # (2, 3, 9, 11)
    with torch.no_grad():
        full = build(net(net.features(picture), theta)).mean.clamp(0, 1)
    torch.testing.assert_close(full, picture, atol=1e-5, rtol=0)


def small_vae(**options) -> VAE:
    cfg = VAE.Config(image_shape=(3, 8, 8), latent_dim=3, width=4, hidden=16, likelihood="logistic-mixture",
                     mixture_components=2, **options)
    torch.manual_seed(0)
    return VAE(cfg)


def test_a_fresh_autoregressive_vae_is_its_factorized_twin():
    plain, autoregressive = small_vae(), small_vae(autoregressive=True)
    assert isinstance(autoregressive.pixel_context, PixelCNNContext)
    x, z = torch.randint(0, 256, (6, 3, 8, 8)).float() / 255, torch.randn(6, 3)
    torch.testing.assert_close(plain.likelihood(z).log_prob(x), autoregressive.likelihood(z).log_prob(x))


def test_k_latent_samples_of_each_image_share_it():
    vae = small_vae(autoregressive=True)
    for p in vae.pixel_context.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x, z = torch.randint(0, 256, (5, 3, 8, 8)).float() / 255, torch.randn(4, 5, 3)
    shared = vae.likelihood(z).log_prob(x)
    copies = vae.likelihood(z.flatten(0, 1)).log_prob(x.repeat(4, 1, 1, 1))
    assert shared.shape == (4, 5)
    torch.testing.assert_close(shared, copies.view(4, 5), rtol=1e-5, atol=1e-3)


def test_the_masked_convolutions_have_their_own_width():
    assert small_vae(autoregressive=True).pixel_context.condition.out_channels == 64
    assert small_vae(autoregressive=True, autoregressive_hidden=12).pixel_context.condition.out_channels == 12


def test_dropout_acts_in_training_only_and_keeps_each_pixel_blind_to_itself_and_later_ones():
    """--autoregressive-dropout: a training pass drops units (two passes differ) and stays causal under its
    mask; an evaluation pass is the model without dropout, exactly."""
    net = random_net(3, 20, blocks=2, kernel=5)
    dropped = PixelCNNContext(3, 20, 8, blocks=2, kernel=5, dropout=0.5)
    dropped.load_state_dict(net.state_dict())
    x, theta = torch.rand(2, 3, 5, 6), torch.randn(2, 20, 5, 6)
    torch.testing.assert_close(dropped.eval()(dropped.features(x), theta), net.eval()(net.features(x), theta),
                               rtol=0, atol=0)
    dropped.train()
    torch.manual_seed(1)
    first = dropped(dropped.features(x), theta)
    assert not torch.allclose(first, dropped(dropped.features(x), theta))
    later = x.clone()
    later[:, :, 3, 2:] = torch.rand(2, 3, 4)  # pixel (3, 2) and everything after it in raster order
    later[:, :, 4] = torch.rand(2, 3, 6)
    torch.manual_seed(1)  # the same dropout mask as `first`
    moved = dropped(dropped.features(later), theta)
    torch.testing.assert_close(moved[:, :, :3], first[:, :, :3])  # the rows above (float32 tolerance: the
    torch.testing.assert_close(moved[:, :, 3, :3], first[:, :, 3, :3])  # conv kernel may vary); (3, 0)-(3, 2)
    assert not torch.allclose(moved[:, :, 3, 3:], first[:, :, 3, 3:])  # (3, 3) reads (3, 2)


def test_dropout_reaches_the_masked_network_and_is_refused_where_there_is_none():
    assert small_vae(autoregressive=True, autoregressive_dropout=0.25).pixel_context.dropout == 0.25
    with pytest.raises(vaekit.VaekitError, match="--autoregressive-dropout regularises the masked network"):
        small_vae(autoregressive_dropout=0.25)
    with pytest.raises(vaekit.VaekitError, match="masked MLP"):
        VAE(VAE.Config(image_shape=(1, 8, 8), autoregressive=True, autoregressive_dropout=0.25))


def test_train_evaluate_and_draw_8_bit_colour(tmp_path, capsys):
    """An 8-bit RGB .npz: --autoregressive takes the logistic mixture the data chooses, says so, trains,
    gives -log p(x) <= -ELBO in bits/dim, and draws its pictures pixel by pixel."""
    rng = np.random.default_rng(0)
    x = (rng.random((80, 3, 8, 8)) * 64 + np.arange(8)[None, None, None, :] * 24).astype(np.uint8)
    np.savez(tmp_path / "tiles.npz", x=x)
    run = vaekit.train(tmp_path / "run", dataset=str(tmp_path / "tiles.npz"), autoregressive=True,
                       autoregressive_hidden=8, width=4, hidden=16, latent_dim=3, mixture_components=2, epochs=2,
                       progress=False)
    assert "discretized logistic mixture" in capsys.readouterr().out
    result = vaekit.evaluate(run, iw_samples=8)
    assert result["nll"] <= result["neg_elbo"] + 1e-3
    assert 0 < result["nll_bits_per_dim"] < 9
    assert (run / "samples.png").is_file() and (run / "reconstructions.png").is_file()
    model = vaekit.load(run)
    samples = model.sample(2)
    assert samples.shape == (2, 3, 8, 8)
    assert torch.equal(model.decode(torch.randn(2, 3), draw=True) * 255 % 1, torch.zeros(2, 3, 8, 8))  # on the levels
