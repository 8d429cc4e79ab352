"""What the package declares is true: the Python versions it runs on, the CPU kernels it was tested with."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]


def test_requires_python_is_the_oldest_version_the_code_runs_on():
    """vermin reads every module and names the oldest Python that has all it uses."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    match = re.fullmatch(r">=\s*3\.(\d+)", declared)
    assert match, declared
    minor = int(match.group(1))
    vermin = shutil.which("vermin", path=str(Path(sys.executable).parent)) or shutil.which("vermin")
    assert vermin, "vermin is a dev dependency (pyproject [dev])"
    done = subprocess.run([vermin, "--no-tips", "--eval-annotations", "--violations", f"-t=3.{minor}-",
                           str(ROOT / "src" / "vaekit")], capture_output=True, text=True)
    assert done.returncode == 0, f"code needs a newer Python than {declared}:\n{done.stdout}"
    assert sys.version_info >= (3, minor)  # and this suite runs on it


def test_aten_capability_asked_for_is_the_one_running():
    """`make test-numerics` reruns the numerics tests under another ATen CPU capability; check torch obeys."""
    asked = os.environ.get("ATEN_CPU_CAPABILITY")
    running = torch.backends.cpu.get_cpu_capability().lower()
    if not asked:
        pytest.skip(f"ATEN_CPU_CAPABILITY not set; torch runs its {running} kernels")
    assert running == asked.lower()
