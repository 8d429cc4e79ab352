"""The GPU paths: training, resume, evaluation and the compile/bf16 step on CUDA, against the CPU.

Skipped where torch sees no CUDA device; benchmarks/gpu_check.py runs them on a GPU machine."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit.api import evaluation_data
from vaekit.evaluate import evaluate

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: these run on a GPU machine")]
TINY = dict(dataset="digits", width=8, hidden=32, latent_dim=4, progress=False)


def test_a_cuda_run_evaluates_like_the_cpu(tmp_path):
    run = vaekit.train(tmp_path / "run", epochs=2, device="cuda", **TINY)
    split, data_cfg, mode = evaluation_data(run)
    from vaekit.data import fixed_targets

    on = {}
    for device in ("cuda", "cpu"):
        x = fixed_targets(split, mode, data_cfg.split_seed + 3, device).x
        on[device] = evaluate(vaekit.load(run, device=device), x, iw_samples=200)
    assert math.isclose(on["cuda"]["kl"], on["cpu"]["kl"], rel_tol=1e-4)  # closed form: no sampling noise
    assert abs(on["cuda"]["nll"] - on["cpu"]["nll"]) < 4 * on["cpu"]["nll_se"]


def test_a_cuda_run_resumes_where_it_stopped(tmp_path):
    options = dict(lr_schedule="constant", device="cuda", **TINY)
    straight = vaekit.train(tmp_path / "a", epochs=2, **options)
    first = vaekit.train(tmp_path / "b", epochs=1, **options)
    vaekit.train(first, resume=True, epochs=2, progress=False)
    a, b = load_file(straight / "last.safetensors"), load_file(first / "last.safetensors")
    keys = [k for k in a if k.startswith("model.")]
    # cuDNN may pick other kernels in a new process: equal to float32 rounding, not always bit for bit
    assert keys and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in keys)


def test_compile_and_bf16_train_on_cuda(tmp_path):
    run = vaekit.train(tmp_path / "fast", epochs=2, device="cuda", compile=True, precision="bf16", **TINY)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["train_neg_elbo"]) and math.isfinite(r["val_neg_elbo"]) for r in rows)


@pytest.mark.parametrize("model", ["cvae", "m2", "categorical", "hvae"])
def test_every_model_trains_on_cuda(model, tmp_path):
    options = dict(TINY, labels_per_class=5) if model == "m2" else dict(TINY)
    if model == "categorical":
        options.pop("latent_dim")
    run = vaekit.train(tmp_path / model, model=model, epochs=1, device="cuda", **options)
    assert math.isfinite(json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["val_neg_elbo"])
