"""`vaekit train --tensorboard DIR` (issue 18): the same numbers as metrics.jsonl and sample images, as
TensorBoard events, without changing the run; a clear error when the optional package is missing."""

from __future__ import annotations

import builtins
import json

import pytest
from safetensors.torch import load_file

from vaekit.cli import main

TINY = ["--dataset", "digits", "--width", "8", "--hidden", "32", "--latent-dim", "4", "--epochs", "2"]


def test_tensorboard_logs_the_metrics_and_samples(tmp_path, capsys):
    pytest.importorskip("tensorboard", reason="tensorboard is an optional extra: pip install 'vaekit[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["train", *TINY, "--out", str(tmp_path / "logged"), "--tensorboard", str(tmp_path / "tb")]) == 0
    assert main(["train", *TINY, "--out", str(tmp_path / "plain")]) == 0
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0}).Reload()
    metrics = [json.loads(line) for line in (tmp_path / "logged" / "metrics.jsonl").read_text().splitlines()]
    for key, tag in (("train_neg_elbo", "train/neg_elbo"), ("val_kl", "val/kl"), ("lr", "lr")):
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == pytest.approx([m[key] for m in metrics], rel=1e-6)
    assert [e.step for e in events.Images("samples")] == [1, 2]
    # drawing the samples takes nothing from the run's own random numbers
    assert all((load_file(tmp_path / "logged" / "model.safetensors")[k] == v).all()
               for k, v in load_file(tmp_path / "plain" / "model.safetensors").items())


def test_tensorboard_missing_is_one_line(tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith(("torch.utils.tensorboard", "tensorboard")):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    code = main(["train", *TINY, "--out", str(tmp_path / "run"), "--tensorboard", str(tmp_path / "tb")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "pip install 'vaekit[tensorboard]'" in err, err
    assert not (tmp_path / "run").exists()  # refused before anything was written
