"""The training loop and the run folder: learning, files, refusals, interruption and exact resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit import VaekitError


def test_training_lowers_validation_loss_and_writes_the_run_folder(digits_run):
    run = Path(digits_run)
    for name in ("config.json", "model.safetensors", "last.safetensors", "metrics.jsonl",
                 "samples.png", "reconstructions.png", "latent.png", "curves.png"):
        assert (run / name).is_file(), name
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["val_neg_elbo"] < metrics[0]["val_neg_elbo"]
    for m in metrics:
        assert m["train_neg_elbo"] == pytest.approx(m["train_recon"] + m["train_kl"], rel=1e-5)  # float32 sums
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["image_shape"] == [1, 8, 8] and config["data"]["dataset"] == "digits"
    assert not list(run.glob("*.tmp"))  # atomic writes leave no temporaries


def test_best_weights_are_the_best_validation_epoch(tmp_path, monkeypatch):
    """model.safetensors holds the weights of the epoch with the lowest validation -ELBO, not the last ones."""
    options = dict(dataset="digits", width=8, hidden=32, latent_dim=4, lr_schedule="constant", progress=False)
    two = vaekit.train(tmp_path / "two", epochs=2, **options)  # the weights after epoch 2
    loop = sys.modules["vaekit.train"]
    real, scripted = loop.validate, iter([30.0, 20.0, 25.0])  # epoch 2 is the best of three

    def validate(*args, **kwargs):
        return {**real(*args, **kwargs), "neg_elbo": next(scripted)}

    monkeypatch.setattr(loop, "validate", validate)
    three = vaekit.train(tmp_path / "three", epochs=3, **options)
    best = load_file(three / "model.safetensors")
    after_two = {k[6:]: v for k, v in load_file(two / "last.safetensors").items() if k.startswith("model.")}
    after_three = {k[6:]: v for k, v in load_file(three / "last.safetensors").items() if k.startswith("model.")}
    assert set(best) == set(after_two) and all(torch.equal(best[k], after_two[k]) for k in best)
    assert not all(torch.equal(best[k], after_three[k]) for k in best)  # the last epoch's weights are not kept
    model = vaekit.load(three)
    assert not model.training and all(torch.equal(model.state_dict()[k], best[k]) for k in best)


def test_init_from_starts_from_another_runs_best_weights(tmp_path, capsys):
    """--init-from: a fine-tuning run starts at the source's best weights (at lr 1e-12 it stays there), may
    change the objective (--train-samples), resumes without the source, and refuses weights that do not fit."""
    from vaekit.cli import main

    options = dict(dataset="digits", width=8, hidden=32, latent_dim=4, progress=False)
    source = vaekit.train(tmp_path / "source", epochs=2, **options)
    tuned = vaekit.train(tmp_path / "tuned", epochs=1, lr=1e-12, train_samples=4, init_from=str(source), **options)
    before, after = load_file(source / "model.safetensors"), load_file(tuned / "model.safetensors")
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    fresh = load_file(vaekit.train(tmp_path / "fresh", epochs=1, lr=1e-12, **options) / "model.safetensors")
    assert not all(torch.allclose(before[k], fresh[k], atol=1e-6) for k in before)

    (source / "model.safetensors").rename(tmp_path / "moved")  # a resumed run has its own weights
    assert main(["train", "--resume", str(tuned), "--epochs", "2"]) == 0
    assert len((tuned / "metrics.jsonl").read_text().splitlines()) == 2

    (tmp_path / "moved").rename(source / "model.safetensors")
    capsys.readouterr()
    code = main(["train", "--init-from", str(source), "--latent-dim", "6", "--width", "8", "--hidden", "32",
                 "--out", str(tmp_path / "misfit")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--init-from {source}: its weights do not fit this model (the model settings that differ: latent_dim)" in err
    assert not (tmp_path / "misfit").exists()  # refused before anything was written
    assert main(["train", "--init-from", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert f"--init-from {tmp_path / 'nowhere'}: run folder" in capsys.readouterr().err


def test_weight_decay_is_decoupled(tmp_path):
    """--weight-decay is AdamW's: each step shrinks every weight by the factor 1 - lr * wd, whatever its
    gradient. (Adam's L2 penalty would go through the normalised step and move nothing at lr 1e-12.)"""
    options = dict(dataset="digits", width=8, hidden=32, latent_dim=4, progress=False)
    source = vaekit.train(tmp_path / "source", epochs=1, **options)
    decayed = vaekit.train(tmp_path / "decayed", epochs=1, lr=1e-12, lr_schedule="constant", weight_decay=1e9,
                           init_from=str(source), **options)
    steps = json.loads((decayed / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    before, after = load_file(source / "model.safetensors"), load_file(decayed / "model.safetensors")
    factor = (1 - 1e-12 * 1e9) ** steps
    assert steps > 10 and factor < 0.99
    for k in before:
        torch.testing.assert_close(after[k], before[k] * factor, rtol=1e-5, atol=1e-9, msg=k)


def test_existing_run_is_refused_without_overwrite(digits_run, tmp_path):
    with pytest.raises(VaekitError, match="--overwrite"):
        vaekit.train(digits_run, dataset="digits", epochs=1, progress=False)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(VaekitError, match="not a vaekit run"):
        vaekit.train(other, dataset="digits", epochs=1, progress=False, overwrite=True)
    assert (other / "thesis.tex").read_text() == "precious"


def test_bernoulli_on_grey_levels_needs_binarization(tmp_path):
    with pytest.raises(VaekitError, match="binarize"):
        vaekit.train(tmp_path / "r", dataset="digits", binarize="none", epochs=1, progress=False)
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_gaussian_on_binary_pixels_warns(tmp_path):
    with pytest.warns(UserWarning, match="Gaussian likelihood on binary"):
        vaekit.train(tmp_path / "r", dataset="digits", likelihood="gaussian", binarize="static", epochs=1,
                     progress=False)


def test_gaussian_likelihood_trains_on_grey_levels(tmp_path):
    run = vaekit.train(tmp_path / "r", dataset="digits", likelihood="gaussian", sigma=0.2, epochs=2, progress=False)
    r = vaekit.evaluate(run, iw_samples=10, device="cpu")
    assert r["nll"] <= r["neg_elbo"] + 3 * r["neg_elbo_se"]


def test_unknown_option_is_refused(tmp_path):
    with pytest.raises(VaekitError, match="unknown option"):
        vaekit.train(tmp_path / "r", dataset="digits", latent_dims=3)


# ---- interruption and exact resume (real subprocesses)

EPOCHS = 8  # long enough (a few seconds) that every kill below lands while training
TRAIN = [sys.executable, "-m", "vaekit", "train", "--dataset", "digits", "--epochs", str(EPOCHS), "--batch-size", "8",
         "--width", "8", "--hidden", "32", "--latent-dim", "4", "--ema", "0.99"]  # EMA state must resume too
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def load_file_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "last.safetensors")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run([*TRAIN, "--out", str(out)], check=True, env=ENV, capture_output=True)
    return out


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    model_keys = [k for k in wa if k.startswith(("model.", "best.", "optim."))]
    assert model_keys and all(torch.equal(wa[k], wb[k]) for k in model_keys)
    ma = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in mb] == list(range(1, EPOCHS + 1))  # each epoch once, none missing or repeated
    timing = {"seconds", "train_seconds", "images_per_second"}
    strip = lambda ms: [{k: v for k, v in m.items() if k not in timing} for m in ms]  # noqa: E731
    assert strip(ma) == strip(mb)


def _start_and_wait(out: Path, min_steps: int) -> subprocess.Popen:
    proc = subprocess.Popen([*TRAIN, "--out", str(out), "--checkpoint-every", "0.002"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "last.safetensors").is_file() and (out / "metrics.jsonl").is_file():
            break
        time.sleep(0.02)
    time.sleep(min_steps * 0.01)
    return proc


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_is_bit_identical(reference_run, tmp_path):
    out = tmp_path / "run"
    proc = _start_and_wait(out, min_steps=5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "resume with `vaekit train --resume" in err and "Traceback" not in err
    done = subprocess.run([sys.executable, "-m", "vaekit", "train", "--resume", str(out)], env=ENV,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _assert_same_run(reference_run, out)
    again = subprocess.run([sys.executable, "-m", "vaekit", "train", "--resume", str(out)], env=ENV,
                           capture_output=True, text=True)
    assert again.returncode == 0 and "finished" in again.stdout


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.3, 1.1])
def test_kill_9_anywhere_resumes_to_the_same_run(reference_run, tmp_path, delay):
    out = tmp_path / "run"
    proc = _start_and_wait(out, min_steps=0)
    time.sleep(delay)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished before the kill
    state = json.loads(load_file_metadata(out / "last.safetensors")["train_state"])
    assert state["epoch"] < EPOCHS  # the resume below has real work left
    done = subprocess.run([sys.executable, "-m", "vaekit", "train", "--resume", str(out)], env=ENV,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _assert_same_run(reference_run, out)


def test_resume_can_train_longer(tmp_path):
    run = vaekit.train(tmp_path / "r", dataset="digits", epochs=1, width=8, hidden=32, progress=False)
    vaekit.train(run, resume=True, epochs=2, progress=False)
    lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    assert json.loads((Path(run) / "config.json").read_text())["train"]["epochs"] == 2



def test_automatic_epochs_follow_the_dataset_size():
    from vaekit.config import auto_epochs

    assert auto_epochs(1366, 64) == 600  # digits: many passes over little data
    assert auto_epochs(57000, 64) == 15  # Fashion-MNIST: about the same number of steps
    assert auto_epochs(10**7, 64) == 10 and auto_epochs(10, 64) == 600  # clamped

