"""report.html (issue 18): written by `vaekit train` and `vaekit report`, numbers added by `vaekit evaluate`,
self-contained, and built through the model contract only. The browser checks are in test_browser.py."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

import vaekit
import vaekit.cli
import vaekit.report
from vaekit.cli import main
from vaekit.latent_map import latent_map

SOURCES = Path(vaekit.__file__).parent


class Page(HTMLParser):
    """The tags of a page, with their attributes, and the text of each <td>."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.cells: list[tuple[dict, str]] = []
        self._cell: dict | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "td":
            self._cell, self._text = dict(attrs), ""

    def handle_data(self, data):
        if self._cell is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append((self._cell, self._text))
            self._cell = None


def numbers(page: Page) -> dict[tuple[str, str], float]:
    """{(source, key): value} of every number cell in the page."""
    return {(a["data-source"], a["data-key"]): float(a["data-value"]) for a, _ in page.cells if "data-value" in a}


@pytest.fixture
def run(digits_run, tmp_path):
    """A copy of the shared run, without the evaluations other tests may have added to it."""
    copy = Path(shutil.copytree(digits_run, tmp_path / "run"))
    (copy / "evaluation.json").unlink(missing_ok=True)
    return copy


def test_train_writes_a_self_contained_report(digits_run):
    text = (digits_run / "report.html").read_text()
    page = Page(text)
    images = [a for t, a in page.tags if t == "img"]
    assert len(images) >= 8  # curves, samples, reconstructions, map, sweep, interpolations, traversal rows
    assert all(a["src"].startswith("data:image/png;base64,") for a in images)
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text), "the report must fetch nothing"
    for heading in ("Config", "Numbers", "Training curves", "Samples", "Reconstructions", "Latent space",
                    "Interpolations", "Latent traversals"):
        assert f"<h2>{heading}</h2>" in text


def test_report_shows_the_best_epoch_of_metrics_jsonl(digits_run):
    metrics = [json.loads(line) for line in (digits_run / "metrics.jsonl").read_text().splitlines()]
    best = min(metrics, key=lambda m: m["val_neg_elbo"])
    shown = numbers(Page((digits_run / "report.html").read_text()))
    for term in ("neg_elbo", "recon", "kl"):
        assert shown[("val", term)] == best[f"val_{term}"]
        assert shown[("train", term)] == best[f"train_{term}"]


