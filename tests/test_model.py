"""Shapes, conditioning and the objective's knobs of the VAE / CVAE."""

import pytest
import torch

from vaekit import VaekitError
from vaekit.models import CVAE, VAE
from vaekit.models.vae import CVAEConfig, VAEConfig
from vaekit.objectives import elbo


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 12, 20)])
@pytest.mark.parametrize("arch", ["conv", "mlp"])
def test_shapes(shape, arch):
    model = VAE(VAEConfig(image_shape=shape, arch=arch, latent_dim=5))
    x = torch.rand(4, *shape).bernoulli()
    terms = model(x)
    assert terms["loss"].shape == ()
    for k in ("neg_elbo", "recon", "kl"):
        assert terms[k].shape == (4,)
    assert torch.allclose(terms["neg_elbo"], terms["recon"] + terms["kl"])
    assert (terms["kl"] >= 0).all()
    assert model.posterior(x).batch_shape == (4,) and model.posterior(x).event_shape == (5,)
    assert model.likelihood(torch.randn(4, 5)).event_shape == shape
    samples = model.sample(6)
    assert samples.shape == (6, *shape) and samples.min() >= 0 and samples.max() <= 1
    assert model.reconstruct(x).shape == x.shape


def test_conv_downsampling_matches_image_size():
    from vaekit.nets import num_downsamples

    assert num_downsamples(28, 28) == 2  # 28 -> 14 -> 7
    assert num_downsamples(32, 32) == 3  # 32 -> 16 -> 8 -> 4
    assert num_downsamples(7, 7) == 0


def test_too_small_image_is_a_clear_error():
    with pytest.raises(VaekitError, match="too small"):
        VAE(VAEConfig(image_shape=(1, 2, 2)))


def test_loss_is_mean_neg_elbo_with_default_knobs():
    model = VAE(VAEConfig(image_shape=(1, 8, 8)))
    x = torch.rand(16, 1, 8, 8).bernoulli()
    torch.manual_seed(1)
    terms = elbo(model, x)
    assert torch.allclose(terms["loss"], terms["neg_elbo"].mean())


def test_beta_and_free_bits_change_only_the_training_loss():
    model = VAE(VAEConfig(image_shape=(1, 8, 8), latent_dim=4))
    x = torch.rand(16, 1, 8, 8).bernoulli()
    torch.manual_seed(1)
    plain = elbo(model, x)
    torch.manual_seed(1)
    weighted = elbo(model, x, beta=0.5)
    assert torch.allclose(plain["neg_elbo"], weighted["neg_elbo"])
    assert torch.allclose(weighted["loss"], plain["recon"].mean() + 0.5 * plain["kl"].mean())
    torch.manual_seed(1)
    floored = elbo(model, x, free_bits=100.0)  # every dimension below the floor: KL term = D * floor
    assert torch.allclose(floored["loss"], plain["recon"].mean() + 4 * 100.0)


def test_conditioning_changes_decoder_output_for_same_z():
    model = CVAE(CVAEConfig(image_shape=(1, 8, 8), num_classes=10, latent_dim=3))
    z = torch.randn(5, 3)
    a = model.likelihood(z, torch.full((5,), 2)).base_dist.logits
    b = model.likelihood(z, torch.full((5,), 7)).base_dist.logits
    assert not torch.allclose(a, b)
    x = torch.rand(5, 1, 8, 8).bernoulli()
    assert not torch.allclose(model.posterior(x, torch.full((5,), 2)).mean, model.posterior(x, torch.full((5,), 7)).mean)


def test_conditional_sampling_checks_labels():
    cvae = CVAE(CVAEConfig(image_shape=(1, 8, 8), num_classes=10))
    assert cvae.sample(4, labels=7).shape == (4, 1, 8, 8)
    assert cvae.sample(3, labels=[0, 1, 2]).shape == (3, 1, 8, 8)
    with pytest.raises(VaekitError, match="give labels"):
        cvae.sample(4)
    with pytest.raises(VaekitError, match="0..9"):
        cvae.sample(2, labels=[3, 10])
    with pytest.raises(VaekitError, match="draws no classes"):
        VAE(VAEConfig(image_shape=(1, 8, 8))).sample(2, labels=1)


def test_class_prior_is_a_gaussian_per_class_used_by_objective_and_sampling():
    torch.manual_seed(0)
    cvae = CVAE(CVAEConfig(image_shape=(1, 8, 8), num_classes=3, latent_dim=2))
    with torch.no_grad():
        cvae.class_prior_loc.copy_(torch.tensor([[0.0, 0.0], [5.0, -5.0], [0.0, 9.0]]))
        cvae.class_prior_log_scale.copy_(torch.log(torch.tensor([[1.0, 1.0], [0.1, 0.1], [2.0, 0.5]])))
    c = torch.tensor([1, 2])
    prior = cvae.prior(c)
    assert torch.equal(prior.mean, cvae.class_prior_loc[c]) and torch.allclose(prior.stddev, torch.tensor([[0.1, 0.1], [2.0, 0.5]]))
    # The KL term of the ELBO is KL(q(z|x,c) || p(z|c)) for each image's own class, in closed form.
    x = torch.rand(2, 1, 8, 8).bernoulli()
    q = cvae.posterior(x, c)
    loc, scale = q.mean, q.stddev
    ploc, pscale = cvae.class_prior_loc[c], cvae.class_prior_log_scale[c].exp()
    closed = (torch.log(pscale / scale) + (scale**2 + (loc - ploc) ** 2) / (2 * pscale**2) - 0.5).sum(-1)
    assert torch.allclose(elbo(cvae, x, c)["kl"], closed, rtol=1e-5)
    # Samples for class 1 are decoded from z ~ N((5, -5), 0.1^2 I).
    seen = []
    decode = cvae.likelihood
    cvae.likelihood = lambda z, c: seen.append(z) or decode(z, c)
    cvae.sample(2000, labels=1)
    z = seen[0]
    assert z.shape == (2000, 2)
    assert torch.allclose(z.mean(0), torch.tensor([5.0, -5.0]), atol=0.02) and torch.allclose(z.std(0), torch.full((2,), 0.1), rtol=0.1)
    with pytest.raises(VaekitError, match="needs labels"):
        cvae.prior()


