"""The categorical-latent VAE: exact KL, the three gradient estimators, the temperature schedule, and
evaluation with true discrete samples."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit.cli import main
from vaekit.evaluate import evaluate
from vaekit.gradient_variance import bias, gradient_draws, variance
from vaekit.models import MODELS
from vaekit.models.categorical import CategoricalConfig, CategoricalVAE

TINY = dict(dataset="digits", width=8, hidden=32, groups=4, categories=3, progress=False)


def tiny(groups: int = 2, categories: int = 3, **options) -> CategoricalVAE:
    torch.manual_seed(0)
    return CategoricalVAE(CategoricalConfig(image_shape=(1, 8, 8), groups=groups, categories=categories, width=4,
                                            hidden=16, **options))


def digits_batch(n: int = 32) -> torch.Tensor:
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images[:n], dtype=torch.float32)[:, None] / 16
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(0))


def is_one_hot(z: torch.Tensor, groups: int, categories: int) -> bool:
    z = z.reshape(-1, groups, categories)  # (N, G, K), every leading dimension (e.g. K samples of B images) in N
    return bool(((z == 0) | (z == 1)).all() and (z.sum(-1) == 1).all())


def test_it_is_one_file_and_one_line():
    assert MODELS["categorical"] is CategoricalVAE


# ---- the KL: exact, from the logits

def test_kl_equals_a_brute_force_sum_over_every_joint_code():
    model = tiny(groups=2, categories=3)
    log_q = torch.log_softmax(torch.randn(5, 2, 3, dtype=torch.float64) * 2, -1)
    brute = torch.zeros(5, dtype=torch.float64)
    for code in itertools.product(range(3), repeat=2):  # all 9 joint values of (z_1, z_2)
        log_q_z = log_q[:, 0, code[0]] + log_q[:, 1, code[1]]
        brute += log_q_z.exp() * (log_q_z - 2 * math.log(1 / 3))  # log q(z) - log p(z), p(z) = 1/9
    assert torch.allclose(model.kl(log_q).sum(-1), brute, rtol=1e-12, atol=1e-12)
    assert (model.kl(log_q) >= 0).all()


def test_kl_is_zero_at_the_uniform_posterior_and_log_k_at_a_one_hot_one():
    model = tiny(groups=3, categories=10)
    uniform = torch.log_softmax(torch.zeros(2, 3, 10, dtype=torch.float64), -1)
    assert torch.allclose(model.kl(uniform), torch.zeros(2, 3, dtype=torch.float64), atol=1e-15)
    one_hot = torch.log_softmax(torch.full((2, 3, 10), -1e4, dtype=torch.float64).index_fill(-1, torch.tensor([4]), 0), -1)
    assert torch.allclose(model.kl(one_hot), torch.full((2, 3), math.log(10), dtype=torch.float64))


# ---- the estimators

@pytest.mark.parametrize("estimator", ["gumbel", "straight-through", "reinforce"])
def test_each_estimator_reports_the_negative_elbo_and_trains_the_encoder(estimator):
    model = tiny(estimator=estimator).train()
    x = digits_batch()
    terms = model(x, temperature=0.7)
    assert torch.allclose(terms["neg_elbo"], terms["recon"] + terms["kl"])
    assert torch.isclose(terms["loss"], terms["neg_elbo"].mean(), rtol=1e-6)  # the surrogate adds no value
    terms["loss"].backward()
    encoder_grad = sum(float(p.grad.abs().sum()) for p in model.encoder.parameters())
    assert encoder_grad > 0


def test_straight_through_decodes_one_hot_codes_and_gumbel_relaxed_ones():
    seen = []
    for estimator in ("straight-through", "gumbel"):
        model = tiny(estimator=estimator).train()
        model.decoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
        model(digits_batch(), temperature=0.5)
    assert is_one_hot(seen[0], 2, 3)
    assert not is_one_hot(seen[1], 2, 3) and torch.allclose(seen[1].view(-1, 2, 3).sum(-1), torch.ones(32, 2))


def test_reinforce_keeps_a_moving_average_baseline_in_its_state():
    model = tiny(estimator="reinforce").train()
    x = digits_batch()
    first = model(x)["recon"].mean()
    assert int(model.baseline_updates) == 1
    assert torch.isclose(model._baseline(), first.detach(), rtol=1e-6)  # bias-corrected: the first value
    assert {"baseline_mean", "baseline_updates"} <= set(model.state_dict())
    assert not tiny(estimator="reinforce", baseline=False)._baseline()


def test_a_tiny_temperature_gives_finite_losses_and_gradients():
    model = tiny(groups=4, categories=10).train()
    with torch.no_grad():  # confident logits: the relaxed sample's softmax is nearly hard
        model.encoder[-1].weight.mul_(50)
    for estimator in ("gumbel", "straight-through"):
        model.cfg = CategoricalConfig(**{**model.cfg.__dict__, "estimator": estimator})
        model.zero_grad()
        loss = model(digits_batch(), temperature=0.1)["loss"]
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_gumbel_gradient_variance_is_below_reinforce_on_the_same_model_and_batch():
    x = digits_batch(16)
    state = tiny(groups=4, categories=5).state_dict()
    draws = {}
    for estimator, baseline in (("gumbel", True), ("reinforce", True), ("reinforce", False)):
        model = tiny(groups=4, categories=5, estimator=estimator, baseline=baseline)
        model.load_state_dict(state)
        if estimator == "reinforce":  # the baseline a moving average would have settled to
            model(x)
        draws[estimator, baseline] = gradient_draws(model, list(model.encoder.parameters()), x, 64, temperature=0.5)
    gumbel, with_baseline, plain = (variance(draws[k]) for k in (("gumbel", True), ("reinforce", True), ("reinforce", False)))
    assert gumbel < with_baseline < plain
    # REINFORCE is unbiased: its two variants agree within their noise
    noise = math.sqrt((with_baseline + plain) / 64)
    assert bias(draws["reinforce", True], draws["reinforce", False].mean(0)) < 3 * noise


# ---- the temperature schedule and resume

def test_temperature_follows_the_global_step_and_resumes_where_it_was(tmp_path):
    options = dict(model="categorical", anneal_rate=2e-2, tau0=1.0, tau_min=0.5, lr_schedule="constant", **TINY)
    straight = vaekit.train(tmp_path / "a", epochs=3, **options)
    first = vaekit.train(tmp_path / "b", epochs=1, **options)
    vaekit.train(first, resume=True, epochs=3, progress=False)
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    temperatures = [r["temperature"] for r in rows]
    steps = [r["step"] for r in rows]  # the temperature of the epoch's last step
    assert temperatures == [max(0.5, math.exp(-2e-2 * (s - 1))) for s in steps]
    assert temperatures[0] < 1.0 and temperatures[-1] == 0.5  # it moved all the way to tau_min
    resumed = [json.loads(line)["temperature"] for line in (first / "metrics.jsonl").read_text().splitlines()]
    assert resumed == temperatures
    a, b = load_file(straight / "last.safetensors"), load_file(first / "last.safetensors")
    keys = [k for k in a if k.startswith(("model.", "optim."))]
    assert keys and all(torch.equal(a[k], b[k]) for k in keys)


def test_reinforce_resumes_bit_exactly_with_its_baseline(tmp_path):
    options = dict(model="categorical", estimator="reinforce", lr_schedule="constant", **TINY)
    straight = vaekit.train(tmp_path / "a", epochs=2, **options)
    first = vaekit.train(tmp_path / "b", epochs=1, **options)
    vaekit.train(first, resume=True, epochs=2, progress=False)
    a, b = load_file(straight / "last.safetensors"), load_file(first / "last.safetensors")
    assert int(a["model.baseline_updates"]) > 0
    keys = [k for k in a if k.startswith(("model.", "optim."))]
    assert "model.baseline_mean" in keys and all(torch.equal(a[k], b[k]) for k in keys)


# ---- evaluation: true discrete samples, real bounds

def test_validation_and_evaluation_decode_only_one_hot_codes():
    model = tiny(estimator="gumbel")
    seen = []
    model.decoder.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = digits_batch(8)
    model.eval()
    model(x)  # validation
    result = evaluate(model, x, iw_samples=5)
    assert seen and all(is_one_hot(z, 2, 3) for z in seen)
    assert result["nll"] <= result["neg_elbo"] + 1.0  # IWAE_5 tightens the bound (up to sampling noise)
    assert len(result["kl_per_dim"]) == 2  # one KL per categorical variable


def test_iwae_with_one_sample_is_an_unbiased_elbo_estimate():
    model = tiny().eval()
    x = digits_batch(4)
    torch.manual_seed(1)
    one = model.bounds(x, None, num_samples=1, chunk=1)
    exact_kl = model.kl(model.posterior_logits(x)).sum(-1)
    assert torch.allclose(one["kl"], exact_kl)
    many = model.bounds(x, None, num_samples=4000, chunk=1000)
    # E_q[log p(x|z)] - KL = E_q[log w]: -ELBO from recon + exact KL agrees with the mean log-weight
    assert torch.allclose(many["recon"] + many["kl"], many["recon"] + exact_kl)
    assert (many["nll"] <= many["recon"] + many["kl"] + 1e-4).all()


def test_a_categorical_run_trains_evaluates_and_draws(tmp_path, capsys):
    run = vaekit.train(tmp_path / "run", model="categorical", epochs=2, **TINY)
    for name in ("samples.png", "reconstructions.png", "latent.png", "traversal.png"):
        assert (run / name).stat().st_size > 0
    model = vaekit.load(run)
    codes = model.traversal(model.encode(digits_batch(1))[0])
    assert codes.shape == (4, 3, 12) and is_one_hot(codes.flatten(0, 1), 4, 3)
    assert all(torch.equal(codes[g, k].view(4, 3)[g], torch.eye(3)[k]) for g in range(4) for k in range(3))
    capsys.readouterr()  # what training printed
    assert main(["evaluate", str(run), "--iw-samples", "10", "--limit", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["neg_elbo"] == result["recon"] + result["kl"] and result["nll"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--categories", "1"], r"categories \(--categories\) must be >= 2, got 1"),
    (["--groups", "0"], r"groups \(--groups\) must be >= 1, got 0"),
    (["--tau0", "0"], r"tau0 \(--tau0\) must be > 0, got 0"),
    (["--tau-min", "-0.5"], r"tau_min \(--tau-min\) must be > 0"),
    (["--estimator", "score"], r"invalid choice: 'score'"),
    (["--tau0", "0.3"], r"tau_min \(0.5\) must not exceed tau0 \(0.3\)"),
    (["--latent-dim", "8"], r"--latent-dim is a setting of --model"),
])
def test_bad_settings_are_one_line(argv, message, tmp_path, capsys):
    import re

    try:
        code = main(["train", "--model", "categorical", "--out", str(tmp_path / "r"), "--epochs", "1", *argv])
    except SystemExit as e:  # argparse's own checks (choices) exit from the parser
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not (tmp_path / "r").exists()
