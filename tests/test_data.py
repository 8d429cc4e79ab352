"""Datasets: splits, IDX/.npz/image-folder readers and their errors, batching, binarization."""

from __future__ import annotations

import builtins
import errno
import gzip
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vaekit import data as data_module
from vaekit.config import DataConfig
from vaekit.data import IDX_FILES, SYSTEM_DIRS, batches, binarize_static, load_dataset
from vaekit.errors import VaekitError


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x08NN, big-endian dimensions, then the bytes."""
    return struct.pack(f">I{array.ndim}I", 0x800 + array.ndim, *array.shape) + array.astype(np.uint8).tobytes()


def write_idx_dataset(folder: Path, n_train: int = 20, n_test: int = 5, gz: bool = True, seed: int = 0) -> dict:
    """Write the four IDX files of a small fake dataset; return the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        part: (rng.integers(0, 256, (n, 4, 5), dtype=np.uint8), rng.integers(0, 3, n, dtype=np.uint8))
        for part, n in (("train", n_train), ("test", n_test))
    }
    folder.mkdir(parents=True, exist_ok=True)
    for part, stems in IDX_FILES.items():
        for stem, array in zip(stems, arrays[part]):
            data = idx_bytes(array)
            (folder / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(data) if gz else data)
    return arrays


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    """Keep the user's real cache out of the IDX search."""
    monkeypatch.setenv("VAEKIT_DATA", str(tmp_path / "cache"))


@pytest.fixture
def deny(monkeypatch):
    """deny(path): reading `path` fails with EACCES, as without read permission (the tests run as root,
    where chmod 000 blocks nothing): data.py's open(), Path.read_bytes and Path.iterdir on it."""

    def error(path) -> PermissionError:
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    def deny(path: Path) -> None:
        real_open, real_read_bytes, real_iterdir = builtins.open, Path.read_bytes, Path.iterdir

        def fake_open(file, *args, **kwargs):
            if Path(file) == path:
                raise error(file)
            return real_open(file, *args, **kwargs)

        def fake_read_bytes(self):
            if self == path:
                raise error(self)
            return real_read_bytes(self)

        def fake_iterdir(self):
            if self == path:
                raise error(self)
            return real_iterdir(self)

        monkeypatch.setattr(data_module, "open", fake_open, raising=False)
        monkeypatch.setattr(Path, "read_bytes", fake_read_bytes)
        monkeypatch.setattr(Path, "iterdir", fake_iterdir)

    return deny


def one_line(info: pytest.ExceptionInfo, *parts: str) -> None:
    """The error is one line naming every part (paths, values)."""
    message = str(info.value)
    assert "\n" not in message and all(part in message for part in parts), message


# ---------------------------------------------------------------------------------------------
# digits and splits


def test_digits_split_sizes_deterministic_and_disjoint():
    cfg = DataConfig(dataset="digits", val_fraction=0.1, test_fraction=0.2, split_seed=3)
    data = load_dataset(cfg)
    n_test = round(0.2 * 1797)
    n_val = round(0.1 * (1797 - n_test))
    assert (len(data.train), len(data.val), len(data.test)) == (1797 - n_test - n_val, n_val, n_test)
    assert data.image_shape == (1, 8, 8) and data.num_classes == 10 and data.train.max_value == 16
    assert data.train.x.dtype == torch.uint8 and data.train.y.dtype == torch.int64
    assert int(data.train.x.max()) == 16 and not data.is_binary
    floats = data.train.to_float()
    assert floats.dtype == torch.float32 and floats.min() >= 0 and floats.max() == 1

    again = load_dataset(cfg)
    assert torch.equal(again.train.x, data.train.x) and torch.equal(again.test.y, data.test.y)
    other = load_dataset(DataConfig(dataset="digits", split_seed=4))
    assert not torch.equal(other.test.x, data.test.x)

    # Disjoint and complete: every image of the source lands in exactly one split.
    rows = torch.cat([s.x.flatten(1) for s in (data.train, data.val, data.test)])
    from sklearn.datasets import load_digits

    source = torch.from_numpy(load_digits().images.reshape(-1, 64).astype(np.uint8))
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, source.tolist()))


