"""What a user sees (issue 31): runs that fail quietly are flagged, output names what it measures, the
Python API serves research code. The browser checks of the report and the explorer are in test_browser.py."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vaekit
from vaekit import api, cli, health
from vaekit.checkpoint import LOCK, RunLock
from vaekit.cli import main
from vaekit.evaluate import evaluate as evaluate_model
from vaekit.evaluate import format_report
from vaekit.models import CVAE, CategoricalVAE

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dataset="digits", width=4, hidden=16, latent_dim=2, progress=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return vaekit.train(tmp_path_factory.mktemp("runs") / "tiny", epochs=2, **TINY)


@pytest.fixture
def run(tiny_run, tmp_path):
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


# ---- runs that fail quietly


def test_health_checks_name_each_failure():
    healthy = {"kl": 5.2, "active_units": 10, "latent_axes": 16, "label_error": 0.1}
    assert health.check(healthy, num_classes=10) == []
    collapsed = health.check({"kl": 0.010, "active_units": 0, "latent_axes": 16})
    assert [f.kind for f in collapsed] == ["collapse"]
    assert "0 of 16 active units" in collapsed[0].line() and "--kl-warmup" in collapsed[0].line()
    assert [f.kind for f in health.check({"kl": 3.0, "active_units": 0})] == ["collapse"]
    dead = health.check({"label_error": 0.89}, num_classes=10)
    assert [f.kind for f in dead] == ["dead-classifier"] and "chance is 0.900" in dead[0].line()
    flat = [{"epoch": e, "val_neg_elbo": 30.0} for e in (1, 2, 3)]
    assert [f.kind for f in health.check({}, flat)] == ["flat-loss"]
    falling = [{"epoch": e, "val_neg_elbo": 30.0 - e} for e in (1, 2, 3)]
    assert health.check({}, falling) == []


def test_a_collapsed_run_is_flagged_after_training_in_evaluate_and_in_the_report(tmp_path, capsys):
    out = tmp_path / "collapsed"  # a KL weight of 50 pushes every q(z|x) onto the prior
    assert main(["train", "--dataset", "digits", "--out", str(out), "--epochs", "2", "--width", "4", "--hidden", "16",
                 "--latent-dim", "2", "--beta", "50"]) == 0
    err = capsys.readouterr().err
    assert err.count("vaekit: warning: posterior collapse") == 1, err
    text = (out / "report.html").read_text()
    assert 'id="warnings"' in text and "posterior collapse" in text
    assert text.index('id="warnings"') < text.index("<h2>Config</h2>")  # a banner at the top
    assert main(["evaluate", str(out), "--iw-samples", "2"]) == 0
    out_text, err = capsys.readouterr()
    assert err.count("vaekit: warning: posterior collapse") == 1
    assert json.loads((out / "evaluation.json").read_text())["digits"]["warnings"]
    assert 'id="warnings"' in (out / "report.html").read_text()


def test_defaults_avoid_the_collapse_where_a_model_needs_them():
    def warmup(**options):
        return api.make_configs(**options)[2].kl_warmup

    assert warmup() == 0.0  # the plain VAE keeps its defaults
    assert warmup(prior="vamp") == 100.0
    assert warmup(prior="vamp", kl_warmup=0.0) == 0.0  # a flag overrides it
    assert warmup(prior="vamp", train_samples=10) == 0.0  # the IWAE bound has no KL weight
    assert warmup(prior="mixture") == 0.0
    assert warmup(model="categorical") == 100.0
    assert warmup(model="categorical", estimator="reinforce", groups=30, categories=4) == 100.0
    assert warmup(model="cvae") == 0.0


def test_the_cli_says_which_defaults_it_added(tmp_path, capsys, monkeypatch):
    seen = {}
    monkeypatch.setattr(api, "fit", lambda d, m, t, out, **kw: seen.setdefault("train", t) and Path(out))
    monkeypatch.setattr(cli, "diagnose", lambda run: [])
    main(["train", "--prior", "vamp", "--dataset", "digits", "--out", str(tmp_path / "v")])
    assert "against posterior collapse this model trains with --kl-warmup 100" in capsys.readouterr().out
    assert seen["train"].kl_warmup == 100.0


# ---- output that names what it measures


def test_a_conditional_model_names_its_conditional_terms():
    model = CVAE(CVAE.Config(image_shape=(1, 8, 8), latent_dim=3, width=4, hidden=16, num_classes=3)).eval()
    x = torch.rand(6, 1, 8, 8).bernoulli()
    result = evaluate_model(model, x, torch.tensor([0, 1, 2, 0, 1, 2]), iw_samples=2)
    text = format_report(result)
    assert "-log p(x|c) IWAE" in text and "KL(q(z|x,c) || p(z|c))" in text
    assert "-log p(x) IWAE" not in text and "KL(q(z|x) || p(z))" not in text
    assert result["names"]["nll"] == "-log p(x|c)"
    html = vaekit.report.evaluation_table("digits", result)
    assert "−log p(x|c)" in html and "−log p(x), IWAE" not in html


def test_active_units_count_what_the_model_has_and_say_what_they_are():
    model = CategoricalVAE(CategoricalVAE.Config(image_shape=(1, 8, 8), width=4, hidden=16, groups=5,
                                                 categories=4)).eval()
    result = evaluate_model(model, torch.rand(8, 1, 8, 8).bernoulli(), iw_samples=2)
    assert result["latent_axes"] == 5 and result["latent_dim"] == 20
    assert len(result["posterior_mean_variance"]) == 5 and len(result["kl_per_dim"]) == 5
    text = format_report(result)
    assert f"{result['active_units']} of 5 variables" in text and "a variable is active when" in text
    assert "KL per variable" in text


def test_an_evaluation_with_another_k_keeps_the_earlier_one(run, capsys):
    assert main(["evaluate", str(run), "--iw-samples", "3"]) == 0
    first = json.loads((run / "evaluation.json").read_text())["digits"]
    capsys.readouterr()
    assert main(["evaluate", str(run), "--iw-samples", "2"]) == 0
    err = capsys.readouterr().err
    assert "the K = 3 numbers stay in" in err
    assert json.loads((run / "evaluation.json").read_text())["digits"]["iw_samples"] == 2  # the latest
    assert json.loads((run / "evaluation-K3.json").read_text())["digits"] == first
    assert json.loads((run / "evaluation-K2.json").read_text())["digits"]["iw_samples"] == 2
    text = (run / "report.html").read_text()
    assert 'data-k="2"' in text and 'data-source="evaluation-K3:digits"' in text  # which K each number used


def test_an_evaluation_of_an_older_run_keeps_its_k_too(run, capsys):
    old = {"digits": {"dataset": "digits", "iw_samples": 1000, "n_images": 359, "neg_elbo": 26.0, "recon": 20.0, "kl": 6.0,
                      "nll": 25.0}}
    (run / "evaluation.json").write_text(json.dumps(old))  # vaekit <= 0.2 kept only evaluation.json
    assert main(["evaluate", str(run), "--iw-samples", "2", "--json"]) == 0
    assert json.loads((run / "evaluation-K1000.json").read_text()) == old


def test_off_a_terminal_training_prints_a_line_per_epoch_and_a_summary(tmp_path):
    out = tmp_path / "piped"
    done = subprocess.run([sys.executable, "-m", "vaekit", "train", "--dataset", "digits", "--out", str(out),
                           "--epochs", "2", "--width", "4", "--hidden", "16", "--latent-dim", "2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("vaekit: epoch 1/2, train -ELBO") for line in lines), lines
    assert any(line.startswith("vaekit: epoch 2/2") and "validation -ELBO" in line for line in lines), lines
    summary = next(line for line in lines if line.startswith("vaekit: trained 2 epochs in "))
    assert "best validation -ELBO" in summary and "at epoch" in summary
    assert not (out / LOCK).exists()  # a finished run leaves no lock behind


def test_a_lock_removed_by_its_holder_is_not_shared(tmp_path):
    out = tmp_path / "run"
    with RunLock(out):
        assert (out / LOCK).is_file()
    assert not (out / LOCK).exists()
    with RunLock(out), pytest.raises(vaekit.VaekitError, match="in use by another vaekit process"):
        with RunLock(out):
            pass


def test_one_version_in_one_place(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"vaekit {importlib.metadata.version('vaekit')}"
    assert vaekit.__version__ == importlib.metadata.version("vaekit")
    assert "version =" not in (ROOT / "pyproject.toml").read_text().split("[project]")[1].split("[")[0]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_demo_says_what_to_do_next():
    recipe = subprocess.run(["make", "-n", "demo"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "MAKEFLAGS": ""}).stdout
    assert "source .venv/bin/activate" in recipe
    assert "report.html" in recipe and "vaekit explore runs/digits" in recipe


# ---- the Python API for research code


def test_model_methods_follow_the_callers_grad_mode(tiny_run):
    model = vaekit.load(tiny_run)
    z = torch.zeros(3, 2, requires_grad=True)
    model.decode(z).sum().backward()  # latent optimisation: the gradient reaches z
    assert z.grad is not None and z.grad.abs().sum() > 0
    x = torch.rand(4, 1, 8, 8)
    model.zero_grad()
    model.encode(x).sum().backward()  # gradient probes of the weights
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    for images in (model.sample(2), model.reconstruct(x)):
        assert images.requires_grad
    with torch.no_grad():  # the caller's choice is kept
        assert not model.decode(z).requires_grad
    # the conveniences of the API never record a graph
    for images in (vaekit.sample(model, 2), vaekit.decode(model, z), vaekit.reconstruct(model, x), vaekit.encode(model, x)):
        assert not images.requires_grad


def test_decode_gives_the_mean_image_or_a_drawn_one(tiny_run):
    model = vaekit.load(tiny_run)
    z = torch.zeros(5, 2)
    mean = vaekit.decode(model, z)
    assert torch.equal(mean, vaekit.decode(model, z))  # the mean image is deterministic
    assert not set(mean.unique().tolist()) <= {0.0, 1.0}  # grey levels: probabilities
    torch.manual_seed(1)
    drawn = vaekit.decode(model, z, draw=True)
    assert drawn.shape == mean.shape and set(drawn.unique().tolist()) <= {0.0, 1.0}  # Bernoulli draws


def test_load_data_returns_the_runs_splits(tiny_run):
    data = vaekit.load_data(tiny_run)
    assert set(data) == {"train", "val", "test"}
    x, y = data["test"].tensors
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8) and 0 <= x.min() and x.max() <= 1
    assert len(x) == len(y) == 359
    assert sum(len(d) for d in data.values()) == 1797
    # the same test images evaluate() and the report use
    split, _, _ = api.evaluation_data(tiny_run)
    assert torch.equal(split.to_float(), x)
    loader = torch.utils.data.DataLoader(data["train"], batch_size=32)
    xb, yb = next(iter(loader))
    assert xb.shape == (32, 1, 8, 8) and yb.shape == (32,)


# ---- an image folder keeps its class names (issue 30)


@pytest.fixture(scope="module")
def named_run(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("data") / "shapes"
    rng = torch.Generator().manual_seed(0)
    for k, name in enumerate(("circle", "square", "triangle")):
        (root / name).mkdir(parents=True)
        for i in range(30):
            pixels = (torch.rand(8, 8, generator=rng) * 80 + 60 * k).clamp(0, 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return vaekit.train(tmp_path_factory.mktemp("runs") / "named", dataset=str(root), model="cvae", epochs=1,
                        width=4, hidden=16, latent_dim=2, progress=False)


def test_an_image_folder_keeps_its_class_names(named_run, tmp_path, capsys):
    from vaekit.explore import load_explorer

    assert json.loads((named_run / "classes.json").read_text()) == ["circle", "square", "triangle"]
    assert main(["sample", str(named_run), "--label", "square", "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["sample", str(named_run), "--label", "1", "--n", "4", "--out", str(tmp_path / "n.png")]) == 0
    capsys.readouterr()
    assert main(["sample", str(named_run), "--label", "hexagon", "--out", str(tmp_path / "h.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "circle, square, triangle" in err
    text = (named_run / "report.html").read_text()
    assert "class triangle" in text
    assert load_explorer(named_run).info()["class_names"] == ["circle", "square", "triangle"]
    plain = vaekit.train(tmp_path / "plain", dataset=json.loads((named_run / "config.json").read_text())["data"]["dataset"], epochs=1, width=4, hidden=16, latent_dim=2,
                         progress=False)  # M1 on a model without classes: predict names the classes too
    assert json.loads((plain / "classes.json").read_text()) == ["circle", "square", "triangle"]
    assert main(["m1", str(plain), "--classifier", "logistic"]) == 0
    capsys.readouterr()
    assert main(["predict", str(plain)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == "index,label,p_circle,p_square,p_triangle"
    assert {row.split(",")[1] for row in rows[1:]} <= {"circle", "square", "triangle"}


# ---- figures fit for a paper


def test_curves_have_units_title_case_and_no_flat_panel():
    from vaekit import plots

    metrics = [{"epoch": e, "train_neg_elbo": 30.0 - e, "val_neg_elbo": 31.0 - e, "train_label_error": 0.5,
                "val_kl": 2.0, "lr": 2e-3 / e, "kl_weight": 1.0} for e in (1, 2, 3, 4)]
    fig = plots.curves_plot(metrics)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["−ELBO", "KL", "Label Error"]
    units = {ax.get_title(): ax.get_ylabel() for ax in fig.axes if ax.get_title()}
    assert units["−ELBO"] == "nats per image" and units["Label Error"] == "share of images"
    assert fig.get_layout_engine() is not None  # constrained: titles never print over the row above
    schedules = plots.schedules_plot(metrics)
    assert [ax.get_title() for ax in schedules.axes] == ["Learning Rate"]  # the KL weight stayed 1: no panel
    assert plots.schedules_plot([{**m, "lr": 1e-3} for m in metrics]) is None


def test_the_latent_map_has_a_legend_of_class_names():
    import numpy as np

    from vaekit import plots

    fig = plots.latent_plot(np.random.default_rng(0).normal(size=(30, 2)), torch.arange(30) % 3 - (torch.arange(30) == 0).long(),
                            "PC 1", "PC 2", ["circle", "square", "triangle"])
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["unknown", "circle", "square", "triangle"]
    assert len(fig.axes) == 1  # no colour bar


def test_pictures_get_row_labels_and_unused_axes_one_line(run):
    model = vaekit.load(run)
    x = vaekit.load_data(run)["test"].tensors[0]
    plain = vaekit.grids.image_grid(x[:16], nrow=8)
    labelled = vaekit.grids.reconstruction_grid(model, x, None)
    assert labelled.width > plain.width  # a column of row labels
    column = np.asarray(labelled)[:, : labelled.width - plain.width]
    assert (column < 128).any()  # text drawn in it
    text = (run / "report.html").read_text()
    rows = text.count("<tr><td>dimension ")
    unused = text.count('<tr class="unused">')
    assert rows + unused >= 1 and (unused == 0 or "unused by the model" in text)


@pytest.mark.parametrize("panel, suffix", [("curves", ".svg"), ("latent", ".pdf"), ("samples", ".svg"),
                                           ("traversal", ".pdf"), ("reconstructions", ".png")])
def test_vaekit_plot_writes_a_vector_figure_of_a_panel(run, tmp_path, capsys, panel, suffix):
    out = tmp_path / f"{panel}{suffix}"
    assert main(["plot", str(run), panel, "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data.startswith({".svg": b"<?xml", ".pdf": b"%PDF", ".png": b"\x89PNG"}[suffix])
    if suffix == ".svg":
        assert b"<text" in data or b"glyph" in data or b"<path" in data


def test_vaekit_plot_mistakes_are_one_line(run, tmp_path, capsys):
    assert main(["plot", str(run), "curves", "--out", str(tmp_path / "x.doc")]) == 2
    assert "cannot tell the figure format" in capsys.readouterr().err


def test_plain_samples_and_analogies_have_labelled_rows_and_a_title(digits_run, cvae_run):
    """Every grid vaekit writes says what its rows are: plain samples and the analogy grid had bare images."""
    from vaekit.config import DataConfig
    from vaekit.data import load_dataset
    from vaekit.grids import analogy_grid, image_grid, sample_grid

    with torch.no_grad():
        samples = sample_grid(vaekit.load(digits_run), n=16)
        test = load_dataset(DataConfig(dataset="digits")).test
        x, y = test.to_float()[:3], test.y[:3]
        analogies = analogy_grid(vaekit.load(cvae_run), x, y, n=3)
    for picture, bare in ((samples, image_grid(torch.zeros(16, 1, 8, 8), nrow=8)),
                          (analogies, image_grid(torch.zeros(33, 1, 8, 8), nrow=11))):
        assert picture.width > bare.width and picture.height > bare.height  # a label column and a title band
        pixels = np.asarray(picture.convert("L"))
        assert (pixels[:, : picture.width - bare.width] < 128).any()  # the row labels are drawn
        assert (pixels[: picture.height - bare.height] < 128).any()  # the title is drawn
