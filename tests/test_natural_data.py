"""Natural-image data: CIFAR-10 and SVHN readers (their real formats, served from 127.0.0.1), the likelihood
that --likelihood auto picks for each kind of pixel, and what the numbers are called."""

from __future__ import annotations

import hashlib
import io
import math
import tarfile

import numpy as np
import pytest
import scipy.io
import torch

from vaekit import download as dl
from vaekit.config import DataConfig, TrainConfig, auto_patience
from vaekit.data import CIFAR_FILES, CIFAR_FOLDER, load_dataset
from vaekit.errors import VaekitError
from vaekit.evaluate import evaluate, format_report
from vaekit.likelihoods import choose_likelihood
from vaekit.models.vae import VAE, VAEConfig

from test_download import serve


def cifar_archive(rng: np.random.Generator, counts: dict[str, int]) -> tuple[bytes, dict[str, np.ndarray]]:
    """A cifar-10-binary.tar.gz of the real layout with `counts[file]` records per file; and each file's
    records (N, 3073)."""
    buffer, records = io.BytesIO(), {}
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in (*CIFAR_FILES["train"], *CIFAR_FILES["test"], "batches.meta.txt"):
            if name.endswith(".bin"):
                rows = rng.integers(0, 256, (counts[name], 3073), dtype=np.uint8)
                rows[:, 0] = (np.arange(counts[name]) + len(records) * 4) % 10  # every class among the files
                records[name], data = rows, rows.tobytes()
            else:
                data = b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n"
            info = tarfile.TarInfo(f"{CIFAR_FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), records


@pytest.fixture
def local_server():
    started = []

    def start(www):
        started.append(serve(www))
        return started[-1][2]

    yield start
    for server, thread, _ in started:
        server.shutdown()
        server.server_close()
        thread.join()


def test_cifar10_downloads_and_reads_the_binary_version(tmp_path, local_server, monkeypatch):
    rng = np.random.default_rng(0)
    counts = {**{f: 4 for f in CIFAR_FILES["train"]}, "test_batch.bin": 5}
    archive, records = cifar_archive(rng, counts)
    www = tmp_path / "www"
    www.mkdir()
    (www / "cifar-10-binary.tar.gz").write_bytes(archive)
    monkeypatch.setitem(dl.SOURCES, "cifar10", {"urls": ("http://unused.invalid/",),
                                                "sha256": {"cifar-10-binary.tar.gz": hashlib.sha256(archive).hexdigest()}})
    dest = dl.download("cifar10", tmp_path / "data", base_url=local_server(www), progress=False)
    data = load_dataset(DataConfig(dataset="cifar10", data_dir=str(dest), val_fraction=0.25))
    assert data.image_shape == (3, 32, 32) and data.num_classes == 10
    assert (len(data.train) + len(data.val), len(data.test)) == (20, 5)  # the official test set is kept
    test = records["test_batch.bin"]
    assert torch.equal(data.test.x, torch.from_numpy(test[:, 1:].reshape(5, 3, 32, 32)))  # R, G, B planes
    assert torch.equal(data.test.y, torch.from_numpy(test[:, 0].astype(np.int64)))
    train = np.concatenate([records[f] for f in CIFAR_FILES["train"]])
    for split in (data.train, data.val):  # each training image where its index says
        assert torch.equal(split.x, torch.from_numpy(train[split.index.numpy(), 1:].reshape(-1, 3, 32, 32)))
    assert data.train.x.dtype == torch.uint8 and data.train.max_value == 255

    # The extracted folder reads the same; a damaged record length is one line.
    with tarfile.open(dest / "cifar-10-binary.tar.gz") as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    again = load_dataset(DataConfig(dataset="cifar10", data_dir=str(tmp_path / "extracted"), val_fraction=0.25))
    assert torch.equal(again.test.x, data.test.x)
    bad = tmp_path / "extracted" / CIFAR_FOLDER / "test_batch.bin"
    bad.write_bytes(bad.read_bytes()[:-1])
    with pytest.raises(VaekitError, match="not a whole number of 3073-byte records"):
        load_dataset(DataConfig(dataset="cifar10", data_dir=str(tmp_path / "extracted")))


def test_svhn_downloads_and_reads_the_mat_files(tmp_path, local_server, monkeypatch):
    rng = np.random.default_rng(1)
    www = tmp_path / "www"
    www.mkdir()
    arrays, md5 = {}, {}
    for name, n in (("train_32x32.mat", 12), ("test_32x32.mat", 6)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        y[0, 0] = 10  # the digit 0
        scipy.io.savemat(www / name, {"X": x, "y": y}, format="5")
        arrays[name] = (x, y)
        md5[name] = hashlib.md5((www / name).read_bytes()).hexdigest()
    monkeypatch.setitem(dl.SOURCES, "svhn", {"urls": ("http://unused.invalid/",),
                                             "sha256": {k: None for k in md5}, "md5": md5})
    dest = dl.download("svhn", tmp_path / "data", base_url=local_server(www), progress=False)
    data = load_dataset(DataConfig(dataset="svhn", data_dir=str(dest), val_fraction=0.25))
    x, y = arrays["test_32x32.mat"]
    assert data.image_shape == (3, 32, 32) and len(data.test) == 6
    assert torch.equal(data.test.x, torch.from_numpy(x.transpose(3, 2, 0, 1).copy()))  # (N, C, H, W)
    assert data.test.y.tolist() == [int(v) % 10 for v in y[:, 0]] and data.test.y[0] == 0

    (www / "test_32x32.mat").write_bytes(b"not a MATLAB file")  # a damaged download fails its MD5
    with pytest.raises(VaekitError, match="test_32x32.mat from .* MD5 [0-9a-f]{32}, expected"):
        dl.download("svhn", tmp_path / "other", base_url=local_server(www), progress=False)


def _dataset(tmp_path, name, x):
    np.savez(tmp_path / name, x=x)
    return load_dataset(DataConfig(dataset=str(tmp_path / name)))


def test_auto_likelihood_follows_the_data(tmp_path):
    rng = np.random.default_rng(0)
    cases = {
        "digits": (load_dataset(DataConfig()), "bernoulli", "binarized by its recipe"),
        "binary": (_dataset(tmp_path, "b.npz", rng.integers(0, 2, (40, 8, 8)).astype(np.uint8) * 255), "bernoulli",
                   "binary pixels"),
        "rgb": (_dataset(tmp_path, "c.npz", rng.integers(0, 256, (40, 3, 8, 8)).astype(np.uint8)), "logistic-mixture",
                "8-bit colour pixels"),
        "real": (_dataset(tmp_path, "r.npz", rng.random((40, 8, 8)).astype(np.float32)), "gaussian",
                 "density of continuous values"),
    }
    for name, (data, expected, words) in cases.items():
        cfg, line = choose_likelihood(VAEConfig(), DataConfig(dataset=data.name), data)
        assert cfg.likelihood == expected and words in line and "\n" not in line, (name, line)
    grey = _dataset(tmp_path, "g.npz", rng.integers(0, 256, (40, 8, 8)).astype(np.uint8))
    with pytest.raises(VaekitError, match="--binarize dynamic or static"):  # never Bernoulli silently
        choose_likelihood(VAEConfig(likelihood="bernoulli"), DataConfig(dataset=grey.name), grey)
    cfg, line = choose_likelihood(VAEConfig(likelihood="bernoulli"), DataConfig(dataset=grey.name, binarize="static"),
                                  grey)
    assert cfg.likelihood == "bernoulli" and "binarized (--binarize static)" in line
    cfg, line = choose_likelihood(VAEConfig(likelihood="logistic-mixture", bits=5), DataConfig(dataset=grey.name), grey)
    assert "5 bits (32 levels" in line and "floored" in line


def test_a_density_is_never_called_bits_per_dim():
    torch.manual_seed(0)
    x = torch.rand(6, 1, 8, 8)
    for kind, has_bits in (("gaussian", False), ("discretized-gaussian", True), ("logistic-mixture", True)):
        model = VAE(VAEConfig(likelihood=kind, width=4, hidden=8, latent_dim=2))
        r = evaluate(model, x, iw_samples=3)
        assert ("nll_bits_per_dim" in r) == has_bits and ("density" in r) != has_bits, kind
        text = format_report(r)
        assert ("bits/dim" in text) == has_bits and ("density" in text or "densities" in text) != has_bits, text
        if has_bits:
            assert r["nll_bits_per_dim"] == pytest.approx(r["nll"] / (64 * math.log(2)))


def test_automatic_epochs_stop_on_a_stalled_validation():
    assert TrainConfig().patience is None  # unset: automatic with automatic epochs
    assert auto_patience(600) == 120 and auto_patience(16) == 10
    assert TrainConfig(patience=0).patience == 0


@pytest.mark.parametrize("shape", [(3, 32, 32), pytest.param((1, 64, 64), marks=pytest.mark.slow)])
def test_every_model_takes_the_residual_body(shape):
    from vaekit.models import MODELS

    torch.manual_seed(0)
    x = torch.randint(0, 256, (4, *shape)).float() / 255
    y = torch.tensor([0, 1, 2, -1])
    for name, cls in MODELS.items():
        cfg = cls.Config(arch="resnet", likelihood="logistic-mixture", mixture_components=2, width=4, hidden=16,
                         latent_dim=4, image_shape=shape, num_classes=3)
        model = cls(cfg)
        labels = {"none": None, "all": y.clamp(min=0), "some": y}[cls.labels]
        terms = model(x, labels)
        assert torch.isfinite(terms["loss"]), name
        assert model.reconstruct(x, None if labels is None else y.clamp(min=0)).shape == x.shape, name
    body = MODELS["vae"](MODELS["vae"].Config(arch="resnet", width=4, image_shape=shape)).encoder.body
    halvings = {32: 3, 64: 4}[shape[1]]  # down to 4x4, channels doubling: width x 2^halvings
    assert body(x).shape[-1] == 4 * 2**halvings * 4 * 4
