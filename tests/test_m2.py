"""The semi-supervised VAE (M2), the latent classifier (M1), labels with holes and the model contract."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import vaekit
from vaekit import VaekitError
from vaekit.cli import main
from vaekit.config import DataConfig
from vaekit.data import EpochPlan, load_dataset
from vaekit.models import MODELS
from vaekit.models.m2 import M2, M2Config

SRC = Path(__file__).parents[1] / "src" / "vaekit"
TINY = dict(dataset="digits", width=8, hidden=32, latent_dim=4, progress=False)


def tiny_m2(k: int = 3, **options) -> M2:
    """A small M2; q(y|x) without dropout unless asked for, so that training-mode terms are exact."""
    torch.manual_seed(0)
    options = {"classifier_dropout": 0.0, **options}
    return M2(M2Config(image_shape=(1, 8, 8), num_classes=k, latent_dim=2, width=4, hidden=16,
                       labelled_fraction=0.1, **options))


# ---- the contract: a model is a file and a line

def test_generic_files_name_no_model():
    for name in ("train.py", "evaluate.py", "plots.py", "checkpoint.py", "api.py"):
        text = (SRC / name).read_text()
        for word in ("conditional", "cvae", "m2", "M2"):
            assert word not in text, f"{name} names '{word}'"
    assert set(MODELS) >= {"vae", "cvae", "m2"}


def test_fit_reads_as_a_short_driver():
    import inspect

    from vaekit import train as _  # noqa: F401
    import sys

    loop = sys.modules["vaekit.train"]
    for function in (loop.fit, loop.prepare_and_train, loop.train, loop.run_epoch, loop.log):
        assert len(inspect.getsource(function).splitlines()) <= 50, function.__name__


# ---- the objective: y summed out exactly

def test_unlabelled_bound_enumerates_every_class_weighted_by_q():
    """-U(x) = sum_y q(y|x) (recon_y + KL_y) + KL(q(y|x) || uniform), with y enumerated, never sampled."""
    model = tiny_m2(k=3).train()
    seen = []

    def given_y(x, y, prior, features=None):  # a known stand-in for the per-class -ELBO: recon = 10 y + 1, KL = y
        seen.append(y.clone())
        return 10 * y.double() + 1, y.double()

    model._neg_elbo_given_y = given_y
    x = torch.rand(5, 1, 8, 8).bernoulli()
    terms = model(x, torch.full((5,), -1))
    assert torch.equal(seen[-1], torch.tensor([0] * 5 + [1] * 5 + [2] * 5))  # every class, one batched pass
    qy = model.label_posterior(x).exp().double()
    expected_recon = (qy * (10 * torch.arange(3.0) + 1)).sum(-1)
    expected_kl = (qy * torch.arange(3.0)).sum(-1) + (qy * (qy.log() + math.log(3))).sum(-1)
    torch.testing.assert_close(terms["recon"].double(), expected_recon, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(terms["kl"].double(), expected_kl, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(terms["neg_elbo"], terms["recon"] + terms["kl"])
    assert terms["labelled_neg_elbo"].shape == terms["classifier_nll"].shape == (0,)


def test_labelled_images_use_the_labelled_bound_and_the_classifier_term():
    model = tiny_m2(k=3, alpha=2.0).train()
    model._neg_elbo_given_y = lambda x, y, prior, features=None: (10 * y.float() + 1, y.float())
    x = torch.rand(4, 1, 8, 8).bernoulli()
    y = torch.tensor([2, -1, 0, -1])
    terms = model(x, y)
    torch.testing.assert_close(terms["labelled_neg_elbo"], torch.tensor([21 + 2 + math.log(3), 1 + math.log(3)]))
    log_qy = model.label_posterior(x)
    torch.testing.assert_close(terms["classifier_nll"], -log_qy[[0, 2], [2, 0]])
    assert terms["neg_elbo"].shape == (2,)  # the unlabelled ones
    expected = (terms["neg_elbo"].sum() + terms["labelled_neg_elbo"].sum() + 2.0 * terms["classifier_nll"].sum()) / 4
    torch.testing.assert_close(terms["loss"], expected)


def test_classifier_dropout_acts_in_training_only_and_keeps_the_checkpoint_keys():
    plain, dropped = tiny_m2(), tiny_m2(classifier_dropout=0.5)
    assert M2Config().classifier_dropout == 0.5  # the default
    assert list(plain.state_dict()) == list(dropped.state_dict())
    x = torch.rand(6, 1, 8, 8).bernoulli()
    dropped.eval()
    torch.testing.assert_close(dropped.label_posterior(x), plain.eval().label_posterior(x))  # the same weights
    dropped.train()
    torch.manual_seed(0)
    first = dropped.label_posterior(x)
    assert not torch.allclose(first, dropped.label_posterior(x))  # a new mask per call
    with pytest.raises(VaekitError, match="classifier_dropout"):
        tiny_m2(classifier_dropout=1.0)


def test_default_alpha_is_kingmas_per_labelled_image():
    assert tiny_m2().alpha == pytest.approx(0.1 / 0.1)  # 0.1 N / N_l with N_l / N = 0.1
    assert tiny_m2(alpha=3.0).alpha == 3.0
    assert tiny_m2(alpha=0.0).alpha == 0.0  # 0 turns the classifier term off


def test_bounds_score_the_classifier_and_repeat_under_a_seed():
    model = tiny_m2(k=3).eval()
    x = torch.rand(6, 1, 8, 8).bernoulli()
    y = torch.tensor([0, 1, 2, -1, 0, 1])
    torch.manual_seed(1)
    b = model.bounds(x, y, num_samples=50, chunk=30)
    assert b["label_error"].shape == (5,)  # the images with a known label
    torch.testing.assert_close(b["label_error"], (model.label_posterior(x).argmax(-1) != y)[y >= 0].float())
    assert (b["nll"] <= b["recon"] + b["kl"] + 1.0).all()  # IWAE_50 is (noisily) below the -ELBO
    assert b["kl_per_dim"].shape == (6, 2)
    log_qy = model.label_posterior(x)
    kl_label = (log_qy.exp() * (log_qy + math.log(3))).sum(-1)  # KL(q(y|x) || uniform)
    torch.testing.assert_close(b["kl"], b["kl_per_dim"].sum(-1) + kl_label)
    torch.manual_seed(1)
    again = model.bounds(x, y, num_samples=50, chunk=30)
    assert torch.equal(again["nll"], b["nll"])


def test_the_iwae_over_y_and_z_converges_to_log_p_x_by_quadrature():
    """-log p(x) = -log sum_y p(y) integral p(x|y,z) p(z) dz, on a 2-D grid over z, against the estimate
    with (y_k, z_k) ~ q(y|x) q(z|x,y): K samples in all, not per class."""
    model = tiny_m2(k=3).eval()
    torch.manual_seed(2)
    x = torch.rand(6, 1, 8, 8).bernoulli()
    grid = torch.linspace(-7, 7, 281)
    z = torch.cartesian_prod(grid, grid)  # (G, 2)
    with torch.no_grad():
        log_pz = model.prior().log_prob(z)[:, None] + 2 * math.log(grid[1] - grid[0])  # (G, 1): p(z) dz
        log_px_given_y = torch.stack([
            torch.logsumexp(model.likelihood(z[:, None].expand(-1, 6, -1), torch.full((len(z), 6), c)).log_prob(x)
                            + log_pz, 0) for c in range(3)])  # (3, 6)
        exact = -torch.logsumexp(log_px_given_y - math.log(3), 0)
        torch.manual_seed(4)
        many = model.bounds(x, None, num_samples=10000, chunk=2000)
        few = model.bounds(x, None, num_samples=1, chunk=1)
    torch.testing.assert_close(many["nll"], exact, atol=0.15, rtol=0)  # observed within 0.05
    assert (few["nll"] - exact).mean() > (many["nll"] - exact).mean()  # one sample: the ELBO, looser


def test_vamp_prior_is_the_pseudo_inputs_posteriors_with_labels_m_mod_k():
    """p(z) = (1/M) sum_m q(z | u_m, y_m = m mod K), the same for every y; it learns from M2's loss."""
    model = tiny_m2(k=3, prior="vamp", prior_components=5).train()
    z = torch.randn(7, 2)
    u = model.latent_prior.pseudo_inputs()
    q = model.posterior(u, torch.tensor([0, 1, 2, 0, 1]))
    expected = torch.logsumexp(q.log_prob(z[:, None, :]), dim=-1) - math.log(5)  # (7,)
    torch.testing.assert_close(model.prior().log_prob(z), expected)
    torch.testing.assert_close(model.prior(torch.tensor([2])).log_prob(z), expected)
    x = torch.rand(4, 1, 8, 8).bernoulli()
    model(x, torch.tensor([2, -1, 0, -1]))["loss"].backward()
    assert model.latent_prior.pseudo_logits.grad.abs().sum() > 0