def test_split_that_leaves_a_part_empty_is_an_error(tmp_path):
    np.savez(tmp_path / "tiny.npz", x=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(VaekitError, match="too few"):
        load_dataset(DataConfig(dataset=str(tmp_path / "tiny.npz")))
    with pytest.raises(VaekitError, match="val_fraction"):
        load_dataset(DataConfig(dataset="digits", val_fraction=1.5))


def test_unknown_dataset():
    with pytest.raises(VaekitError, match="unknown dataset 'cifar'.*digits, mnist"):
        load_dataset(DataConfig(dataset="cifar"))


# ---------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("nested", [False, True])
def test_idx_round_trip(tmp_path, gz, nested):
    folder = tmp_path / "mnist" if nested else tmp_path
    arrays = write_idx_dataset(folder, n_train=20, n_test=5, gz=gz)
    data = load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path), val_fraction=0.25))
    assert (len(data.train), len(data.val), len(data.test)) == (15, 5, 5)
    assert data.image_shape == (1, 4, 5) and data.train.max_value == 255
    assert data.train.x.dtype == torch.uint8 and data.train.y.dtype == torch.int64
    assert data.num_classes == int(max(arrays["train"][1].max(), arrays["test"][1].max())) + 1
    # The official test set is kept as is; train + val is a permutation of the training set.
    assert np.array_equal(data.test.x[:, 0].numpy(), arrays["test"][0])
    assert np.array_equal(data.test.y.numpy(), arrays["test"][1])
    x_train, y_train = arrays["train"]
    pairs = [(xi.tobytes(), int(yi)) for xi, yi in zip(x_train, y_train)]
    loaded = [(xi[0].numpy().tobytes(), int(yi)) for s in (data.train, data.val) for xi, yi in zip(s.x, s.y)]
    assert sorted(loaded) == sorted(pairs)


def test_idx_missing_names_the_fix(tmp_path):
    with pytest.raises(VaekitError, match=r"kmnist not found.*vaekit download kmnist.*--data-dir"):
        load_dataset(DataConfig(dataset="kmnist", data_dir=str(tmp_path)))


def test_idx_found_in_cache(tmp_path):
    write_idx_dataset(tmp_path / "cache" / "kmnist")
    assert len(load_dataset(DataConfig(dataset="kmnist")).test) == 5


def test_data_dir_is_the_only_place_looked_at(tmp_path):
    write_idx_dataset(tmp_path / "cache" / "mnist")  # a cached copy must not stand in for the user's folder
    missing = tmp_path / "nonexistent"
    with pytest.raises(VaekitError, match=rf"^data_dir {missing} does not exist$"):
        load_dataset(DataConfig(dataset="mnist", data_dir=str(missing)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VaekitError, match=r"^mnist not found in data_dir .*lacks train-images-idx3-ubyte\[.gz\]") as e:
        load_dataset(DataConfig(dataset="mnist", data_dir=str(empty)))
    one_line(e, str(empty), str(empty / "mnist"), "t10k-labels-idx1-ubyte[.gz]")
    # Half there: the message names exactly the files that are missing, in the folder that has the rest.
    write_idx_dataset(empty / "mnist")
    for stem in IDX_FILES["test"]:
        (empty / "mnist" / f"{stem}.gz").unlink()
    with pytest.raises(VaekitError, match=rf"{empty / 'mnist'} lacks t10k-images-idx3-ubyte\[.gz\], "
                                          r"t10k-labels-idx1-ubyte\[.gz\] \(also looked in"):
        load_dataset(DataConfig(dataset="mnist", data_dir=str(empty)))
    with pytest.raises(VaekitError, match="data_dir is empty"):
        load_dataset(DataConfig(dataset="mnist", data_dir=""))
    (tmp_path / "file").write_text("")
    with pytest.raises(VaekitError, match=rf"data_dir {tmp_path / 'file'} is not a folder"):
        load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path / "file")))
    # Without data_dir, the cache is still searched.
    assert len(load_dataset(DataConfig(dataset="mnist")).test) == 5