def test_evaluate_adds_its_numbers_to_the_report(run, capsys):
    assert main(["evaluate", str(run), "--iw-samples", "5", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)  # stdout stays one JSON object
    saved = json.loads((run / "evaluation.json").read_text())["digits"]
    assert saved == printed
    shown = numbers(Page((run / "report.html").read_text()))
    for key in ("neg_elbo", "recon", "kl", "nll", "active_units"):
        assert shown[("evaluation:digits", key)] == saved[key]
    # a quicker evaluation on part of the test set is kept apart from the full one
    assert main(["evaluate", str(run), "--iw-samples", "2", "--limit", "20"]) == 0
    doc = json.loads((run / "evaluation.json").read_text())
    assert set(doc) == {"digits", "digits, first 20 images"} and doc["digits"] == saved


def test_a_read_only_run_is_still_evaluated(run, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise vaekit.errors.VaekitError("could not write evaluation.json: Read-only file system")

    monkeypatch.setattr(vaekit.cli, "save_evaluation", refuse)
    assert main(["evaluate", str(run), "--iw-samples", "2", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["nll"] > 0
    assert "warning: the report" in err and "Read-only" in err


def test_report_command_with_tsne(run, capsys):
    (run / "evaluation.json").unlink(missing_ok=True)
    before = (run / "report.html").stat().st_mtime_ns
    assert main(["report", str(run), "--map", "tsne"]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    text = (run / "report.html").read_text()
    assert (run / "report.html").stat().st_mtime_ns > before and "t-SNE of the codes" in text
    assert "No test-set numbers yet" in text and "vaekit evaluate" in text  # the page says how to get them


def test_every_number_a_model_reports_is_shown():
    from vaekit.report import evaluation_table

    result = {"dataset": "digits", "n_images": 10, "iw_samples": 5, "neg_elbo": 21.5, "neg_elbo_se": 0.25,
              "recon": 18.0, "kl": 3.5, "nll": 20.0, "conditional_accuracy": 0.875, "label_error": 0.125,
              "label_error_se": 0.01, "conditional_accuracy_per_class": [0.5, 1.0]}
    shown = numbers(Page(evaluation_table("digits", result)))
    for key in ("neg_elbo", "recon", "kl", "nll", "conditional_accuracy", "label_error"):
        assert shown[("evaluation:digits", key)] == result[key]
    assert "0.500 1.000" in evaluation_table("digits", result)


def test_a_report_that_fails_leaves_the_trained_run(tmp_path, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise vaekit.errors.VaekitError("could not write report.html: No space left on device")

    monkeypatch.setattr(vaekit.report, "write_report", fail)
    argv = ["train", "--dataset", "digits", "--width", "8", "--hidden", "32", "--latent-dim", "4", "--epochs", "1"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "No space left" in err and f"vaekit report {tmp_path / 'run'}" in err
    assert (tmp_path / "run" / "model.safetensors").is_file() and not (tmp_path / "run" / "report.html").exists()


@pytest.mark.parametrize("argv, message", [
    (["report", "{tmp}/nowhere"], "does not exist"),
    (["report", "{tmp}"], "not a vaekit run folder"),
    (["report", "{run}", "--map", "umap"], "invalid choice"),
])
def test_report_mistakes_are_one_line(argv, message, run, tmp_path, capsys):
    try:
        code = main([a.format(tmp=tmp_path, run=run) for a in argv])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_report_of_models_with_classes(cvae_run):
    text = (cvae_run / "report.html").read_text()
    assert text.count('alt="class ') == 10  # the sweep drawn as each of the 10 classes
    assert "one row per class" in text


def test_report_and_explorer_code_never_name_a_model():
    """Generic code: models are known by their contract, never by name."""
    for name in ("report.py", "explore.py", "latent_map.py", "explore.html"):
        text = (SOURCES / name).read_text()
        for model in ("vae", "cvae", "m2", "categorical", "vamp"):
            assert not re.search(rf"""["']{model}["']""", text, re.I), (name, model)


def test_latent_map_goes_back_and_forth():
    codes = np.random.default_rng(0).normal(size=(50, 5)) @ np.diag([3, 2, 0.1, 0.1, 0.1])
    plane = latent_map(codes)
    assert plane.method == "pca" and plane.points.shape == (50, 2)
    np.testing.assert_allclose(plane.to_map(plane.to_latent(plane.points)), plane.points, atol=1e-9)
    assert plane.sweep(4).shape == (16, 5)
    raw = latent_map(codes[:, :2])
    np.testing.assert_allclose(raw.points, codes[:, :2])  # two dimensions: the raw ones
    np.testing.assert_allclose(raw.to_latent(raw.points), codes[:, :2])
    line = latent_map(codes[:, :1])
    assert line.points.shape == (50, 2) and not line.points[:, 1].any()
    # a probability vector per variable stays one after going back from the plane
    probs = np.random.default_rng(1).dirichlet(np.ones(4), size=(60, 3)).reshape(60, 12)
    back = latent_map(probs).sweep(3).reshape(9, 3, 4)
    np.testing.assert_allclose(back.sum(-1), 1.0, atol=1e-9)


class Categorical(torch.nn.Module):
    """A stand-in that keeps the contract with 2 categorical variables of 3 categories (D = 6): its
    traversal has 2 axes, not D, and its kl_per_dim one column per variable."""

    num_classes = 0

    def __init__(self, image_shape=(1, 8, 8)):
        super().__init__()
        self.image_shape = image_shape
        self.linear = torch.nn.Linear(6, int(np.prod(image_shape)))

    def _probs(self, x):
        return torch.softmax(x.flatten(1)[:, :6].view(-1, 2, 3) * 5, -1).flatten(1)

    def encode(self, x, y=None):
        return self._probs(x)

    def decode(self, z, labels=None):
        return torch.sigmoid(self.linear(z)).view(len(z), *self.image_shape)

    def reconstruct(self, x, y=None):
        return self.decode(self.encode(x))

    def sample(self, n, labels=None):
        return self.decode(torch.nn.functional.one_hot(torch.randint(3, (n, 2)), 3).flatten(1).float())

    def bounds(self, x, y, num_samples, chunk):
        q = self._probs(x).view(-1, 2, 3)
        kl = (q * (q.clamp_min(1e-9).log() + np.log(3))).sum(-1)
        return {"recon": torch.zeros(len(x)), "kl": kl.sum(-1), "nll": torch.zeros(len(x)), "kl_per_dim": kl}

    def traversal(self, z, steps=9):
        walk = z.expand(2, 3, 6).clone()
        for g in range(2):
            walk[g, :, 3 * g : 3 * g + 3] = torch.eye(3)
        return walk


def test_a_categorical_latent_gets_one_traversal_row_per_variable(digits_run):
    from vaekit.report import build_report

    split, data_cfg, mode = vaekit.api.evaluation_data(digits_run)
    test = vaekit.data.test_targets(split, 0, mode, "cpu")
    text = build_report(digits_run, Categorical().eval(), test)
    rows = re.findall(r"<tr><td>(?:dimension|variable) (\d+)</td>", text)
    assert len(rows) == 2  # one row per variable, ordered by KL


def test_a_run_with_one_test_image_gets_its_pictures_and_a_report_without_a_map(tmp_path):
    images = np.random.default_rng(0).integers(0, 2, (60, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "tiny.npz", x=images)
    run = vaekit.train(tmp_path / "run", dataset=str(tmp_path / "tiny.npz"), test_fraction=0.02, epochs=1,
                       arch="mlp", hidden=16, latent_dim=2, progress=False)
    page = (run / "report.html").read_text()
    assert "No map: it needs at least 2 test images, and this run has 1" in page
    assert (run / "samples.png").is_file() and not (run / "latent.png").exists()