@pytest.mark.parametrize("prior", ["mixture", "vamp"])
def test_m2_with_a_mixture_prior_bounds_and_samples(prior):
    model = tiny_m2(k=3, prior=prior, prior_components=4).eval()
    x = torch.rand(6, 1, 8, 8).bernoulli()
    b = model.bounds(x, torch.tensor([0, 1, 2, -1, 0, 1]), num_samples=50, chunk=30)
    assert torch.isfinite(b["nll"]).all() and "kl_per_dim" not in b  # no closed form, no per-dimension KL
    assert (b["nll"] <= b["recon"] + b["kl"] + 1.0).all()
    assert model.sample(5, labels=1).shape == (5, 1, 8, 8)
    assert not any("pseudo_labels" in k for k in model.state_dict())  # rebuilt from the config


def test_m2_with_the_normal_prior_keeps_its_checkpoint_keys():
    """Runs saved before --prior existed load: N(0, I) adds no weights."""
    assert not any("prior" in k for k in tiny_m2().state_dict())


# ---- data: labels with holes, balanced subsets, mixed batches

def test_labels_per_class_keeps_a_balanced_seeded_subset():
    full = load_dataset(DataConfig(dataset="digits"))
    data = load_dataset(DataConfig(dataset="digits", labels_per_class=10))
    y = data.train.y
    assert (torch.bincount(y[y >= 0], minlength=10) == 10).all() and int((y == -1).sum()) == len(y) - 100
    kept = y >= 0
    assert torch.equal(y[kept], full.train.y[kept])  # the kept labels are the true ones
    again = load_dataset(DataConfig(dataset="digits", labels_per_class=10))
    assert torch.equal(again.train.y, y)
    other = load_dataset(DataConfig(dataset="digits", labels_per_class=10, split_seed=1))
    assert not torch.equal(other.train.index[other.train.y >= 0].sort().values, data.train.index[kept].sort().values)
    assert torch.equal(data.test.y, full.test.y)  # test labels are never hidden