def test_idx_labels_must_cover_every_class(tmp_path):
    labels = np.array([0, 2] * 10, np.uint8)  # class 1 has no image in either set
    cfg = _damage(tmp_path, IDX_FILES["train"][1], idx_bytes(labels))
    (tmp_path / IDX_FILES["test"][1]).write_bytes(idx_bytes(np.array([0, 2, 0, 2, 2], np.uint8)))
    with pytest.raises(VaekitError, match=r"dataset 'mnist': .*1 of the classes 0..2 have no images: 1$"):
        load_dataset(cfg)
    # A class present only in the test set counts.
    (tmp_path / IDX_FILES["test"][1]).write_bytes(idx_bytes(np.array([0, 1, 0, 2, 2], np.uint8)))
    assert load_dataset(cfg).num_classes == 3


def test_idx_unreadable_file_says_why(tmp_path, deny):
    write_idx_dataset(tmp_path)
    path = tmp_path / (IDX_FILES["train"][0] + ".gz")
    deny(path)
    with pytest.raises(VaekitError, match=rf"^{path}: cannot read \(Permission denied\)$"):
        load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path)))


def _damage(tmp_path: Path, stem: str, data: bytes) -> DataConfig:
    write_idx_dataset(tmp_path, gz=False)
    (tmp_path / stem).write_bytes(data)
    return DataConfig(dataset="mnist", data_dir=str(tmp_path))


def test_idx_truncated(tmp_path):
    good = idx_bytes(np.zeros((20, 4, 5), np.uint8))
    with pytest.raises(VaekitError, match="truncated"):
        load_dataset(_damage(tmp_path, IDX_FILES["train"][0], good[:-7]))
    with pytest.raises(VaekitError, match="truncated"):
        load_dataset(_damage(tmp_path, IDX_FILES["train"][0], good[:6]))


def test_idx_wrong_magic(tmp_path):
    labels_as_images = idx_bytes(np.zeros(20, np.uint8))  # magic 2049 where 2051 belongs
    with pytest.raises(VaekitError, match="bad magic number 2049 .expected 2051"):
        load_dataset(_damage(tmp_path, IDX_FILES["train"][0], labels_as_images))


def test_idx_count_mismatch_and_label_range(tmp_path):
    with pytest.raises(VaekitError, match="20 images but .* 19 labels"):
        load_dataset(_damage(tmp_path, IDX_FILES["train"][1], idx_bytes(np.zeros(19, np.uint8))))
    with pytest.raises(VaekitError, match="label 10 is out of range"):
        load_dataset(_damage(tmp_path, IDX_FILES["train"][1], idx_bytes(np.full(20, 10, np.uint8))))


def test_idx_corrupt_gzip(tmp_path):
    write_idx_dataset(tmp_path)
    path = tmp_path / (IDX_FILES["test"][0] + ".gz")
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(VaekitError, match="damaged gzip file .*delete it and download it again"):
        load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path)))


