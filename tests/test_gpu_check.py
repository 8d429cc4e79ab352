"""benchmarks/gpu_check.py, the one prepared GPU run, in its CPU smoke mode: every stage runs and the
results file parses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_mode_writes_one_results_file(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--smoke", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["mode"].startswith("smoke") and results["finished"]
    stages = results["stages"]
    assert set(stages) == {"speed", "iwae", "fast", "tests", "natural"}
    natural = {row["method"].split(",")[0]: row["bits_per_dim"] for row in stages["natural"]["rows"]}
    assert stages["natural"]["status"] == "ok" and natural.keys() == {"PNG (optimize)", "WebP lossless",
                                                                        "vaekit vae (autoregressive True)"}
    assert all(0 < bits < 16 for bits in natural.values())  # random tiles: about 8 bits/dim for everyone
    assert stages["speed"]["status"] == "ok" and "| vaekit |" in stages["speed"]["output_tail"]
    assert stages["iwae"]["status"] == "ok" and stages["iwae"]["k"] == 20 and stages["iwae"]["nll"] > 0
    assert stages["iwae"]["finite"] and stages["iwae"]["image_samples_per_second"] > 0
    assert stages["tests"]["status"] == "ok" and "skipped" in stages["tests"]["output_tail"]  # no CUDA here