def test_without_class_prior_the_cvae_prior_is_standard_normal():
    cvae = CVAE(CVAEConfig(image_shape=(1, 8, 8), num_classes=3, latent_dim=2, class_prior=False))
    assert not any("class_prior" in name for name, _ in cvae.named_parameters())
    prior = cvae.prior(torch.tensor([1, 2]))
    assert torch.equal(prior.mean, torch.zeros(2)) and torch.equal(prior.stddev, torch.ones(2))


def test_cvae_needs_classes():
    with pytest.raises(VaekitError, match="labelled"):
        CVAE(CVAEConfig(image_shape=(1, 8, 8), num_classes=0))


def test_conditional_accuracy_on_a_fake_classifier_with_known_answers():

    from torch import nn

    from vaekit.classifier import conditional_accuracy_per_class

    class FakeModel(nn.Module):  # "samples" whose pixels all equal the requested class
        num_classes = 4

        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(1))

        def sample(self, n, labels):
            return torch.as_tensor(labels, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2)

    class FakeJudge(nn.Module):  # reads the class off the pixels, but calls every 3 a 0
        def forward(self, x):
            c = x.mean(dim=(1, 2, 3)).round().long()
            return nn.functional.one_hot(torch.where(c == 3, 0, c), 4).float()

    per_class = conditional_accuracy_per_class(FakeModel(), FakeJudge(), samples_per_class=7, batch_size=5)
    assert per_class == [1, 1, 1, 0]
    assert sum(per_class) / len(per_class) == pytest.approx(0.75)  # conditional_accuracy, as evaluate reports it


def test_judge_blur_is_a_normalised_gaussian_per_image():
    from vaekit.classifier import gaussian_blur

    x = torch.zeros(3, 1, 15, 15)
    x[:, :, 7, 7] = 1.0  # a point in the middle of each image
    sigma = torch.tensor([1e-6, 0.5, 1.0])
    y = gaussian_blur(x, sigma)
    assert torch.allclose(y[0], x[0], atol=1e-6)  # sigma -> 0: the image itself
    assert torch.allclose(y.sum(dim=(1, 2, 3)), torch.ones(3), atol=1e-5)  # mass is kept away from the edges
    r = torch.arange(-3, 4, dtype=torch.float32)  # the kernel reaches 3 sigma of the widest blur
    for i, s in enumerate(sigma[1:], start=1):
        g = torch.exp(-(r**2) / (2 * s**2))
        g = g / g.sum()
        assert torch.allclose(y[i, 0, 4:11, 4:11], g[:, None] * g[None, :], atol=1e-6)  # separable 2-D Gaussian
        assert y[i, 0, :4].abs().max() == 0 and y[i, 0, 11:].abs().max() == 0
    wide = gaussian_blur(x[:1], torch.tensor([2.0]))  # radius 6: the tails are there, the mass is kept
    assert wide[0, 0, 7, 1] > 0 and wide.sum() == pytest.approx(1.0, abs=1e-5)
    flat = torch.full((2, 3, 9, 9), 0.3)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([0.7, 1.0])), flat)  # edges replicated: a flat image stays flat


def test_a_cached_judge_of_another_recipe_is_retrained(tmp_path, monkeypatch):
    import json

    from vaekit import classifier
    from vaekit.data import DataConfig, load_dataset

    dataset = load_dataset(DataConfig(dataset="digits"))
    trained = []

    def quick_train(ds, device):  # stands in for the real training: records that it ran
        trained.append(1)
        return classifier.Classifier(ds.image_shape, ds.num_classes), 0.5

    monkeypatch.setattr(classifier, "train_classifier", quick_train)
    classifier.cached_classifier(tmp_path, dataset, torch.device("cpu"))
    report = json.loads((tmp_path / classifier.REPORT).read_text())
    assert report["judge"] == classifier.JUDGE and len(trained) == 1
    classifier.cached_classifier(tmp_path, dataset, torch.device("cpu"))
    assert len(trained) == 1  # the same recipe: loaded from the cache
    (tmp_path / classifier.REPORT).write_text(json.dumps({**report, "judge": "an older recipe"}))
    classifier.cached_classifier(tmp_path, dataset, torch.device("cpu"))
    assert len(trained) == 2 and json.loads((tmp_path / classifier.REPORT).read_text())["judge"] == classifier.JUDGE