@pytest.mark.skipif(not SYSTEM_DIRS["fashion-mnist"].is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_system_folder():
    data = load_dataset(DataConfig(dataset="fashion-mnist", val_fraction=0.1))
    assert (len(data.train), len(data.val), len(data.test)) == (54000, 6000, 10000)
    assert data.train.x.dtype == torch.uint8 and data.train.x.shape[1:] == (1, 28, 28)
    assert data.num_classes == 10 and data.image_shape == (1, 28, 28)
    assert torch.bincount(data.test.y).tolist() == [1000] * 10


# ---------------------------------------------------------------------------------------------
# .npz


def test_npz_uint8_and_labels(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (30, 6, 7), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(30) % 4)
    data = load_dataset(DataConfig(dataset=str(tmp_path / "d.npz"), val_fraction=0.2, test_fraction=0.2))
    assert (len(data.train), len(data.val), len(data.test)) == (19, 5, 6)
    assert data.image_shape == (1, 6, 7) and data.num_classes == 4 and data.train.max_value == 255
    assert data.train.x.dtype == torch.uint8 and data.train.y.dtype == torch.int64


def test_npz_float_channels_first_unlabelled(tmp_path):
    x = (np.random.default_rng(0).random((20, 3, 4, 4)) > 0.5).astype(np.float64)
    np.savez_compressed(tmp_path / "d.npz", x=x)
    data = load_dataset(DataConfig(dataset=str(tmp_path / "d.npz")))
    assert data.image_shape == (3, 4, 4) and data.num_classes == 0 and data.train.y is None
    assert data.train.x.dtype == torch.float32 and data.train.max_value == 1.0 and data.is_binary


def test_npz_int64_pixels_in_range_are_fine(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.full((20, 4, 4), 200, np.int64))
    assert load_dataset(DataConfig(dataset=str(tmp_path / "d.npz"))).train.x.dtype == torch.uint8


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"y": np.zeros(5)}, "no array 'x'"),
        ({"x": np.zeros((5, 4), np.uint8)}, "expected .N, H, W. or .N, C, H, W."),
        ({"x": np.full((5, 2, 2), np.nan)}, "NaN or infinite"),
        ({"x": np.full((5, 2, 2), np.inf)}, "NaN or infinite"),
        ({"x": np.full((5, 2, 2), 1.5)}, r"\[0, 1\]"),
        ({"x": np.full((5, 2, 2), 256, np.int32)}, "0..255"),
        ({"x": np.full((5, 2, 2), -1, np.int32)}, "0..255"),
        ({"x": np.zeros((5, 2, 2), np.uint8), "y": np.zeros(4, np.int64)}, "5 images but y 4 labels"),
        ({"x": np.zeros((5, 4, 4), np.uint8), "y": np.full(5, -5)},
         r"labels must be -1 \(unknown\) or 0..K-1, found -5"),
        ({"x": np.zeros((5, 2, 2), np.uint8), "y": np.zeros(5)}, "integer array of labels"),
        ({"x": np.zeros((0, 2, 2), np.uint8)}, "empty"),
        ({"x": np.zeros((5, 2, 2), np.complex64)}, "dtype complex64"),
        ({"x": np.full((5, 3, 4, 4), np.nan, np.float32)}, "NaN or infinite"),
        ({"x": np.full((5, 1, 4, 4), -np.inf, np.float32)}, "NaN or infinite"),
        ({"x": np.full((5, 3, 4, 4), -0.5, np.float32)}, r"\[0, 1\], found \[-0.5, -0.5\]"),
        ({"x": np.full((5, 3, 4, 4), 300, np.uint16)}, "0..255, found 300..300"),
        ({"x": np.zeros((6, 4, 4), np.uint8), "y": np.array([0, 1000] * 3)},
         r"labels must be 0..K-1 .*999 of the classes 0..1000 have no images: 1, 2, 3, 4, 5, \.\.\.$"),
        ({"x": np.zeros((6, 4, 4), np.uint8), "y": np.array([0, 3, -1] * 2)},
         r"2 of the classes 0..3 have no images: 1, 2$"),
        ({"x": np.zeros((6, 4, 4), np.uint8), "y": np.array([2**63 + 5] * 6, np.uint64)}, f"found {2**63 + 5}"),
    ],
)
def test_npz_errors(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(VaekitError, match=message) as info:
        load_dataset(DataConfig(dataset=str(path)))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_npz_missing_and_invalid(tmp_path):
    with pytest.raises(VaekitError, match="no such file"):
        load_dataset(DataConfig(dataset=str(tmp_path / "absent.npz")))
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(VaekitError, match=r"text.npz: not a valid .npz file \(not a zip archive\)$") as info:
        load_dataset(DataConfig(dataset=str(tmp_path / "text.npz")))
    assert "pickle" not in str(info.value)  # np.load's guess for anything not .npy or zip
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(VaekitError, match=r"empty.npz: not a valid .npz file \(empty\)$"):
        load_dataset(DataConfig(dataset=str(tmp_path / "empty.npz")))
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(VaekitError, match=r"folder.npz: cannot read \(Is a directory\)$"):
        load_dataset(DataConfig(dataset=str(tmp_path / "folder.npz")))
    with open(tmp_path / "array.npz", "wb") as f:  # a bare .npy under an .npz name
        np.save(f, np.zeros((5, 2, 2), np.uint8))
    with pytest.raises(VaekitError, match="not an .npz archive"):
        load_dataset(DataConfig(dataset=str(tmp_path / "array.npz")))


def test_npz_unreadable_file_says_why(tmp_path, deny):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((20, 4, 4), np.uint8))
    deny(path)
    with pytest.raises(VaekitError, match=rf"^{path}: cannot read \(Permission denied\)$"):
        load_dataset(DataConfig(dataset=str(path)))


