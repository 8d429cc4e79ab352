"""The model contract (models/base.py), checked on every entry of MODELS: a model added as one file and
one line in MODELS gets these tests without writing any.

Each model trains for two tiny epochs through the API (the loop, validation, best weights, pictures,
report.html), resumes bit-exactly, keeps the bounds' identities, and answers every use the CLI, the
report and the explorer make of it with the documented shapes and ranges."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit import runs
from vaekit.data import test_targets as targets_of
from vaekit.explore import load_explorer
from vaekit.models import MODELS

TINY = dict(dataset="digits", batch_size=64, progress=False, lr_schedule="constant", kl_warmup=0.0)  # schedules that
# do not depend on the number of epochs, so that 1 epoch resumed to 2 is the 2-epoch run
SMALL = dict(width=8, hidden=32, latent_dim=4)  # where the model's config has the field


def options(name: str) -> dict:
    """Training options for a model from what it declares: small networks, and a few labels kept for a model
    trained on some labels."""
    cls = MODELS[name]
    sizes = {k: v for k, v in SMALL.items() if k in {f.name for f in dataclasses.fields(cls.Config) if "help" in f.metadata}}
    return {**TINY, **sizes, "model": name, **({"labels_per_class": 5} if cls.labels == "some" else {})}


@pytest.fixture(scope="module", params=sorted(MODELS))
def trained(request, tmp_path_factory):
    """(name, run folder of 2 epochs, model, test targets)."""
    name = request.param
    run = vaekit.train(tmp_path_factory.mktemp(name) / "run", epochs=2, **options(name))
    model = runs.load_model(run)
    split, data_cfg, mode = runs.evaluation_data(run)
    return name, run, model, targets_of(split, data_cfg.split_seed, mode, "cpu")


def test_declares_the_contract(trained):
    name, _, model, _ = trained
    cls = MODELS[name]
    assert cls.labels in ("none", "all", "some")
    assert isinstance(cls.classifies, bool)
    assert cls.Config.__dataclass_fields__["model"].default == name  # its config names it
    assert isinstance(model.num_classes, int) and (model.num_classes > 0) == (cls.labels != "none")
    assert isinstance(model.bound, str)
    for method in ("forward", "knobs", "bounds", "sample", "reconstruct", "encode", "decode", "traversal", "metrics"):
        assert callable(getattr(model, method)), method


def test_forward_returns_the_loss_and_per_example_terms_with_its_bound(trained):
    _, _, model, test = trained
    x, y = test.x[:16], None if test.y is None else test.y[:16]
    model.train()
    terms = model(x, y, beta=1.0, free_bits=0.0, **model.knobs(0))
    model.eval()
    assert terms["loss"].dim() == 0 and torch.isfinite(terms["loss"])
    assert model.bound in terms
    for key, value in terms.items():
        if key != "loss":
            assert value.dim() == 1 and len(value) <= 16 and torch.isfinite(value).all(), key
    assert all(isinstance(v, float) for v in model.knobs(0).values())


def test_bounds_keep_their_identities(trained):
    _, _, model, test = trained
    x, y = test.x[:32], None if test.y is None else test.y[:32]
    b = model.bounds(x, y, 200, 50)
    for key in ("recon", "kl", "nll"):
        assert b[key].shape == (32,) and torch.isfinite(b[key]).all(), key
    assert (b["recon"] > 0).all()  # -log p(x|z) of binary pixels
    # -IWAE_K <= -ELBO, on average over images (IWAE_K rises towards log p(x); Burda et al. 2016, thm 1)
    assert b["nll"].mean() <= (b["recon"] + b["kl"]).mean() + 0.5
    # and -log p(x) of 64 binary pixels is positive and below the 64 log 2 of a uniform guess plus slack
    assert (b["nll"] > 0).all() and b["nll"].mean() < 64 * math.log(2) * 2
    if "kl_per_dim" in b:
        assert b["kl_per_dim"].shape[0] == 32
        # the latent dimensions' KL is all of kl, or a part of it (M2's kl also holds the KL of q(y|x), >= 0)
        assert (b["kl_per_dim"] >= -1e-5).all() and (b["kl_per_dim"].sum(-1) <= b["kl"] + 1e-4).all()


def test_uses_have_the_documented_shapes_and_ranges(trained):
    _, _, model, test = trained
    shape = tuple(test.x.shape[1:])
    labels = 1 if model.num_classes else None
    images = model.sample(5, labels=labels)
    assert images.shape == (5, *shape) and images.min() >= 0 and images.max() <= 1
    x, y = test.x[:6], None if test.y is None else test.y[:6]
    z = model.encode(x, y)
    assert z.dim() == 2 and len(z) == 6 and torch.isfinite(z).all()
    decoded = model.decode(z, labels=y.tolist() if model.num_classes else None)
    assert decoded.shape == (6, *shape) and decoded.min() >= 0 and decoded.max() <= 1
    recon = model.reconstruct(x, y)
    assert recon.shape == (6, *shape) and recon.min() >= 0 and recon.max() <= 1
    walk = model.traversal(z[0], 5)  # (A, S, D): S = 5 quantiles of a Gaussian axis, K categories of a categorical one
    assert walk.dim() == 3 and walk.shape[1] >= 2 and walk.shape[2] == z.shape[1]
    assert model.decode(walk[0], labels=y[:1].tolist() * walk.shape[1] if model.num_classes else None).shape[0] == walk.shape[1]
    if model.classifies:
        probs = model.predict_proba(x)
        assert probs.shape == (6, model.num_classes)
        torch.testing.assert_close(probs.sum(-1), torch.ones(6), rtol=1e-5, atol=1e-5)


def test_training_writes_the_run_its_pictures_and_report(trained):
    _, run, model, _ = trained
    for name in ("config.json", "model.safetensors", "last.safetensors", "metrics.jsonl", "report.html", "samples.png"):
        assert (run / name).is_file(), name
    page = (run / "report.html").read_text()
    assert "<h2>Samples" in page and "data:image/png;base64," in page
    result = vaekit.evaluate(run, iw_samples=10, limit=16, device="cpu")
    assert math.isfinite(result["nll"]) and math.isfinite(result["neg_elbo"])


def test_the_explorer_answers(trained):
    _, run, model, _ = trained
    explorer = load_explorer(run)
    info = explorer.info()
    assert info["latent_dim"] >= 1 and info["gallery"]
    body = {"label": 0} if model.num_classes else {}
    view = explorer.image({"index": 0, **body})
    assert view["image"].startswith("data:image/png;base64,")
    moved = explorer.slide({"z": view["z"], "axis": 0, "step": 0, **body})
    assert len(moved["z"]) == len(view["z"])


def test_resume_is_bit_exact(trained, tmp_path):
    name, run, _, _ = trained
    first = vaekit.train(tmp_path / "first", epochs=1, pictures=False, **options(name))
    vaekit.train(first, resume=True, epochs=2, progress=False, pictures=False)
    for weights in ("model.safetensors", "last.safetensors"):
        straight, resumed = load_file(run / weights), load_file(first / weights)
        assert straight.keys() == resumed.keys()
        for key in straight:
            assert torch.equal(straight[key], resumed[key]), f"{weights}: {key}"


def test_the_kl_closed_form_is_chosen_by_the_declared_pair_alone():
    """A Laplace posterior against the N(0, I) prior has no declared closed form: the objectives take the
    sample estimate log q(z) - log p(z), whose mean is the true KL (torch's Laplace-Normal closed form),
    not the Normal-Normal formula applied to the Laplace's loc and scale."""
    from torch.distributions import Independent, Laplace, Normal, kl_divergence

    from vaekit.distributions import kl_per_dim
    from vaekit.objectives import latent_kl

    loc, scale = torch.tensor([[0.3, -1.0]], dtype=torch.float64), torch.tensor([[0.5, 2.0]], dtype=torch.float64)
    q = Independent(Laplace(loc, scale), 1)
    p = Independent(Normal(torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)), 1)
    assert kl_per_dim(q, p) is None
    torch.manual_seed(0)
    z = q.sample((200_000,))  # (S, 1, 2)
    kl, per_dim = latent_kl(q, p, z)
    assert per_dim is None
    true = kl_divergence(q.base_dist, p.base_dist).sum()
    assert abs(float(kl.mean() - true)) < 0.02  # the Monte Carlo error at 200,000 samples is about 0.004
    q_normal = Independent(Normal(loc, scale), 1)
    torch.testing.assert_close(kl_per_dim(q_normal, p), kl_divergence(q_normal.base_dist, p.base_dist))
