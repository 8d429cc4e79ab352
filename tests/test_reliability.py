"""Faults, in-process: disk full, non-finite losses, damaged run folders, interrupted bookkeeping.

The subprocess versions (kill -9 at random points, real signals, a real full filesystem) are in
benchmarks/faults.py; SIGTERM and kill -9 resumes are also in test_train.py, damaged data files in
test_data.py, downloads in test_download.py.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import vaekit
import vaekit.checkpoint as ckpt
import vaekit.grids
import vaekit.plots
from vaekit import VaekitError
from vaekit.api import make_configs
from vaekit.checkpoint import load_tensors
from vaekit.cli import main

training = sys.modules["vaekit.train"]  # the attribute vaekit.train is the API function

TINY = dict(dataset="digits", epochs=1, batch_size=64, width=8, hidden=32, latent_dim=4)
TINY_ARGS = ["--dataset", "digits", "--batch-size", "64", "--width", "8", "--hidden", "32", "--latent-dim", "4"]
PICTURES = ("samples.png", "reconstructions.png", "latent.png", "curves.png")


def fit_tiny(out: Path, **options) -> Path:
    """A tiny run without its pictures (they take longer than the training)."""
    data, model, train = make_configs(**{**TINY, **options})
    return training.fit(data, model, train, out, progress=False)


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaekit: error:") and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]


def checkpoint_step(run: Path) -> int:
    _, meta = load_tensors(run / "last.safetensors")
    return json.loads(meta["train_state"])["step"]


def same_weights(a: Path, b: Path) -> bool:
    wa, _ = load_tensors(a / "last.safetensors")
    wb, _ = load_tensors(b / "last.safetensors")
    keys = [k for k in wa if k.startswith(("model.", "best.", "optim."))]
    return bool(keys) and set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in keys)


def epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return fit_tiny(tmp_path_factory.mktemp("runs") / "tiny")


@pytest.fixture(scope="module")
def reference_2_epochs(tmp_path_factory) -> Path:
    """Two uninterrupted epochs; what every resumed run below must equal bit for bit."""
    return fit_tiny(tmp_path_factory.mktemp("runs") / "ref2", epochs=2)


# ---------------------------------------------------------------------------------------------
# Disk full: a write that fails with ENOSPC


class FullFile:
    """A file on a disk that fills up: half of the bytes are written, then ENOSPC."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def fill_disk_after(monkeypatch, name: str, allowed: int) -> None:
    """The atomic writes of `name` (e.g. last.safetensors) fail with ENOSPC after `allowed` successes."""
    real_open, real_fdopen = os.open, os.fdopen
    temporaries, seen = {}, [0]

    def open_(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        temporaries[fd] = Path(path).name
        return fd

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        if temporaries.pop(fd, "").startswith(f".{name}."):
            seen[0] += 1
            if seen[0] > allowed:
                return FullFile(f)
        return f

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.parametrize("name, allowed", [("last.safetensors", 3), ("model.safetensors", 2), ("config.json", 0)])
def test_disk_full_is_one_line_keeps_the_previous_file_and_resumes(
    name, allowed, reference_2_epochs, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        fill_disk_after(m, name, allowed)
        code, err = cli(capsys, "train", *TINY_ARGS, "--epochs", "2", "--checkpoint-every", "0", "--out", run)
    kept = "; the previous version of it is intact" if allowed else ""  # config.json did not exist yet
    assert_one_line_error(code, err, rf"could not write .*{re.escape(name)}: No space left on device{kept}$")
    assert not list(run.glob("*.tmp"))  # the half-written temporary is gone
    if name != "config.json":
        # --checkpoint-every 0: one checkpoint per step, so the last good one is from step `allowed`
        assert checkpoint_step(run) == allowed
        vaekit.load(run)  # the previous model.safetensors is intact too
        code, err = cli(capsys, "train", "--resume", run)  # space again: the run completes
        assert code == 0, err
        assert same_weights(run, reference_2_epochs) and epochs(run) == [1, 2]
    else:
        assert not (run / "config.json").exists()


def test_disk_full_while_appending_metrics_is_one_line(tmp_path, capsys, monkeypatch):
    real_open = open

    def open_(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return FullFile(f) if str(path).endswith(ckpt.METRICS) and "a" in mode else f

    monkeypatch.setattr(ckpt, "open", open_, raising=False)
    code, err = cli(capsys, "train", *TINY_ARGS, "--epochs", "1", "--out", tmp_path / "run")
    assert_one_line_error(code, err, "No space left on device")


# ---------------------------------------------------------------------------------------------
# Non-finite losses


NON_FINITE = r"(the [\w, ]+ terms?|a gradient) became non-finite in epoch (\d+), step (\d+)"


def test_exploding_learning_rate_names_epoch_step_and_term(tmp_path, capsys):
    code, err = cli(capsys, "train", *TINY_ARGS, "--epochs", "1", "--lr", "1e6", "--out", tmp_path / "run")
    assert_one_line_error(code, err, NON_FINITE + r".*try a lower --lr")
    assert re.search(NON_FINITE, err).group(2) == "1"


def test_non_finite_before_any_checkpoint_does_not_claim_one(tmp_path, capsys):
    run = tmp_path / "run"
    code, err = cli(capsys, "train", *TINY_ARGS, "--epochs", "1", "--lr", "1e6", "--out", run)
    assert code == 2 and not (run / "last.safetensors").exists()
    assert "checkpoint is kept" not in err and "no checkpoint had been written yet" in err


def test_nan_mid_run_keeps_the_last_good_checkpoint(reference_2_epochs, tmp_path, capsys, monkeypatch):
    """NaN images at step 30 (epoch 2 of 22-step epochs): the message names it, the checkpoint
    before it loads and is finite, and the run resumes (without the fault) to the same weights."""
    real_step, calls = training.train_step, [0]

    def poisoned(model, optimizer, x, *args, **kwargs):
        calls[0] += 1
        return real_step(model, optimizer, x * float("nan") if calls[0] == 30 else x, *args, **kwargs)

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(training, "train_step", poisoned)
        code, err = cli(capsys, "train", *TINY_ARGS, "--epochs", "2", "--checkpoint-every", "0", "--out", run)
    assert_one_line_error(code, err, NON_FINITE)
    term, epoch, step = re.search(NON_FINITE, err).groups()
    assert (term, epoch, step) == ("the kl, neg_elbo, recon terms", "2", "30")  # every term of that step
    assert checkpoint_step(run) == 29
    tensors, _ = load_tensors(run / "last.safetensors")
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith(("model.", "best.", "optim.")))
    assert torch.isfinite(vaekit.load(run).sample(4)).all()
    code, err = cli(capsys, "train", "--resume", run)
    assert code == 0, err
    assert same_weights(run, reference_2_epochs) and epochs(run) == [1, 2]


def test_a_non_finite_update_is_named_as_a_gradient_and_never_checkpointed(tmp_path, capsys, monkeypatch):
    """A step whose terms are finite but whose update leaves a weight NaN (a non-finite gradient): the
    check before the next checkpoint names that step, and the checkpoint before it stays finite."""
    real_step, calls = training.train_step, [0]

    def poisoned(model, optimizer, x, *args, **kwargs):
        calls[0] += 1
        terms = real_step(model, optimizer, x, *args, **kwargs)
        if calls[0] == 30:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("nan")
        return terms

    run = tmp_path / "run"
    monkeypatch.setattr(training, "train_step", poisoned)
    code, err = cli(capsys, "train", *TINY_ARGS, "--epochs", "2", "--checkpoint-every", "0", "--out", run)
    assert_one_line_error(code, err, NON_FINITE)
    assert re.search(NON_FINITE, err).groups() == ("a gradient", "2", "30")
    assert checkpoint_step(run) == 29
    tensors, _ = load_tensors(run / "last.safetensors")
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith(("model.", "best.", "optim.")))


# ---------------------------------------------------------------------------------------------
# Damaged weights: vaekit.load raises VaekitError, never anything else


def rewrite_header(path: Path, edit) -> None:
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    text = edit(data[8 : 8 + n].decode())
    assert len(text.encode()) == n
    data[8 : 8 + n] = text.encode()
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def flip_header_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in (20, 21, 40):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def transpose_a_shape(path: Path) -> None:
    n = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + n])
    key = next(k for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 4)
    shape = header[key]["shape"]
    old, new = (json.dumps(s, separators=(",", ":")) for s in (shape, [shape[1], shape[0], *shape[2:]]))
    rewrite_header(path, lambda t: t.replace(f'"shape":{old}', f'"shape":{new}', 1))