def test_every_batch_mixes_labelled_and_unlabelled_images():
    labelled = torch.tensor([3, 17, 40, 41, 99])
    plan = EpochPlan(n=103, batch_size=10, world=1, seed=4, labelled=labelled, share=0.3)
    batches = plan.batches(epoch=2, device="cpu")
    assert len(batches) == plan.steps == math.ceil(98 / 7)
    unlabelled_seen = torch.cat([b[:7] for b in batches])
    assert sorted(unlabelled_seen.tolist()) == sorted(set(range(103)) - set(labelled.tolist()))  # one pass
    for b in batches:
        assert sum(int(i) in labelled.tolist() for i in b) == 3  # 30 % of every batch
    assert all(torch.equal(a, b) for a, b in zip(batches, plan.batches(epoch=2, device="cpu")))  # (seed, epoch)
    assert not all(torch.equal(a, b) for a, b in zip(batches, plan.batches(epoch=3, device="cpu")))


def test_plain_plan_is_one_shuffled_pass():
    plan = EpochPlan(n=23, batch_size=5, world=2, seed=1)
    batches = plan.batches(1, "cpu")
    assert [len(b) for b in batches] == [5, 5, 5, 5, 4] and sorted(torch.cat(batches).tolist())[:23] == sorted(
        list(range(23)) + [torch.cat(batches)[0].item()])[:23]


