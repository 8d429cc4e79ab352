"""Image datasets: the built-in digits, IDX files (MNIST family), .npz files and image folders.

Every source becomes an `ImageDataset` of three `Split`s whose pixels stay in their stored form
(uint8 levels, or float32 in [0, 1]) until a batch needs floats: Fashion-MNIST is 47 MB as uint8
and would be 188 MB as float32. Also here: the fixed (static) binarization and a device-resident
batch iterator that replaces a DataLoader for data that fits in memory.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import DataConfig
from .errors import VaekitError

NAMED_DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "kmnist")
IDX_NAMED = NAMED_DATASETS[1:]
# The four files of an IDX dataset, as published (optionally without the .gz).
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_CLASSES = 10  # every dataset of the MNIST family has 10 classes
SYSTEM_DIRS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}  # Debian: dataset-fashion-mnist
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# What np.load raises on a damaged or foreign file.
_NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, NotImplementedError,
               struct.error, OverflowError, MemoryError)


@dataclass
class Split:
    """One part of a dataset. x: (N, C, H, W) uint8 levels or float32 in [0, 1]; y: (N,) int64 or None."""

    x: torch.Tensor
    y: torch.Tensor | None
    max_value: float  # the pixel value meaning 1.0: 255 (uint8 images), 16 (sklearn digits), 1.0 (floats)

    def __len__(self) -> int:
        return self.x.shape[0]

    def to_float(self) -> torch.Tensor:
        """(N, C, H, W) float32 intensities in [0, 1]."""
        return self.x.float() / self.max_value


@dataclass
class ImageDataset:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int  # 0 when there are no labels
    image_shape: tuple[int, int, int]  # (C, H, W)

    @property
    def is_binary(self) -> bool:
        """Whether every training pixel is exactly 0 or max_value (then no binarization is needed)."""
        x = self.train.x
        return bool(((x == 0) | (x == self.train.max_value)).all())


def default_cache_dir() -> Path:
    """Where downloads go and named datasets are looked up: $VAEKIT_DATA, else ~/.cache/vaekit."""
    return Path(os.environ.get("VAEKIT_DATA") or Path.home() / ".cache" / "vaekit").expanduser()


def load_dataset(cfg: DataConfig) -> ImageDataset:
    """Load cfg.dataset and split it with cfg.split_seed (see DataConfig for the choices)."""
    name = cfg.dataset
    if name == "digits":
        from sklearn.datasets import load_digits  # imported here: scikit-learn is slow to import

        digits = load_digits()  # 1,797 images, float64 values 0..16
        x = digits.images.astype(np.uint8)[:, None]  # (N, 1, 8, 8)
        return _split_dataset(name, x, digits.target.astype(np.int64), 16.0, cfg)
    if name in IDX_NAMED:
        return _load_idx_dataset(name, cfg)
    path = Path(name).expanduser()
    if name.endswith(".npz"):
        return _split_dataset(name, *_read_npz(path), cfg)
    if path.is_dir():
        x, y, num_classes = _read_image_folder(path)
        return _split_dataset(name, x, y, 255.0, cfg, num_classes)
    raise VaekitError(
        f"unknown dataset '{name}': use one of {', '.join(NAMED_DATASETS)}, a .npz file or an image folder"
    )


def binarize_static(x: torch.Tensor, seed: int) -> torch.Tensor:
    """One fixed Bernoulli sample of intensities x in [0, 1] (same seed, same result); float32 0/1."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return torch.bernoulli(x.float(), generator=generator)