def huge_header_length(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:8] = (2**62).to_bytes(8, "little")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    (truncate, "not a valid safetensors file"),
    (flip_header_bytes, "not a valid safetensors file"),
    (huge_header_length, "not a valid safetensors file"),
    (transpose_a_shape, "does not match the model"),
    (lambda p: p.write_bytes(b""), "not a valid safetensors file"),
    (lambda p: p.unlink(), "does not exist"),
])
def test_damaged_model_weights_are_a_vaekit_error(damage, message, tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    damage(run / "model.safetensors")
    with pytest.raises(VaekitError, match=message):
        vaekit.load(run)


def test_weights_of_another_model_are_refused(tiny_run, tmp_path):
    """A run folder whose model.safetensors comes from a run with another latent size."""
    other = fit_tiny(tmp_path / "other", latent_dim=8)
    run = copy_run(tiny_run, tmp_path / "run")
    shutil.copy(other / "model.safetensors", run / "model.safetensors")
    with pytest.raises(VaekitError, match="does not match the model in config.json"):
        vaekit.load(run)
    shutil.copy(other / "last.safetensors", run / "last.safetensors")
    with pytest.raises(VaekitError, match="does not match the model in config.json"):
        vaekit.train(run, resume=True, progress=False)


def test_tampered_dtype_is_refused(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    rewrite_header(run / "model.safetensors", lambda t: t.replace('"dtype":"F32"', '"dtype":"I32"', 1))
    try:
        vaekit.load(run)
    except VaekitError:
        return
    raise AssertionError("weights relabelled I32 were loaded")


# ---------------------------------------------------------------------------------------------
# Damaged run folders: config.json and last.safetensors


def edit_config(run: Path, edit) -> None:
    doc = json.loads((run / "config.json").read_text())
    edit(doc)
    (run / "config.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(vaekit_version="9.0.0"), r"written by vaekit 9\.0\.0, this is"),
    (lambda d: d.pop("vaekit_version"), "written by vaekit None"),
    (lambda d: d["model"].update(flow_layers=4), r"VAEConfig has no field\(s\) \['flow_layers'\]"),
    (lambda d: d["train"].update(scheduler="plateau"), r"TrainConfig has no field\(s\) \['scheduler'\]"),
    (lambda d: d.pop("data"), "not a valid vaekit config"),
])
def test_config_from_another_version_or_model_is_a_clear_error(edit, message, tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    edit_config(run, edit)
    with pytest.raises(VaekitError, match=message):
        vaekit.load(run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code, err = cli(capsys, "train", "--resume", run)
    assert_one_line_error(code, err, message)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing written


def test_cut_config_is_a_clear_error(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    text = (run / "config.json").read_bytes()
    (run / "config.json").write_bytes(text[: len(text) // 2])
    with pytest.raises(VaekitError, match="not a valid vaekit config"):
        vaekit.load(run)


def test_binary_config_is_a_clear_error(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    (run / "config.json").write_bytes(b"\xff\xfe\x00\x01 garbage")
    with pytest.raises(VaekitError):
        vaekit.load(run)


def test_config_field_of_the_wrong_type_is_a_clear_error(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    edit_config(run, lambda d: d["model"].update(latent_dim="four"))
    with pytest.raises(VaekitError, match=r"latent_dim \(--latent-dim\) = 'four' is not a valid value \(expected int\)"):
        vaekit.load(run)
    edit_config(run, lambda d: d["model"].update(latent_dim=4, likelihood="poisson"))
    with pytest.raises(VaekitError, match="expected one of bernoulli, gaussian"):
        vaekit.load(run)


def test_a_run_trained_with_another_model_type_keeps_its_own(tiny_run, tmp_path, capsys):
    """config.json says what the weights are: a conditional config over unconditional weights is refused."""
    run = copy_run(tiny_run, tmp_path / "run")
    def to_cvae(d: dict) -> None:  # a CVAE config (without the VAE's own fields) over the VAE's weights
        d["model"].update(model="cvae", num_classes=10)
        for name in ("prior", "prior_components", "train_samples"):
            d["model"].pop(name, None)

    edit_config(run, to_cvae)
    with pytest.raises(VaekitError, match="does not match the model in config.json"):
        vaekit.load(run)
    code, err = cli(capsys, "sample", run, "--out", tmp_path / "s.png")
    assert_one_line_error(code, err, "does not match the model")
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("damage, message", [
    (truncate, "not a valid safetensors file"),
    (lambda p: shutil.copy(p.parent / "model.safetensors", p), "holds no training state"),
])
def test_damaged_resume_point_is_a_clear_error(damage, message, tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    damage(run / "last.safetensors")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code, err = cli(capsys, "train", "--resume", run, "--epochs", "2")
    assert_one_line_error(code, err, message)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def drop_state_field(path: Path) -> None:
    tensors, meta = load_tensors(path)
    state = json.loads(meta["train_state"])
    del state["batch"]
    save_file(tensors, path, metadata={"train_state": json.dumps(state)})


def drop_rng(path: Path) -> None:
    tensors, meta = load_tensors(path)
    save_file({k: v for k, v in tensors.items() if not k.startswith("extra.rng.")}, path, metadata=meta)


@pytest.mark.parametrize("damage", [drop_state_field, drop_rng])
def test_incomplete_resume_point_is_a_clear_error(damage, tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    damage(run / "last.safetensors")
    code, err = cli(capsys, "train", "--resume", run, "--epochs", "2")
    assert_one_line_error(code, err, "last.safetensors")


def test_cut_classifier_cache_is_a_clear_error(tmp_path, capsys):
    run = fit_tiny(tmp_path / "cvae", model="cvae")
    (run / "classifier.safetensors").write_bytes(bytes(64))
    (run / "classifier.json").write_text('{"image_shape": [1, 8')
    code, err = cli(capsys, "evaluate", run, "--iw-samples", "2", "--limit", "10", "--samples-per-class", "5")
    assert_one_line_error(code, err, "classifier")


# ---------------------------------------------------------------------------------------------
# Interrupted bookkeeping: what a stop between two writes leaves behind


def test_stop_between_checkpoint_and_metrics_line_keeps_every_epoch(reference_2_epochs, tmp_path, capsys,
                                                                      monkeypatch):
    """A second Ctrl-C (KeyboardInterrupt) or kill -9 right after epoch 1's checkpoint."""
    real_append = ckpt.append_metrics

    def append(folder, record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt
        real_append(folder, record)

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(ckpt, "append_metrics", append)
        m.setattr(vaekit.plots, "run_pictures", lambda *a, **k: None)
        code, err = cli(capsys, "train", *TINY_ARGS, "--epochs", "2", "--out", run)
    assert code == 130 and "interrupted" in err
    code, err = cli(capsys, "train", "--resume", run)
    assert code == 0, err
    assert same_weights(run, reference_2_epochs)
    assert epochs(run) == [1, 2]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stop_while_drawing_pictures_is_repaired_by_resume(signum, tmp_path, capsys, monkeypatch):
    """A signal after training, while the pictures are drawn: one line and 128 + signal; resume draws them."""
    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises before this ends

    run, handler = tmp_path / "run", signal.getsignal(signal.SIGTERM)
    # Python's Ctrl-C handler, also where this test runs as a background job (which ignores SIGINT).
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with monkeypatch.context() as m:
            m.setattr(vaekit.plots, "run_pictures", interrupted)
            code, err = cli(capsys, "train", *TINY_ARGS, "--epochs", "1", "--out", run)
    finally:
        signal.signal(signal.SIGINT, previous_sigint)
    assert code == 128 + signum
    assert len(err.strip().splitlines()) == 1 and f"vaekit: interrupted by {signum.name}" in err, err
    assert signal.getsignal(signal.SIGTERM) is handler  # the CLI put the handler back
    code, err = cli(capsys, "train", "--resume", run)
    assert code == 0, err
    assert all((run / name).is_file() for name in PICTURES)


def test_resume_removes_temporaries_of_a_killed_write(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    (run / ".last.safetensors.k9x2ab.tmp").write_bytes(b"half a checkpoint")  # what kill -9 mid-write leaves
    code, err = cli(capsys, "train", "--resume", run, "--epochs", "2")
    assert code == 0, err
    assert not list(run.glob("*.tmp"))


# ---- issue 13: resume on another device, files that follow the umask

def test_resume_honours_device(tiny_run, tmp_path, capsys):
    """A run trained on a GPU resumes on a machine without one when --device cpu is given."""
    run = copy_run(tiny_run, tmp_path / "gpu-run")
    config = json.loads((run / "config.json").read_text())
    config["train"]["device"] = "cuda"  # as written by `vaekit train --device cuda`
    (run / "config.json").write_text(json.dumps(config))
    if not torch.cuda.is_available():
        code, err = cli(capsys, "train", "--resume", run, "--epochs", "2")
        assert_one_line_error(code, err, "--device cuda .* not available")
    code, err = cli(capsys, "train", "--resume", run, "--epochs", "2", "--device", "cpu")
    assert code == 0, err
    assert epochs(run) == [1, 2]
    assert json.loads((run / "config.json").read_text())["train"]["device"] == "cpu"


def test_resume_refuses_other_settings(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    code, err = cli(capsys, "train", "--resume", run, "--lr", "0.1")
    assert_one_line_error(code, err, "only --epochs and --device may change.*'lr'")


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_run_files_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        run = fit_tiny(tmp_path / "run")
        vaekit.grids.save_png(run / "extra.png", vaekit.grids.image_grid(torch.zeros(1, 1, 8, 8), nrow=1))
    finally:
        os.umask(previous)
    files = [p for p in run.iterdir() if p.is_file()]
    assert {"config.json", "model.safetensors", "last.safetensors", "metrics.jsonl", "extra.png"} <= {p.name for p in files}
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name
