"""The two-layer hierarchical VAE, the papers' MLP (--hidden-layers, --gated) and early stopping."""

from __future__ import annotations

import json
import math

import pytest
import torch

import vaekit
from vaekit.cli import main
from vaekit.models import MODELS
from vaekit.models.hvae import HVAE, HVAEConfig
from vaekit.models.vae import VAE, VAEConfig

TINY = dict(dataset="digits", width=8, hidden=32, latent_dim=4, progress=False)


def tiny(prior: str = "normal", **options) -> HVAE:
    torch.manual_seed(0)
    return HVAE(HVAEConfig(image_shape=(1, 8, 8), latent_dim=2, top_latent_dim=3, width=4, hidden=16, prior=prior,
                           prior_components=3, **options)).double()


def batch(n: int = 4) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 1, 8, 8), 0.3, dtype=torch.float64), generator=torch.Generator().manual_seed(0))


def test_it_is_one_file_and_one_line():
    assert MODELS["hvae"] is HVAE


def test_training_terms_are_the_two_kls_and_the_reconstruction():
    model = tiny().train()
    terms = model(batch())
    assert torch.allclose(terms["kl"], terms["kl_top"] + terms["kl_bottom"])
    assert torch.allclose(terms["neg_elbo"], terms["recon"] + terms["kl"])
    assert (terms["kl_top"] >= 0).all() and (terms["kl_bottom"] >= 0).all()  # both closed form here
    terms["loss"].backward()
    for net in (model.top_encoder, model.encoder, model.decoder, model.conditional_prior_net):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize("prior", ["normal", "vamp"])
def test_iwae_weights_are_the_joint_over_both_layers(prior):
    """With a decoder that ignores (z1, z2), the posterior is the prior and log p(x) = log p(x|.):
    the importance weights p(x|z) p(z1|z2) p(z2) / q(z1|x,z2) q(z2|x) then average to p(x) exactly, so
    IWAE_K converges to it; a missing or wrong density in either layer would leave a gap."""
    model = tiny(prior).eval()
    with torch.no_grad():  # (z1, z2) enter the decoder through its first layer and z2 through per-stage biases
        model.decoder.fc.weight.zero_()
        for bias in model.decoder.class_bias:
            bias.weight.zero_()
        for encoder in (model.top_encoder, model.encoder):  # q wider than p: bounded weights, a quick convergence
            encoder.out.weight.zero_()
            encoder.out.bias[encoder.out.bias.shape[0] // 2 :] = math.log(math.expm1(2.0))  # softplus -> scale 2
    x = batch()
    log_px = -model.likelihood(torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64)).log_prob(x)
    torch.manual_seed(0)
    terms = model.bounds(x, None, num_samples=20000, chunk=5000)
    # Monte Carlo error of the mean weight here: a few hundredths of a nat; leaving out any one density
    # (p(z1|z2), p(z2), q(z1|x,z2) or q(z2|x)) moves the estimate by nats
    assert torch.allclose(terms["nll"], log_px, atol=0.15)
    assert torch.allclose(terms["recon"], log_px, atol=1e-9)  # the likelihood does not depend on z
    assert (terms["kl"] > 0).all()  # q is not the prior: the ELBO sits below log p(x)
    assert (terms["nll"] <= terms["recon"] + terms["kl"] + 1e-9).all()


def test_points_of_the_latent_space_are_both_layers():
    model = tiny().eval()
    x = batch(3)
    z = model.encode(x)
    assert z.shape == (3, 5)
    assert model.decode(z).shape == (3, 1, 8, 8) and model.traversal(z[0], 5).shape == (5, 5, 5)
    images = model.sample(6)
    assert images.shape == (6, 1, 8, 8) and bool(((images >= 0) & (images <= 1)).all())
    with pytest.raises(vaekit.VaekitError, match=r"shape \(n, 5\) \(z1 then z2\)"):
        model.decode(z[:, :2])


def test_a_hierarchical_run_trains_evaluates_and_draws(tmp_path, capsys):
    run = vaekit.train(tmp_path / "hvae", model="hvae", prior="vamp", prior_components=4, epochs=2, **TINY)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"train_kl_top", "train_kl_bottom", "val_kl_top", "val_kl_bottom"} <= set(rows[-1])
    capsys.readouterr()  # what training printed
    assert main(["evaluate", str(run), "--iw-samples", "20", "--limit", "30", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["neg_elbo"] == result["recon"] + result["kl"] and result["latent_dim"] == 8
    for name in ("samples.png", "reconstructions.png", "latent.png", "traversal.png", "curves.png"):
        assert (run / name).stat().st_size > 0


# ---- the papers' MLP

def test_gated_mlp_of_two_hidden_layers():
    torch.manual_seed(0)
    model = VAE(VAEConfig(image_shape=(1, 28, 28), arch="mlp", hidden=300, hidden_layers=2, gated=True, latent_dim=40))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["encoder.fc.linear.weight"] == (600, 784) and shapes["encoder.deeper.0.linear.weight"] == (600, 300)
    assert shapes["decoder.fc.linear.weight"] == (600, 40) and shapes["decoder.deeper.0.linear.weight"] == (600, 300)
    layer = model.encoder.fc
    h = torch.rand(5, 784)
    value, gate = layer.linear(h).chunk(2, -1)
    assert torch.allclose(layer(h), value * torch.sigmoid(gate))
    plain = VAE(VAEConfig(image_shape=(1, 28, 28), arch="mlp", hidden=400, latent_dim=20))
    assert set(plain.state_dict()) == {"encoder.fc.weight", "encoder.fc.bias", "encoder.out.weight", "encoder.out.bias",
                                       "decoder.fc.weight", "decoder.fc.bias", "decoder.to_features.0.weight",
                                       "decoder.to_features.0.bias"}  # vaekit 0.1's keys: old runs still load


# ---- early stopping

def test_patience_stops_when_validation_stalls_and_a_resume_keeps_it_stopped(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--dataset", "digits", "--width", "8", "--hidden", "32", "--latent-dim", "4",
                 "--lr", "0.05", "--epochs", "80", "--patience", "2"]) == 0
    err = capsys.readouterr().err
    val = [json.loads(line)["val_neg_elbo"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = 1 + min(range(len(val)), key=val.__getitem__)
    assert len(val) < 80 and len(val) == best + 2  # stopped exactly `patience` epochs after the best
    assert f"stopped early after epoch {len(val)} of 80" in err and f"since epoch {best}" in err
    weights = (out / "model.safetensors").read_bytes()
    assert main(["train", "--resume", str(out)]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == len(val)
    assert (out / "model.safetensors").read_bytes() == weights
    assert math.isfinite(min(val))


def test_patience_must_be_a_whole_number(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "r"), "--patience", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and "patience (--patience) must be >= 0, got -1" in err