def batches(
    x: torch.Tensor,
    y: torch.Tensor | None,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield (x[idx], y[idx] or None) batches by index gather on x's device, every example once per pass.

    With shuffle, the order is torch.randperm(N, generator=generator) on x's device (so the generator
    must live there too); drop_last drops the final batch when it is smaller than batch_size.
    """
    if batch_size < 1:
        raise VaekitError(f"batch size must be at least 1, got {batch_size}")
    n = x.shape[0]
    if shuffle:
        order = torch.randperm(n, generator=generator, device=x.device)
    else:
        order = torch.arange(n, device=x.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], None if y is None else y[idx]


# ---------------------------------------------------------------------------------------------
# Likelihood targets on the training device

VAL_SEED_OFFSET, TEST_SEED_OFFSET = 2, 3  # fixed binarizations use split_seed + offset


def binarization(binarize: str, likelihood: str, dataset: ImageDataset) -> str:
    """The binarization mode to use ("dynamic", "static" or "none"), after checking that the
    likelihood fits the pixels: Bernoulli needs binary targets, Gaussian on binary ones warns."""
    mode = binarize
    if mode == "auto":
        mode = "dynamic" if likelihood == "bernoulli" else "none"
    if likelihood == "bernoulli" and mode == "none" and not dataset.is_binary:
        raise VaekitError(
            "the Bernoulli likelihood needs binary pixels but this data has grey levels: "
            "use --binarize dynamic or static, or --likelihood gaussian"
        )
    if likelihood == "gaussian" and (mode != "none" or dataset.is_binary):
        warnings.warn("a Gaussian likelihood on binary pixels: the Bernoulli likelihood is the one that fits", stacklevel=2)
    return mode


@dataclass
class DeviceData:
    """Images resident on the training device; a batch is an index gather plus, if dynamic, a fresh
    Bernoulli sample drawn on the device in the same step."""

    x: torch.Tensor  # (N, C, H, W) uint8 levels or float in [0, 1]
    y: torch.Tensor | None  # (N,)
    max_value: float
    dynamic: bool

    def __len__(self) -> int:
        return self.x.shape[0]

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Likelihood targets (B, C, H, W) float in [0, 1] and labels of the examples idx."""
        xb = self.x[idx].float().div_(self.max_value)
        return (torch.bernoulli(xb) if self.dynamic else xb), (None if self.y is None else self.y[idx])


def fixed_targets(split: Split, mode: str, seed: int, device: torch.device | str) -> DeviceData:
    """Images binarized once with a fixed seed (validation and test: evaluation is repeatable)."""
    x = split.to_float()
    if mode != "none":
        x = binarize_static(x, seed)
    return DeviceData(x.to(device), None if split.y is None else split.y.to(device), 1.0, dynamic=False)


def training_targets(split: Split, mode: str, seed: int, device: torch.device | str) -> DeviceData:
    """The training images as stored (uint8 stays uint8), binarized per batch if mode is dynamic."""
    if mode == "static":
        return fixed_targets(split, mode, seed, device)
    y = None if split.y is None else split.y.to(device)
    return DeviceData(split.x.to(device), y, split.max_value, dynamic=mode == "dynamic")


def test_targets(split: Split, split_seed: int, mode: str, device: torch.device | str) -> DeviceData:
    """The evaluation images of a run: binarized once, always with the same seed."""
    return fixed_targets(split, mode, split_seed + TEST_SEED_OFFSET, device)


# ---------------------------------------------------------------------------------------------
# Splits


def _split_dataset(
    name: str,
    x: np.ndarray,
    y: np.ndarray | None,
    max_value: float,
    cfg: DataConfig,
    num_classes: int | None = None,
    test: tuple[np.ndarray, np.ndarray] | None = None,
) -> ImageDataset:
    """Seeded split of (x (N, C, H, W), y (N,)) into train/val[/test]; `test` if the source has one.

    Without a given test set, round(test_fraction * N) images are held out for testing first; then
    round(val_fraction * remaining) of the rest for validation.
    """
    for field in ("val_fraction", "test_fraction"):
        if not 0 <= getattr(cfg, field) < 1:
            raise VaekitError(f"{field} must be in [0, 1), got {getattr(cfg, field)}")
    order = np.random.default_rng(cfg.split_seed).permutation(len(x))
    n_test = 0 if test is not None else round(cfg.test_fraction * len(x))
    n_val = round(cfg.val_fraction * (len(x) - n_test))
    parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    # Fancy indexing copies, which also turns read-only buffers (np.frombuffer) into writable arrays.
    splits = {part: _split(x[idx], None if y is None else y[idx], max_value) for part, idx in parts.items()}
    if test is not None:
        splits["test"] = _split(test[0].copy(), test[1], max_value)  # labels are copied to int64
    empty = [part for part in ("train", "val", "test") if len(splits[part]) == 0]
    if empty:
        raise VaekitError(
            f"dataset '{name}' has {len(x)} images: too few for val_fraction={cfg.val_fraction}, "
            f"test_fraction={cfg.test_fraction} (the {' and '.join(empty)} split would be empty)"
        )
    if num_classes is None:
        num_classes = 0 if y is None else int(max(y.max(), -1 if test is None else test[1].max())) + 1
    return ImageDataset(name, splits["train"], splits["val"], splits["test"], num_classes, tuple(x.shape[1:]))