@pytest.mark.parametrize(
    "shape, image_shape",
    [((20, 5, 6), (1, 5, 6)), ((20, 1, 5, 6), (1, 5, 6)), ((20, 3, 5, 6), (3, 5, 6)), ((20, 3, 28, 28), (3, 28, 28))],
)
def test_npz_accepted_layouts(tmp_path, shape, image_shape):
    np.savez(tmp_path / "d.npz", x=np.zeros(shape, np.uint8))
    data = load_dataset(DataConfig(dataset=str(tmp_path / "d.npz")))
    assert data.image_shape == image_shape and data.train.x.shape[1:] == image_shape


@pytest.mark.parametrize(
    "shape, message",
    [
        ((20, 2, 8, 8), r"2 channels, expected \(N, C, H, W\) with C = 1 \(grayscale\) or 3 \(RGB\)"),
        ((20, 4, 8, 8), r"4 channels, expected .*C = 1 \(grayscale\) or 3 \(RGB\)"),
        ((20, 5, 16, 16), r"5 channels, expected .*C = 1 \(grayscale\) or 3 \(RGB\)"),
        ((20, 16, 16, 4), r"looks channels-last \(N, H, W, C\): transpose to \(N, C, H, W\)"),
        ((20, 28, 28, 3), r"looks channels-last \(N, H, W, C\): transpose to \(N, C, H, W\)"),
        ((20, 28, 28, 1), r"looks channels-last \(N, H, W, C\): transpose to \(N, C, H, W\)"),
        ((20, 3, 3), r"images are 3x3 .*too small, need at least 4x4"),
        ((20, 1, 2, 8), r"images are 2x8 .*too small, need at least 4x4"),
    ],
)
def test_npz_refused_layouts(tmp_path, shape, message):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros(shape, np.uint8))
    with pytest.raises(VaekitError, match=message) as info:
        load_dataset(DataConfig(dataset=str(path)))
    one_line(info, str(path), *([str(shape)] if "channel" in message else []))  # the shape as given


def test_npz_unknown_labels_are_minus_one(tmp_path):
    x = np.zeros((30, 4, 4), np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([-1, 0, 1, 2, -1, 2] * 5, np.int8))
    data = load_dataset(DataConfig(dataset=str(tmp_path / "d.npz")))
    y = torch.cat([data.train.y, data.val.y, data.test.y])
    assert data.num_classes == 3 and y.dtype == torch.int64
    assert sorted(y.tolist()) == sorted([-1, 0, 1, 2, -1, 2] * 5)

    np.savez(tmp_path / "d.npz", x=x, y=np.full(30, -1))  # labelled, but no label is known
    data = load_dataset(DataConfig(dataset=str(tmp_path / "d.npz")))
    assert data.num_classes == 0 and data.train.y is not None and (data.train.y == -1).all()

    np.savez(tmp_path / "d.npz", x=x, y=np.full(30, 4))  # one class (4 of 0..4 present: an error)
    with pytest.raises(VaekitError, match="4 of the classes 0..4 have no images: 0, 1, 2, 3$"):
        load_dataset(DataConfig(dataset=str(tmp_path / "d.npz")))
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(30, np.uint8))  # one class: valid data, K = 1
    assert load_dataset(DataConfig(dataset=str(tmp_path / "d.npz"))).num_classes == 1


def test_path_that_is_no_dataset(tmp_path):
    with pytest.raises(VaekitError, match=rf"^{tmp_path / 'images'}: no such file or folder$"):
        load_dataset(DataConfig(dataset=str(tmp_path / "images")))
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(VaekitError, match=rf"^{tmp_path / 'x.png'}: not a dataset: use a .npz file or an image folder"):
        load_dataset(DataConfig(dataset=str(tmp_path / "x.png")))


