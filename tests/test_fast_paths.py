"""The speed options must not change results beyond floating-point noise."""

import json
from pathlib import Path

import pytest
import torch

import vaekit
from vaekit.config import TrainConfig
from vaekit.models import VAE
from vaekit.models.vae import VAEConfig
from vaekit.devices import speedups
from vaekit.train import epoch_order


def _model_and_batch():
    torch.manual_seed(0)
    return VAE(VAEConfig(image_shape=(1, 8, 8), width=8, hidden=32, latent_dim=4)), torch.rand(16, 1, 8, 8).bernoulli()


@pytest.mark.slow
@pytest.mark.inductor
def test_compiled_forward_equals_eager_on_the_same_batch_and_seed():
    model, x = _model_and_batch()
    compiled, _ = speedups(model, TrainConfig(compile=True), torch.device("cpu"))
    torch.manual_seed(1)
    eager = model(x, beta=1.0)
    torch.manual_seed(1)
    fast = compiled(x, beta=torch.tensor(1.0))
    for k in ("loss", "neg_elbo", "recon", "kl"):  # same noise, same math: equal to float32 rounding
        torch.testing.assert_close(fast[k], eager[k], rtol=1e-5, atol=1e-4)
    eager["loss"].backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    fast["loss"].backward()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-4)


def test_bf16_autocast_stays_close_to_fp32():
    model, x = _model_and_batch()
    _, autocast = speedups(model, TrainConfig(precision="bf16"), torch.device("cpu"))
    torch.manual_seed(1)
    exact = model(x)["neg_elbo"]
    torch.manual_seed(1)
    with autocast:
        approx = model(x)["neg_elbo"]
    assert approx.dtype == torch.float32  # the likelihood reductions stay in fp32
    torch.testing.assert_close(approx, exact, rtol=2e-2, atol=0.5)  # bf16 has 8 bits of mantissa


@pytest.mark.slow
@pytest.mark.inductor
def test_compiled_training_run_follows_the_eager_one(tmp_path):
    def losses(name: str, **options) -> list[float]:
        run = vaekit.train(tmp_path / name, dataset="digits", epochs=2, width=8, hidden=32, latent_dim=4,
                           progress=False, **options)
        rows = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]
        return [r[k] for r in rows for k in ("train_neg_elbo", "val_neg_elbo")]

    compiled = losses("compiled", compile=True, kl_warmup=1)
    assert compiled[3] < compiled[1] < 60
    # The KL weight rises step by step over the first epoch; the compiled step takes it as a 0-d tensor
    # refilled in place, and must see each step's value as the eager step does (the same seed).
    eager = losses("eager", kl_warmup=1)
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert losses("no-warmup", kl_warmup=0)[3] != pytest.approx(eager[3], rel=1e-3)  # the weight matters


@pytest.mark.parametrize("name, options", [
    ("vae", {}), ("vae", {"arch": "mlp", "prior": "mixture"}), ("vae", {"prior": "vamp", "autoregressive": True}),
    ("hvae", {}), ("cvae", {"num_classes": 10}), ("categorical", {}),
])
def test_the_compiled_step_is_one_graph(name, options):
    # A graph break splits the compiled step (and on CUDA its CUDA graph) in two, with Python between.
    # torch's kl_divergence made one at every step's KL until the models called the closed form directly.
    # (M2 breaks the graph where it splits the batch by label: shapes that depend on the data.)
    from vaekit import models

    model = models.build(models.model_class(name).Config(image_shape=(1, 8, 8), width=8, hidden=32, **options))
    x, y = torch.rand(16, 1, 8, 8).bernoulli(), torch.arange(16) % 10
    knobs = {k: torch.tensor(v) for k, v in model.knobs(0).items()}
    explained = torch._dynamo.explain(model)(x, y if name == "cvae" else None, beta=torch.tensor(0.5), **knobs)
    assert explained.graph_break_count == 0, [b.reason.splitlines()[0] for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_each_epoch_visits_every_example_once():
    n, batch = 103, 16
    order = epoch_order(seed=3, epoch=2, n=n, device=torch.device("cpu"))
    seen = torch.cat([order[i : i + batch] for i in range(0, n, batch)])
    assert sorted(seen.tolist()) == list(range(n))
    assert torch.equal(order, epoch_order(3, 2, n, torch.device("cpu")))  # a function of (seed, epoch)
    assert not torch.equal(order, epoch_order(3, 3, n, torch.device("cpu")))


def test_training_data_stays_uint8_on_the_device():
    from vaekit.config import DataConfig
    from vaekit.data import load_dataset, training_targets

    data = load_dataset(DataConfig())
    targets = training_targets(data.train, "dynamic", 1, "cpu")
    assert targets.x.dtype == torch.uint8  # the float batch exists only for the step
    x, _ = targets.batch(torch.arange(8))
    assert x.dtype == torch.float32 and set(x.unique().tolist()) <= {0.0, 1.0}