def _split(x: np.ndarray, y: np.ndarray | None, max_value: float) -> Split:
    return Split(torch.from_numpy(x), None if y is None else torch.from_numpy(y.astype(np.int64)), max_value)


# ---------------------------------------------------------------------------------------------
# IDX files (http://yann.lecun.com/exdb/mnist/): big-endian header, then unsigned bytes


def _load_idx_dataset(name: str, cfg: DataConfig) -> ImageDataset:
    files = _find_idx_files(name, cfg)
    (x, y), (x_test, y_test) = (_read_idx_pair(*files[part]) for part in ("train", "test"))
    if x.shape[1:] != x_test.shape[1:]:
        raise VaekitError(f"{files['test'][0]}: images are {x_test.shape[1:]}, training images {x.shape[1:]}")
    # The official test set is kept; validation is a seeded part of the training set.
    return _split_dataset(name, x, y, 255.0, cfg, test=(x_test, y_test))


def _find_idx_files(name: str, cfg: DataConfig) -> dict[str, tuple[Path, Path]]:
    """Search --data-dir (itself, then NAME inside), the cache, then system folders."""
    folders = []
    if cfg.data_dir:
        data_dir = Path(cfg.data_dir).expanduser()
        folders += [data_dir, data_dir / name]
    folders.append(default_cache_dir() / name)
    folders += [SYSTEM_DIRS[name]] if name in SYSTEM_DIRS else []
    for folder in folders:
        found = {part: tuple(_idx_file(folder, stem) for stem in stems) for part, stems in IDX_FILES.items()}
        if all(all(pair) for pair in found.values()):
            return found
    hint = " or `apt-get install dataset-fashion-mnist`" if name == "fashion-mnist" else ""
    raise VaekitError(
        f"{name} not found: looked for {IDX_FILES['train'][0]}[.gz] and the 3 other IDX files in "
        f"{', '.join(map(str, folders))}; run `vaekit download {name}`{hint}, or pass --data-dir FOLDER"
    )


def _idx_file(folder: Path, stem: str) -> Path | None:
    return next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)