# ---------------------------------------------------------------------------------------------
# Image folders


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_flat_grayscale(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(10):
        gray = rng.integers(0, 256, (6, 5), dtype=np.uint8)
        # Stored as RGB with R = G = B: still grayscale content, so C = 1.
        _save(tmp_path / f"{i}.png", np.stack([gray] * 3, -1) if i % 2 else gray)
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_dataset(DataConfig(dataset=str(tmp_path), val_fraction=0.2, test_fraction=0.2))
    assert (len(data.train), len(data.val), len(data.test)) == (6, 2, 2)
    assert data.image_shape == (1, 6, 5) and data.num_classes == 0 and data.train.y is None
    assert data.train.x.dtype == torch.uint8 and data.train.max_value == 255


def test_image_folder_class_subfolders_and_colour(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "ant", "bee"):
        for i in range(4):
            _save(tmp_path / cls / f"{i}.png", rng.integers(0, 256, (4, 4), dtype=np.uint8))
    _save(tmp_path / "bee" / "colour.bmp", np.zeros((4, 4, 3), np.uint8) + np.array([255, 0, 0], np.uint8))
    data = load_dataset(DataConfig(dataset=str(tmp_path), val_fraction=0.2, test_fraction=0.2))
    assert data.image_shape == (3, 4, 4) and data.num_classes == 3
    labels = torch.cat([data.train.y, data.val.y, data.test.y])
    assert torch.bincount(labels).tolist() == [4, 5, 4]  # ant, bee (+ the colour image), cat: sorted names
    red = [x for s in (data.train, data.val, data.test) for x in s.x if x[0].min() == 255 and x[1].max() == 0]
    assert len(red) == 1


def test_image_folder_errors(tmp_path):
    with pytest.raises(VaekitError, match="no images"):
        load_dataset(DataConfig(dataset=str(tmp_path)))
    for i in range(3):
        _save(tmp_path / f"{i}.png", np.zeros((4, 4), np.uint8))
    _save(tmp_path / "9.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(VaekitError, match=r"9.png is 4x5 but .*0.png is 4x4"):
        load_dataset(DataConfig(dataset=str(tmp_path)))
    (tmp_path / "9.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(VaekitError, match=r"9.png: cannot read image"):
        load_dataset(DataConfig(dataset=str(tmp_path)))


def test_image_folder_loose_images_next_to_class_folders_is_an_error(tmp_path):
    for path in ("a/0.png", "a/1.png", "b/0.png", "loose0.png", "loose1.jpg"):
        _save(tmp_path / path, np.zeros((4, 4), np.uint8))
    with pytest.raises(VaekitError, match=rf"^{tmp_path}: 2 loose image\(s\) next to the subfolder\(s\) a, b: move"):
        load_dataset(DataConfig(dataset=str(tmp_path)))


def test_image_folder_unlabelled_subfolder(tmp_path):
    rng = np.random.default_rng(0)
    counts = {"a": 3, "b": 2, "unlabelled": 4, "Unlabeled": 1}
    for folder, n in counts.items():
        for i in range(n):
            _save(tmp_path / folder / f"{i}.png", rng.integers(0, 256, (4, 4), dtype=np.uint8))
    data = load_dataset(DataConfig(dataset=str(tmp_path), val_fraction=0.2, test_fraction=0.2))
    labels = torch.cat([data.train.y, data.val.y, data.test.y])
    assert data.num_classes == 2 and labels.dtype == torch.int64  # unlabelled/ is no class
    assert sorted(labels.tolist()) == [-1] * 5 + [0] * 3 + [1] * 2

    # Only images of unknown class: labelled data without a known label.
    for folder in ("a", "b"):
        for f in (tmp_path / folder).iterdir():
            f.unlink()
        (tmp_path / folder).rmdir()
    data = load_dataset(DataConfig(dataset=str(tmp_path), val_fraction=0.2, test_fraction=0.2))
    assert data.num_classes == 0 and (torch.cat([data.train.y, data.val.y, data.test.y]) == -1).all()


def test_image_folder_one_class_and_empty_class(tmp_path):
    for i in range(5):
        _save(tmp_path / "a" / f"{i}.png", np.zeros((4, 4), np.uint8))
    assert load_dataset(DataConfig(dataset=str(tmp_path), val_fraction=0.2, test_fraction=0.2)).num_classes == 1
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("no images here")
    with pytest.raises(VaekitError, match=rf"^{tmp_path / 'b'}: class folder without images"):
        load_dataset(DataConfig(dataset=str(tmp_path)))


def test_image_folder_too_small_and_unreadable(tmp_path, deny):
    for i in range(5):
        _save(tmp_path / f"{i}.png", np.zeros((3, 5), np.uint8))
    with pytest.raises(VaekitError, match=r"images are 3x5 .*too small, need at least 4x4") as info:
        load_dataset(DataConfig(dataset=str(tmp_path)))
    one_line(info, str(tmp_path))
    deny(tmp_path / "2.png")
    with pytest.raises(VaekitError, match=rf"^{tmp_path / '2.png'}: cannot read \(Permission denied\)$"):
        load_dataset(DataConfig(dataset=str(tmp_path)))
    deny(tmp_path)
    with pytest.raises(VaekitError, match=rf"^{tmp_path}: cannot read \(Permission denied\)$"):
        load_dataset(DataConfig(dataset=str(tmp_path)))


# ---------------------------------------------------------------------------------------------
# Batches and binarization


@pytest.mark.parametrize("batch_size", [1, 7, 10, 64])
def test_batches_cover_every_example_once(batch_size):
    x = torch.arange(50).reshape(50, 1, 1, 1)
    y = torch.arange(50) * 2
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):  # two epochs
        seen = [(xb, yb) for xb, yb in batches(x, y, batch_size, shuffle=True, generator=generator)]
        assert all(len(xb) <= batch_size for xb, _ in seen)
        xs = torch.cat([xb.flatten() for xb, _ in seen])
        assert sorted(xs.tolist()) == list(range(50))
        assert torch.equal(torch.cat([yb for _, yb in seen]), xs * 2)  # labels travel with their images
    if batch_size > 1:
        assert not torch.equal(xs, torch.arange(50))  # shuffled
    ordered = torch.cat([xb.flatten() for xb, _ in batches(x, None, batch_size, shuffle=False)])
    assert torch.equal(ordered, torch.arange(50))


def test_batches_drop_last_and_no_labels():
    x = torch.zeros(23, 1, 2, 2)
    sizes = [len(xb) for xb, _ in batches(x, None, 5, shuffle=True, drop_last=True)]
    assert sizes == [5, 5, 5, 5]
    assert all(yb is None for _, yb in batches(x, None, 5, shuffle=False))
    assert [len(xb) for xb, _ in batches(x, None, 5, shuffle=False)] == [5, 5, 5, 5, 3]
    with pytest.raises(VaekitError, match="batch size"):
        next(batches(x, None, 0, shuffle=False))


def test_binarize_static_is_deterministic_and_binary():
    x = torch.rand(200, 1, 8, 8)
    a, b, c = binarize_static(x, 1), binarize_static(x, 1), binarize_static(x, 2)
    assert a.dtype == torch.float32 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert abs(a.mean().item() - x.mean().item()) < 0.02  # a Bernoulli(x) sample: unbiased
    assert torch.equal(binarize_static(torch.ones(3, 1, 2, 2), 0), torch.ones(3, 1, 2, 2))


# ---------------------------------------------------------------------------------------------
# Damaged files only ever raise VaekitError


def _mutate(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    buffer = bytearray(data)
    for position, value in flips:
        buffer[position % len(buffer)] = value
    return bytes(buffer[:cut] if cut is not None else buffer)


_mutations = dict(
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    cut=st.none() | st.integers(0, 400),
    noise=st.none() | st.binary(max_size=300),
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gz=st.booleans(), which=st.integers(0, 3), **_mutations)
def test_damaged_idx_raises_only_vaekit_error(gz, which, flips, cut, noise):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_idx_dataset(folder, gz=gz)
        stem = [s for stems in IDX_FILES.values() for s in stems][which] + (".gz" if gz else "")
        path = folder / stem
        path.write_bytes(noise if noise is not None else _mutate(path.read_bytes(), flips, cut))
        try:
            load_dataset(DataConfig(dataset="mnist", data_dir=tmp, val_fraction=0.2))
        except VaekitError:
            pass


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(compressed=st.booleans(), **_mutations)
def test_damaged_npz_raises_only_vaekit_error(compressed, flips, cut, noise):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.npz"
        save = np.savez_compressed if compressed else np.savez
        save(path, x=np.arange(20 * 16, dtype=np.uint16).astype(np.uint8).reshape(20, 4, 4), y=np.arange(20) % 3)
        path.write_bytes(noise if noise is not None else _mutate(path.read_bytes(), flips, cut))
        try:
            load_dataset(DataConfig(dataset=str(path)))
        except VaekitError:
            pass
