"""Run folders written by vaekit 0.1 (tests/data/legacy-0.1, made by commit 52fd763: a VAE and a CVAE
trained one epoch, and a VAE stopped by SIGTERM in the middle of its first epoch) still load,
evaluate to the same numbers and resume."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

import vaekit

LEGACY = Path(__file__).parent / "data" / "legacy-0.1"
# vaekit 0.1's own `evaluate(run, iw_samples=50)` on an AVX-512 CPU: recon, kl, nll. Another CPU's
# float32 kernels round differently, hence a relative tolerance rather than equality.
EXPECTED = {
    "vae": (43.74620738334975, 0.17042140629464206, 43.74121857752043),
    "cvae": (43.42423421493148, 0.14549227613011442, 43.43284053324325),
}


@pytest.fixture
def legacy(tmp_path):
    def copy(name: str) -> Path:
        return Path(shutil.copytree(LEGACY / name, tmp_path / name))
    return copy


@pytest.mark.parametrize("name", ["vae", "cvae"])
def test_a_legacy_run_evaluates_to_the_same_numbers(name, legacy):
    run = legacy(name)
    # max_batch 8192: vaekit 0.1's decoder pass at 8x8, so the samples are drawn in the same chunks
    report = vaekit.evaluate(run, iw_samples=50, device="cpu", samples_per_class=10, max_batch=8192)
    recon, kl, nll = EXPECTED[name]
    assert report["recon"] == pytest.approx(recon, rel=1e-5)
    assert report["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-5)
    assert report["nll"] == pytest.approx(nll, rel=1e-5)
    assert type(vaekit.load(run)).__name__ == name.upper()


@pytest.mark.parametrize("name", ["vae", "cvae"])
def test_a_legacy_run_resumes_to_train_longer(name, legacy):
    run = legacy(name)
    vaekit.train(run, resume=True, epochs=2, progress=False)
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert (run / "samples.png").is_file()


def test_a_legacy_checkpoint_from_the_middle_of_an_epoch_resumes(legacy):
    """vaekit 0.1 kept the epoch's partial sums as one (neg_elbo, recon, kl) tensor."""
    run = legacy("vae-stopped")
    assert not (run / "metrics.jsonl").exists()  # stopped before the first epoch's line
    vaekit.train(run, resume=True, progress=False)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        assert math.isfinite(m["train_neg_elbo"])
        assert m["train_neg_elbo"] == pytest.approx(m["train_recon"] + m["train_kl"], rel=1e-5)
