"""docs/tutorial.ipynb runs top to bottom, and is stored without outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parents[1] / "docs" / "tutorial.ipynb"


def test_saved_notebook_has_no_outputs():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [cell for cell in nb["cells"] if cell["cell_type"] == "code"]
    assert code
    for cell in code:
        assert cell["outputs"] == [] and cell["execution_count"] is None, "strip the outputs before saving"
    assert "widgets" not in nb["metadata"]


@pytest.mark.slow
def test_tutorial_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")

    # A kernelspec naming this interpreter, found first through JUPYTER_PATH: the notebook runs in
    # this environment whatever other 'python3' kernels the machine has installed.
    spec = tmp_path / "jupyter" / "kernels" / "vaekit-tutorial"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "vaekit tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # One intra-op thread: these tiny networks gain nothing from more, and on a shared 2-core machine
    # two spinning OpenMP threads made the run about 3 times slower (the kernel inherits this).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    workdir = tmp_path / "work"  # the kernel's working directory: run folders land here, not in the repo
    workdir.mkdir()
    client = nbclient.NotebookClient(
        nb, kernel_name="vaekit-tutorial", timeout=600, resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()  # raises CellExecutionError at the first failing cell (the notebook asserts its checks)

    assert (workdir / "tutorial-runs" / "vae" / "model.safetensors").is_file()
    assert (workdir / "tutorial-runs" / "cvae" / "model.safetensors").is_file()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert sum("image/png" in out.get("data", {}) for out in outputs) == 7  # every figure was drawn
    stderr = "".join(out.get("text", "") for out in outputs if out.get("name") == "stderr")
    assert "Warning" not in stderr, stderr