# ---- end to end

@pytest.fixture(scope="module")
def m2_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("m2") / "run"
    return vaekit.train(out, model="m2", labels_per_class=5, epochs=2, **TINY)


def test_m2_run_folder_records_the_labelled_images(m2_run):
    doc = json.loads((m2_run / "labelled.json").read_text())
    assert len(doc["source_index"]) == len(doc["label"]) == 50
    assert np.bincount(doc["label"], minlength=10).tolist() == [5] * 10
    from sklearn.datasets import load_digits

    truth = load_digits().target
    assert [int(truth[i]) for i in doc["source_index"]] == doc["label"]  # positions in the source
    metrics = [json.loads(line) for line in (m2_run / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_neg_elbo", "train_labelled_neg_elbo", "train_classifier_nll", "val_label_error"):
        assert all(math.isfinite(m[key]) for m in metrics), key
    for name in ("samples.png", "reconstructions.png", "latent.png", "analogy.png", "curves.png"):
        assert (m2_run / name).is_file(), name


def test_m2_evaluate_and_predict(m2_run, tmp_path, capsys):
    report = vaekit.evaluate(m2_run, iw_samples=5, device="cpu", samples_per_class=5)
    assert 0 <= report["label_error"] <= 1 and report["label_error_se"] > 0
    assert report["nll"] < report["neg_elbo"] + 3 * report["neg_elbo_se"]
    assert report["neg_elbo"] == report["recon"] + report["kl"]
    assert len(report["conditional_accuracy_per_class"]) == 10
    # the label error is of q(y|x) averaged over 20 binarizations of each grey-level test image, as predict's
    from vaekit.latent_classifier import class_probabilities
    from vaekit.runs import evaluation_data

    split, _, mode = evaluation_data(m2_run)
    probs = class_probabilities(vaekit.load(m2_run), split, mode)  # (N, 10)
    assert mode == "dynamic" and report["label_error_binarizations"] == 20
    assert report["label_error"] == pytest.approx(float((probs.argmax(-1) != split.y).double().mean()))
    one_draw = vaekit.load(m2_run).predict_proba(torch.bernoulli(split.to_float(), generator=torch.Generator().manual_seed(0)))
    assert not torch.allclose(probs, one_draw.double(), atol=1e-3)  # an average, not one draw
    code = main(["predict", str(m2_run), "--out", str(tmp_path / "p.csv")])
    assert code == 0
    rows = list(csv.reader(io.StringIO((tmp_path / "p.csv").read_text())))
    capsys.readouterr()
    assert rows[0] == ["index", "label"] + [f"p{c}" for c in range(10)] and len(rows) == 1 + report["n_images"]
    for row in rows[1:]:
        probs = [float(v) for v in row[2:]]
        assert abs(sum(probs) - 1) < 1e-4 and int(row[1]) == int(np.argmax(probs))
    # predict reports the same averaged q(y|x) (to the CSV's six decimals)
    written = torch.tensor([[float(v) for v in row[2:]] for row in rows[1:]], dtype=torch.float64)
    assert torch.allclose(written, class_probabilities(vaekit.load(m2_run), split, mode), atol=2e-6)
    npz = tmp_path / "some.npz"
    np.savez(npz, x=np.random.default_rng(0).integers(0, 2, (30, 8, 8)).astype(np.uint8) * 255,
             y=np.arange(30) % 10)
    code = main(["evaluate", str(m2_run), "--data", str(npz), "--iw-samples", "3", "--json", "--samples-per-class", "5"])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)["n_images"] == 30 and "label_error" in json.loads(out)


def test_m2_resumes_bit_exactly(tmp_path):
    options = dict(model="m2", labels_per_class=5, lr_schedule="constant", **TINY)
    straight = vaekit.train(tmp_path / "a", epochs=2, **options)
    first = vaekit.train(tmp_path / "b", epochs=1, **options)
    vaekit.train(first, resume=True, epochs=2, progress=False)
    from safetensors.torch import load_file

    a, b = load_file(straight / "last.safetensors"), load_file(first / "last.safetensors")
    keys = [k for k in a if k.startswith(("model.", "optim."))]
    assert keys and all(torch.equal(a[k], b[k]) for k in keys)


def test_m1_on_a_vae_run(digits_run, tmp_path, capsys):
    import shutil

    run = Path(shutil.copytree(digits_run, tmp_path / "vae"))
    code = main(["m1", str(run), "--labels-per-class", "10"])
    assert code == 0 and "validation error" in capsys.readouterr().out
    recipe = json.loads((run / "m1.json").read_text())
    assert recipe["labelled"] == 100 and len(recipe["labelled_source_index"]) == 100
    report = vaekit.evaluate(run, iw_samples=2, device="cpu")
    assert 0 <= report["label_error"] < 0.9  # better than chance on 10 classes, after 3 epochs
    code = main(["predict", str(run)])
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert code == 0 and len(rows) == 1 + report["n_images"] and len(rows[0]) == 12


def test_m1_label_spreading_is_the_default_and_predicts_new_images(digits_run, tmp_path, capsys):
    import shutil

    from vaekit.latent_classifier import fit_m1, load_m1

    run = Path(shutil.copytree(digits_run, tmp_path / "vae"))
    record = fit_m1(run, labels_per_class=5)
    assert record["classifier"] == "spreading" and record["recipe"].startswith("label-spreading-knn10-alpha0.2-")
    from vaekit import checkpoint

    stored, _ = checkpoint.load_tensors(run / "m1.safetensors")
    labels = stored["labels"]  # every training image's code is kept, -1 where its label is unknown
    assert len(labels) == len(stored["features"]) > 1000 and int((labels >= 0).sum()) == 50
    assert int((labels == -1).sum()) == len(labels) - 50
    assert type(load_m1(run)).__name__ == "LabelSpreading"
    data = _npz(tmp_path / "new.npz", np.arange(30) % 10)  # images the VAE never saw
    assert main(["predict", str(run), "--data", str(data)]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 31 and rows[0][:3] == ["index", "label", "p0"]
    probs = np.array([[float(v) for v in r[2:]] for r in rows[1:]])
    assert np.allclose(probs.sum(1), 1, atol=1e-4) and all(int(r[1]) == int(np.argmax(p)) for r, p in zip(rows[1:], probs))

    assert main(["m1", str(run), "--labels-per-class", "5", "--classifier", "logistic"]) == 0
    logistic = json.loads((run / "m1.json").read_text())
    assert logistic["classifier"] == "logistic" and logistic["recipe"].startswith("logistic-regression-")
    assert len(checkpoint.load_tensors(run / "m1.safetensors")[0]["labels"]) == 50
    assert type(load_m1(run)).__name__ == "LogisticRegression"


def test_m1_bad_classifier_is_one_line(digits_run, tmp_path, capsys):
    from vaekit.latent_classifier import fit_m1

    with pytest.raises(SystemExit) as exit_info:
        main(["m1", str(digits_run), "--classifier", "svm"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "invalid choice" in err, err
    with pytest.raises(VaekitError, match="--classifier must be one of spreading, logistic, got 'svm'"):
        fit_m1(digits_run, classifier="svm")
    assert not (digits_run / "m1.json").exists()


# ---- bad input: one line, status 2, nothing lost

def _npz(path: Path, y) -> Path:
    y = np.asarray(y)
    x = np.random.default_rng(0).integers(0, 256, (len(y), 8, 8)).astype(np.uint8)
    np.savez(path, x=x, y=y)
    return path


@pytest.mark.parametrize("labels, options, message", [
    ([-1] * 60, ["--model", "m2"], "needs class labels"),
    (list(range(10)) * 6, ["--model", "m2"], "every training image of .* is labelled"),
    ([0, 1, 2, -1] * 15, ["--model", "cvae"], "needs every training image labelled"),
    ([0, 1, -3] * 20, ["--model", "m2"], r"-1 \(unknown\) or 0..K-1, found -3"),
    (["--short"], ["--model", "m2"], "labels"),
])
def test_m2_bad_labels_are_one_line(labels, options, message, tmp_path, capsys):
    if labels == ["--short"]:
        x = np.zeros((20, 8, 8), np.uint8)
        np.savez(tmp_path / "d.npz", x=x, y=np.zeros(19, np.int64))
        data = tmp_path / "d.npz"
    else:
        data = _npz(tmp_path / "d.npz", labels)
    code = main(["train", "--dataset", str(data), "--out", str(tmp_path / "r"), "--epochs", "1", *options])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "r").exists()


def test_a_class_without_a_labelled_training_image_is_refused():
    import sys

    from vaekit.data import ImageDataset, Split

    prepare = sys.modules["vaekit.prepare"]
    x = torch.zeros(6, 1, 8, 8, dtype=torch.uint8)
    train = Split(x, torch.tensor([0, 1, -1, -1, 0, -1]), 255.0)
    other = Split(x[:2], torch.tensor([2, 2]), 255.0)
    data = ImageDataset("d", train, other, other, 3, (1, 8, 8))
    with pytest.raises(VaekitError, match="needs a labelled training image of every class; classes 2 have none"):
        prepare.check_labels(M2, "m2", data)
    assert prepare.check_labels(M2, "m2", ImageDataset("d", Split(x, torch.tensor([0, 1, 2, -1, 0, -1]), 255.0),
                                                    other, other, 3, (1, 8, 8))).tolist() == [0, 1, 2, 4]


def test_evaluating_on_labels_the_model_lacks_is_one_line(m2_run, tmp_path, capsys):
    data = _npz(tmp_path / "d.npz", np.arange(30) % 12)  # classes 10 and 11 are new to the model
    code = main(["evaluate", str(m2_run), "--data", str(data), "--iw-samples", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "knows 10 classes" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_m2_trains_under_torchrun(tmp_path):
    import os
    import sys

    script = tmp_path / "job.py"
    script.write_text(f"import vaekit\nvaekit.train({str(tmp_path / 'run')!r}, model='m2', labels_per_class=5, epochs=1, "
                      "dataset='digits', width=8, hidden=32, latent_dim=4, progress=False)\n")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)],
                          cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(metrics["train_classifier_nll"]) and math.isfinite(metrics["val_label_error"])


@pytest.mark.slow
def test_m2_stopped_mid_epoch_resumes_bit_exactly(tmp_path):
    """SIGTERM in the middle of an epoch: the resumed run equals the uninterrupted one bit for bit,
    the labelled/unlabelled mix of the remaining batches included."""
    import os
    import signal
    import sys
    import time

    from safetensors.torch import load_file

    train = [sys.executable, "-m", "vaekit", "train", "--model", "m2", "--dataset", "digits", "--labels-per-class", "5",
             "--epochs", "6", "--batch-size", "8", "--width", "4", "--hidden", "16", "--latent-dim", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([*train, "--out", str(tmp_path / "straight")], check=True, env=env, capture_output=True)
    out = tmp_path / "stopped"
    proc = subprocess.Popen([*train, "--out", str(out), "--checkpoint-every", "0.002"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").is_file():  # the first epoch is done; stop within the second
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    state = json.loads(__import__("safetensors").safe_open(str(out / "last.safetensors"), "pt").metadata()["train_state"])
    assert state["batch"] > 0  # stopped inside an epoch
    done = subprocess.run([sys.executable, "-m", "vaekit", "train", "--resume", str(out)], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    a, b = load_file(tmp_path / "straight" / "last.safetensors"), load_file(out / "last.safetensors")
    keys = [k for k in a if k.startswith(("model.", "best.", "optim."))]
    assert keys and all(torch.equal(a[k], b[k]) for k in keys)


# ---- which labels, how many per batch

def test_label_seed_draws_other_labelled_images_on_the_same_split():
    default = load_dataset(DataConfig(dataset="digits", labels_per_class=10))
    same = load_dataset(DataConfig(dataset="digits", labels_per_class=10, label_seed=0))
    other = load_dataset(DataConfig(dataset="digits", labels_per_class=10, label_seed=3))
    assert torch.equal(default.train.y, same.train.y)  # unset: the split's seed, as before --label-seed
    assert torch.equal(default.train.index, other.train.index) and torch.equal(default.test.y, other.test.y)
    y = other.train.y
    assert (torch.bincount(y[y >= 0], minlength=10) == 10).all()
    assert not torch.equal(default.train.y >= 0, y >= 0)
    draws = {tuple((load_dataset(DataConfig(dataset="digits", labels_per_class=10, label_seed=s)).train.y >= 0)
                   .nonzero()[:, 0].tolist()) for s in range(5)}
    assert len(draws) == 5


def test_m1_takes_a_label_seed(digits_run):
    from vaekit.latent_classifier import fit_m1

    a = fit_m1(digits_run, labels_per_class=5, label_seed=1)
    b = fit_m1(digits_run, labels_per_class=5, label_seed=2)
    assert a["labelled"] == b["labelled"] == 50
    assert a["labelled_source_index"] != b["labelled_source_index"]


def test_labelled_share_follows_the_labelled_fraction(capsys):
    from vaekit.prepare import labelled_share

    few = torch.arange(100)
    assert labelled_share(DataConfig(), few, 57_000, say=True) == pytest.approx(10 * 100 / 57_000)
    assert "100 of 57000 training images are labelled" in capsys.readouterr().out
    assert labelled_share(DataConfig(), few, 1_300, say=False) == 0.5  # at most a half
    assert labelled_share(DataConfig(labelled_share=0.25), few, 57_000, say=False) == 0.25  # the flag wins
    assert labelled_share(DataConfig(), None, 57_000, say=False) == 0.0  # a model without labels


def test_the_encoder_body_runs_once_for_every_class():
    """q(z|x,y) from the body's features computed once equals the encoder run on each class's copy."""
    model = tiny_m2(k=3).eval()
    x = torch.rand(5, 1, 8, 8)
    xs, ys = model._every_class(x)
    once = model.posterior(xs, ys, model.encoder.body(x).repeat(3, 1))
    each = model.posterior(xs, ys)
    torch.testing.assert_close(once.mean, each.mean)
    torch.testing.assert_close(once.stddev, each.stddev)


# ---- M1+M2: M2 on a VAE's codes

@pytest.fixture(scope="module")
def stacked_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("m1m2")
    vae = vaekit.train(folder / "vae", epochs=2, **TINY)
    return vae, vaekit.train(folder / "m1m2", model="m2", init_latents=str(vae), labels_per_class=5, epochs=2,
                             **TINY)


def test_m1_plus_m2_keeps_the_vae_frozen_inside(stacked_run):
    from safetensors.torch import load_file

    vae, run = stacked_run
    theirs, mine = load_file(vae / "model.safetensors"), load_file(run / "model.safetensors")
    assert theirs and all(torch.equal(mine[f"base.{k}"], v) for k, v in theirs.items())  # loaded, and not trained
    cfg = json.loads((run / "config.json").read_text())["model"]
    assert cfg["base"]["model"] == "vae" and cfg["base"]["latent_dim"] == 4 and cfg["init_latents"] == str(vae)
    model = vaekit.load(run)
    x = torch.bernoulli(torch.rand(6, 1, 8, 8))
    with torch.no_grad():
        proba = model.predict_proba(x)  # raw images in
        assert proba.shape == (6, 10) and torch.allclose(proba.sum(-1), torch.ones(6))
        assert model.encode(x).shape == (6, 4)
        images = model.sample(4, labels=3)
        assert images.shape == (4, 1, 8, 8) and 0 <= float(images.min()) and float(images.max()) <= 1
        assert model.reconstruct(x).shape == (6, 1, 8, 8)


def test_m1_plus_m2_evaluates_a_density_of_codes_on_raw_images(stacked_run):
    _, run = stacked_run
    report = vaekit.evaluate(run, iw_samples=3, device="cpu", samples_per_class=5)
    assert 0 <= report["label_error"] <= 1
    assert "nll_bits_per_dim" not in report and "codes" in report["density"]
    assert report["names"]["nll"] == "-log p(z1)"
    assert math.isfinite(report["nll"]) and report["neg_elbo"] == report["recon"] + report["kl"]


def test_m1_plus_m2_resumes_without_reading_the_vae_again(stacked_run, tmp_path):
    import shutil

    vae, _ = stacked_run
    copy = tmp_path / "vae"
    shutil.copytree(vae, copy)
    first = vaekit.train(tmp_path / "m", model="m2", init_latents=str(copy), labels_per_class=5, epochs=1, **TINY)
    shutil.rmtree(copy)  # the VAE's weights and config live in the M1+M2 run
    vaekit.train(first, resume=True, epochs=2, progress=False)
    assert vaekit.evaluate(first, iw_samples=2, device="cpu", samples_per_class=5)["n_images"] > 0


@pytest.mark.parametrize("case", ["not a vae", "other split", "missing", "vamp"])
def test_m1_plus_m2_refuses_a_base_it_cannot_use(case, stacked_run, tmp_path, capsys):
    vae, run = stacked_run
    base = {"not a vae": run, "other split": vae, "missing": tmp_path / "nowhere", "vamp": vae}[case]
    extra = {"other split": ["--split-seed", "3"], "vamp": ["--prior", "vamp"]}.get(case, [])
    code = main(["train", "--model", "m2", "--init-latents", str(base), "--labels-per-class", "5", "--epochs", "1",
                 "--width", "8", "--hidden", "32", "--latent-dim", "4", "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0]
    assert {"not a vae": "needs a run of --model vae", "other split": str(vae),
            "missing": "nowhere", "vamp": "not vamp"}[case] in err[0]


def test_classifier_shift_moves_the_labelled_images_in_the_classifier_term_only():
    from vaekit.augment import random_shift

    assert M2Config().classifier_shift == 0  # the default: off
    model = tiny_m2(classifier_shift=1).train()
    x = torch.rand(6, 1, 8, 8).bernoulli()
    y = torch.tensor([0, 1, -1, 2, -1, -1])
    known = y >= 0
    torch.manual_seed(3)
    terms = model(x, y)
    torch.manual_seed(3)  # the same first draw: the offsets of the labelled images
    moved = random_shift(x[known], 1)
    expected = -model.label_posterior(moved).gather(1, y[known][:, None])[:, 0]
    torch.testing.assert_close(terms["classifier_nll"], expected)
    assert not torch.allclose(expected, -model.label_posterior(x[known]).gather(1, y[known][:, None])[:, 0])
    model.eval()  # validation scores q(y|x) on the images as they are
    plain = tiny_m2().eval()
    torch.testing.assert_close(model(x, y)["classifier_nll"], plain(x, y)["classifier_nll"])


def test_the_masked_step_timed_by_the_speed_benchmark_is_m2s_objective(monkeypatch):
    """benchmarks/m2_speed.py --masked times a design alternative; it must compute the same loss."""
    import importlib.util

    from torch.distributions import Independent

    spec = importlib.util.spec_from_file_location("m2_speed", SRC.parents[1] / "benchmarks" / "m2_speed.py")
    m2_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m2_speed)
    monkeypatch.setattr(Independent, "rsample", lambda self, shape=torch.Size(): self.mean)  # z = E[z]: no noise
    model = tiny_m2().train()
    x = torch.rand(7, 1, 8, 8).bernoulli()
    y = torch.tensor([0, -1, 2, -1, -1, 1, -1])
    split, masked = model(x, y), m2_speed.masked_forward(model, x, y)
    torch.testing.assert_close(masked["loss"], split["loss"])
    torch.testing.assert_close(masked["neg_elbo"][y < 0], split["neg_elbo"])
    torch.testing.assert_close(masked["neg_elbo"][y >= 0], split["labelled_neg_elbo"])
