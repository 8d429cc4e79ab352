"""The `vaekit` command end to end on the built-in digits, and its one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vaekit.cli
from vaekit.cli import main


def png_size(path):
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        return picture.size


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_evaluate_sample_reconstruct(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, _ = run_cli(capsys, "train", "--dataset", "digits", "--out", run, "--epochs", "2", "--latent-dim", "4")
    assert code == 0 and "vaekit evaluate" in out
    assert json.loads((run / "config.json").read_text())["model"]["latent_dim"] == 4
    code, out, _ = run_cli(capsys, "evaluate", run, "--iw-samples", "20", "--json")
    assert code == 0
    report = json.loads(out)
    for key in ("neg_elbo", "nll", "iw_samples", "n_images", "active_units", "recon", "kl", "nll_se", "kl_per_dim"):
        assert key in report
    assert report["iw_samples"] == 20 and report["n_images"] == 359 and len(report["kl_per_dim"]) == 4
    assert report["nll"] <= report["neg_elbo"]
    code, out, _ = run_cli(capsys, "evaluate", run, "--iw-samples", "5")
    assert code == 0 and "-log p(x) IWAE" in out and "active units" in out
    code, _, _ = run_cli(capsys, "sample", run, "--n", "12", "--out", tmp_path / "s.png")
    assert code == 0 and png_size(tmp_path / "s.png")[0] > 8 * 8
    code, _, _ = run_cli(capsys, "reconstruct", run, "--out", tmp_path / "r.png")
    assert code == 0 and png_size(tmp_path / "r.png")


def test_evaluate_on_an_npz_file(digits_run, tmp_path, capsys):
    x = (np.random.default_rng(0).random((30, 8, 8)) > 0.5).astype(np.uint8) * 255
    np.savez(tmp_path / "d.npz", x=x)
    code, out, _ = run_cli(capsys, "evaluate", digits_run, "--data", tmp_path / "d.npz", "--iw-samples", "3", "--json")
    assert code == 0 and json.loads(out)["n_images"] == 30


def test_conditional_run(cvae_run, tmp_path, capsys):
    code, _, _ = run_cli(capsys, "sample", cvae_run, "--label", "7", "--n", "16", "--out", tmp_path / "seven.png")
    assert code == 0
    code, _, _ = run_cli(capsys, "analogy", cvae_run, "--n", "3", "--out", tmp_path / "a.png")
    width, height = png_size(tmp_path / "a.png")
    assert code == 0 and width > 3 * height  # 3 rows, 1 + 10 columns
    assert (Path(cvae_run) / "analogy.png").is_file()
    code, out, err = run_cli(capsys, "evaluate", cvae_run, "--iw-samples", "5", "--samples-per-class", "20", "--json")
    assert err.splitlines()[0] == f"vaekit: training the judge of conditional samples (once; cached in {cvae_run}/classifier.safetensors)"
    assert all(line.startswith("vaekit: warning: ") for line in err.splitlines()[1:])  # a 3-epoch run may be flagged
    report = json.loads(out)
    assert code == 0 and 0 <= report["conditional_accuracy"] <= 1 and report["classifier_accuracy"] > 0.8
    per_class = report["conditional_accuracy_per_class"]
    assert len(per_class) == 10 and sum(per_class) / 10 == pytest.approx(report["conditional_accuracy"])
    assert (Path(cvae_run) / "classifier.safetensors").is_file()
    code, out, err = run_cli(capsys, "evaluate", cvae_run, "--iw-samples", "5", "--samples-per-class", "20", "--json")
    assert code == 0 and "judge" not in err and json.loads(out)["classifier_accuracy"] == report["classifier_accuracy"]  # cached


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--dataset", "nosuchset", "--out", "{tmp}/r"], "unknown dataset"),
        (["train", "--dataset", "{tmp}/missing.npz", "--out", "{tmp}/r"], "missing.npz"),
        (["train", "--likelihood", "poisson", "--out", "{tmp}/r"], "invalid choice"),
        (["train", "--epochs", "many", "--out", "{tmp}/r"], "expected a whole number"),
        (["train", "--model", "cvae", "--dataset", "{tmp}/unlabelled.npz", "--out", "{tmp}/r"], "labels"),
        (["evaluate", "{tmp}"], "not a vaekit run folder"),
        (["evaluate", "{tmp}/nowhere"], "does not exist"),
        (["sample", "{run}", "--label", "3", "--out", "{tmp}/x.png"], "draws classes"),
        (["analogy", "{run}", "--out", "{tmp}/x.png"], "draws classes"),
        (["train", "--dataset", "digits", "--out", "{run}"], "--overwrite"),
        (["train"], "--out RUN is required"),
        (["evaluate", "{run}", "--iw-samples", "0"], "at least 1"),
    ],
)
def test_user_errors_are_one_line_with_status_2(argv, message, digits_run, tmp_path, capsys):
    np.savez(tmp_path / "unlabelled.npz", x=np.zeros((40, 8, 8), np.uint8))
    argv = [a.format(tmp=tmp_path, run=digits_run) for a in argv]
    with pytest.raises(SystemExit) if argv[1:2] == ["--likelihood"] or "many" in argv else _nothing() as exit_info:
        code = main(argv)
    code = exit_info.value.code if exit_info is not None else code
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing half-written


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_python_dash_m_and_console_script(tmp_path):
    done = subprocess.run([sys.executable, "-m", "vaekit", "evaluate", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("vaekit: error:") and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "vaekit", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "train" in done.stdout


def test_fashion_mnist_defaults_to_the_measured_mlp_set_up(monkeypatch, tmp_path, capsys):
    """On Fashion-MNIST the VAE's defaults are the gated MLP of BENCHMARKS.md (the best there for about
    15 minutes); any flag overrides one of them, --arch conv (or another model, or dataset) keeps the
    built-in ones, and the command says which it took."""
    import vaekit.api as api

    model, train = api.make_configs(dataset="fashion-mnist")[1:]
    assert (model.arch, model.hidden, model.hidden_layers, model.gated, model.latent_dim) == ("mlp", 300, 2, True, 40)
    assert (train.batch_size, train.lr, train.kl_warmup, train.epochs) == (100, 1e-3, 10.0, 150)
    assert api.make_configs(dataset="fashion-mnist", latent_dim=8)[1].latent_dim == 8
    classic = api.make_configs(dataset="fashion-mnist", arch="mlp", hidden=400, latent_dim=20)[1]
    assert (classic.hidden_layers, classic.gated) == (1, False)  # a named body: its built-in defaults
    builtin = api.make_configs()
    for options in (dict(arch="conv"), dict(model="cvae"), dict(dataset="kmnist")):
        model, train = api.make_configs(**{"dataset": "fashion-mnist", **options})[1:]
        assert (model.arch, model.latent_dim, train.epochs, train.lr) == ("conv", 16, 0, builtin[2].lr), options

    seen = {}
    monkeypatch.setattr(vaekit.cli, "train", lambda out, **kwargs: seen.update(kwargs))  # the name cli calls
    code, out, _ = run_cli(capsys, "train", "--dataset", "fashion-mnist", "--hidden", "64", "--out", tmp_path / "f")
    assert code == 0 and seen["hidden"] == 64 and "arch" not in seen  # the API applies the defaults itself
    assert ("vaekit: the defaults on fashion-mnist: --arch mlp --hidden-layers 2 --gated --latent-dim 40 "
            "--batch-size 100 --lr 0.001 --kl-warmup 10 --epochs 150 (a flag overrides each") in out
    code, out, _ = run_cli(capsys, "train", "--dataset", "fashion-mnist", "--arch", "conv", "--out", tmp_path / "c")
    assert code == 0 and "defaults on" not in out


@pytest.mark.parametrize("n", [1, 3])
def test_evaluate_on_a_file_of_a_few_images_uses_them_all(digits_run, tmp_path, capsys, n):
    """A --data file is evaluated whole: too few images to hold out a test split is no reason to refuse it."""
    x = (np.random.default_rng(0).random((n, 8, 8)) > 0.5).astype(np.uint8) * 255
    np.savez(tmp_path / "few.npz", x=x)
    code, out, err = run_cli(capsys, "evaluate", digits_run, "--data", tmp_path / "few.npz", "--iw-samples", "3", "--json")
    assert code == 0, err
    assert json.loads(out)["n_images"] == n