def _read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, H, W) uint8 and labels (N,) uint8, checked against each other."""
    images, labels = _read_idx(images_path, 3), _read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise VaekitError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels")
    if len(labels) and labels.max() >= IDX_CLASSES:
        raise VaekitError(f"{labels_path}: label {labels.max()} is out of range 0..{IDX_CLASSES - 1}")
    return images[:, None], labels


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX array of unsigned bytes with `ndim` dimensions (read-only view of the file's bytes)."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as e:
        raise VaekitError(f"{path}: cannot read ({e}); delete it and download it again") from None
    header = 4 * (ndim + 1)
    if len(data) < header:
        raise VaekitError(f"{path}: truncated IDX file ({len(data)} bytes, shorter than its header)")
    magic, *dims = struct.unpack_from(f">{ndim + 1}I", data)
    if magic != 0x800 + ndim:  # 0x08: unsigned bytes; low byte: number of dimensions
        raise VaekitError(f"{path}: bad magic number {magic} (expected {0x800 + ndim}): not an IDX {ndim}-d file")
    if len(data) - header != math.prod(dims):
        raise VaekitError(
            f"{path}: truncated or damaged IDX file: header says {'x'.join(map(str, dims))} = "
            f"{math.prod(dims)} bytes of data but it holds {len(data) - header}"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


# ---------------------------------------------------------------------------------------------
# .npz files


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None, float]:
    """x as (N, C, H, W) uint8 (max 255) or float32 (max 1.0), optional labels y (N,)."""
    if not path.is_file():
        raise VaekitError(f"{path}: no such file")
    try:
        # An open file rather than a path: np.load leaks its own file handle when the zip is damaged.
        with open(path, "rb") as f:
            npz = np.load(f, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):  # a bare .npy array
                raise ValueError("a single .npy array, not an .npz archive with 'x' (and 'y')")
            with npz:
                if "x" not in npz.files:
                    raise VaekitError(f"{path}: no array 'x' (it holds {', '.join(npz.files) or 'nothing'})")
                x, y = npz["x"], npz["y"] if "y" in npz.files else None
    except _NPZ_ERRORS as e:
        raise VaekitError(f"{path}: not a valid .npz file ({type(e).__name__}: {e})") from None

    def bad(problem: str) -> VaekitError:
        return VaekitError(f"{path}: {problem}")

    if x.ndim not in (3, 4):
        raise bad(f"x has shape {x.shape}, expected (N, H, W) or (N, C, H, W)")
    x = x[:, None] if x.ndim == 3 else x
    if x.size == 0:
        raise bad(f"x has shape {x.shape}: the dataset is empty")
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise bad("x contains NaN or infinite values")
        if x.min() < 0 or x.max() > 1:
            raise bad(f"float pixels must lie in [0, 1], found [{x.min():g}, {x.max():g}]")
        x, max_value = x.astype(np.float32, copy=False), 1.0
    elif x.dtype.kind in "ui":
        if x.min() < 0 or x.max() > 255:
            raise bad(f"integer pixels must lie in 0..255, found {x.min()}..{x.max()}")
        x, max_value = x.astype(np.uint8, copy=False), 255.0
    else:
        raise bad(f"x has dtype {x.dtype}: expected uint8 or float in [0, 1]")
    if y is not None:
        if y.dtype.kind not in "ui" or y.ndim != 1:
            raise bad(f"y must be a 1-d integer array of labels, got {y.dtype} with shape {y.shape}")
        if len(y) != len(x):
            raise bad(f"x holds {len(x)} images but y {len(y)} labels")
        if y.min() < 0:
            raise bad(f"labels must be 0 or more, found {y.min()}")
    return x, y, max_value


# ---------------------------------------------------------------------------------------------
# Image folders


def _read_image_folder(root: Path) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Images (N, C, H, W) uint8, labels from class subfolders (sorted names) or None, number of classes.

    Grayscale (C=1) unless some image has colour, then every image is RGB (C=3).
    """
    from PIL import Image

    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    folders = [root / c for c in classes] or [root]
    files = [
        (f, label)
        for label, folder in enumerate(folders)
        for f in sorted(folder.iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
    ]
    if not files:
        raise VaekitError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    images = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                rgb = np.asarray(im.convert("RGB"))  # (H, W, 3)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise VaekitError(f"{f}: cannot read image ({e})") from None
        if images and rgb.shape != images[0].shape:
            h, w, h0, w0 = *rgb.shape[:2], *images[0].shape[:2]
            raise VaekitError(f"{f} is {w}x{h} but {files[0][0]} is {w0}x{h0}: all images must share one size")
        images.append(rgb)
    x = np.stack(images).transpose(0, 3, 1, 2)  # (N, 3, H, W)
    gray = bool((x[:, :1] == x[:, 1:]).all())
    x = np.ascontiguousarray(x[:, :1] if gray else x)
    y = np.array([label for _, label in files], np.int64) if classes else None
    return x, y, len(classes)
