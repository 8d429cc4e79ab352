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
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import DataConfig
from .distributed import padded_order
from .errors import VaekitError
from .fingerprint import split_fingerprint

NAMED_DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "kmnist", "cifar10", "svhn")
IDX_NAMED = NAMED_DATASETS[1:4]
# Grey-level data sets that vaekit models binarized, as the literature does (dynamic binarization by default).
BINARIZED_RECIPES: tuple[str, ...] = NAMED_DATASETS[:4]
# CIFAR-10's binary version (no pickle): in cifar-10-binary.tar.gz, under cifar-10-batches-bin/, files of
# records of 1 label byte and 3072 pixel bytes (1024 red, then green, then blue, each row by row).
CIFAR_ARCHIVE, CIFAR_FOLDER = "cifar-10-binary.tar.gz", "cifar-10-batches-bin"
CIFAR_FILES = {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)}
CIFAR_RECORD = 1 + 3 * 32 * 32
# SVHN's cropped digits, MATLAB v5 files: X (32, 32, 3, N) uint8, y (N, 1) in 1..10 (10: the digit 0).
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
# The four files of an IDX dataset, as published (optionally without the .gz).
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_CLASSES = 10  # every dataset of the MNIST family has 10 classes
SYSTEM_DIRS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}  # Debian: dataset-fashion-mnist
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
UNLABELLED_DIRS = ("unlabelled", "unlabeled")  # image-folder subfolders of images whose label is unknown
UNKNOWN = -1  # the label of an image whose class is not known (semi-supervised data)
MIN_SIZE = 4  # the smallest image height and width the networks take
CHANNELS = (1, 3)  # grayscale or RGB
# What np.load raises on a damaged or foreign file.
_NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, NotImplementedError,
               struct.error, OverflowError, MemoryError)


@dataclass
class Split:
    """One part of a dataset. x: (N, C, H, W) uint8 levels or float32 in [0, 1]; y: (N,) int64 (-1: unknown) or None."""

    x: torch.Tensor
    y: torch.Tensor | None
    max_value: float  # the pixel value meaning 1.0: 255 (uint8 images), 16 (sklearn digits), 1.0 (floats)
    index: torch.Tensor | None = None  # (N,) each image's position in its source (its file, or its IDX file)

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
    num_classes: int  # 0 when there are no labels, or only unknown (-1) ones
    image_shape: tuple[int, int, int]  # (C, H, W)
    fingerprint: str = ""  # sha256 of the images, labels and split (fingerprint.py)
    class_names: list[str] | None = None  # an image folder's class subfolders (label k: the k-th name)

    @property
    def is_binary(self) -> bool:
        """Whether every training pixel is exactly 0 or max_value (then no binarization is needed)."""
        x = self.train.x
        return bool(((x == 0) | (x == self.train.max_value)).all())


def default_cache_dir() -> Path:
    """Where downloads go and named datasets are looked up: $VAEKIT_DATA, else ~/.cache/vaekit."""
    return Path(os.environ.get("VAEKIT_DATA") or Path.home() / ".cache" / "vaekit").expanduser()


def load_dataset(cfg: DataConfig, whole: bool = False) -> ImageDataset:
    """Load cfg.dataset and split it with cfg.split_seed (see DataConfig for the choices). whole: a .npz
    file or an image folder is read for evaluation in full, and its splits may be empty (a file of a
    few images has none to hold out)."""
    name = cfg.dataset
    if name == "digits":
        from sklearn.datasets import load_digits  # imported here: scikit-learn is slow to import

        digits = load_digits()  # 1,797 images, float64 values 0..16
        x = digits.images.astype(np.uint8)[:, None]  # (N, 1, 8, 8)
        return _split_dataset(name, x, digits.target.astype(np.int64), 16.0, cfg)
    if name in IDX_NAMED:
        return _load_idx_dataset(name, cfg)
    if name in ("cifar10", "svhn"):
        train, test = (_load_cifar10 if name == "cifar10" else _load_svhn)(_named_folders(name, cfg), name)
        if train[0].shape[1:] != test[0].shape[1:]:
            raise VaekitError(f"{name}: test images are {test[0].shape[1:]}, training images {train[0].shape[1:]}")
        return _split_dataset(name, *train, 255.0, cfg, test=test)  # the official test set is kept
    path = Path(name).expanduser()
    if name.endswith(".npz"):
        return _split_dataset(name, *_read_npz(path), cfg, whole=whole)
    if path.is_dir():
        x, y, class_names = _read_image_folder(path)
        dataset = _split_dataset(name, x, y, 255.0, cfg, len(class_names), whole=whole)
        dataset.class_names = class_names or None
        return dataset
    if path.exists():
        raise VaekitError(f"{path}: not a dataset: use a .npz file or an image folder")
    if "/" in name or os.sep in name:
        raise VaekitError(f"{path}: no such file or folder")
    raise VaekitError(
        f"unknown dataset '{name}': use one of {', '.join(NAMED_DATASETS)}, a .npz file or an image folder"
    )


def stored_location(name: str) -> str:
    """A dataset as a run's config.json keeps it: a named one as it is, a file or folder as an absolute path
    (a relative one would name another file, or none, when the run is used from another folder)."""
    if name in NAMED_DATASETS or not name.strip() or "\0" in name:
        return name
    looks_like_path = name.endswith(".npz") or "/" in name or os.sep in name or name.startswith("~")
    if not looks_like_path and not os.path.exists(name):  # an unknown name: load_dataset says so as it is
        return name
    return os.path.abspath(os.path.expanduser(name))


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
# The batches of an epoch


def epoch_order(seed: int, epoch: int, n: int, device: torch.device | str = "cpu", salt: int = 0) -> torch.Tensor:
    """A shuffled order of range(n) for epoch `epoch` (from 1): a function of (seed, epoch, salt) only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch + salt * 7_919_001)
    return torch.randperm(n, generator=generator).to(device)


@dataclass
class EpochPlan:
    """Which training examples form each batch of an epoch, a function of (seed, epoch) only, so that
    an interrupted epoch resumes with the same batches on every rank.

    Without `labelled`: one pass over a shuffled order, padded to a multiple of the world size (the
    DistributedSampler rule). With `labelled` (indices of the images whose label is known, for models
    trained on some labels): every batch mixes round(share * B) labelled images, drawn from a
    reshuffled cycle through the labelled ones, with the rest from one pass over the unlabelled ones.
    A rank takes batch[rank::world]."""

    n: int
    batch_size: int
    world: int = 1
    seed: int = 0
    labelled: torch.Tensor | None = None  # (N_l,) indices
    share: float = 0.5

    def __post_init__(self) -> None:
        if self.labelled is None:
            self.labelled_per_batch, self.pool = 0, torch.arange(self.n)
        else:
            known = torch.zeros(self.n, dtype=torch.bool)
            known[self.labelled] = True
            self.pool = (~known).nonzero()[:, 0]  # the unlabelled images: one pass per epoch
            self.labelled_per_batch = min(self.batch_size - 1, max(1, round(self.share * self.batch_size)))
        per_batch = self.batch_size - self.labelled_per_batch
        padded = len(self.pool) + (-len(self.pool)) % self.world
        self.steps = math.ceil(padded / per_batch)

    @property
    def examples_per_epoch(self) -> int:
        return len(self.pool) + (-len(self.pool)) % self.world + self.steps * self.labelled_per_batch

    def batches(self, epoch: int, device: torch.device | str) -> list[torch.Tensor]:
        """The global batches of epoch `epoch` (from 1), as index tensors on `device`."""
        order = padded_order(self.pool.to(device)[epoch_order(self.seed, epoch, len(self.pool), device)], self.world)
        per_batch = self.batch_size - self.labelled_per_batch
        parts = list(order.split(per_batch))
        if self.labelled_per_batch:
            cycles = math.ceil(len(parts) * self.labelled_per_batch / len(self.labelled))
            stream = torch.cat([self.labelled.to(device)[epoch_order(self.seed, epoch, len(self.labelled), device,
                                                                     salt=1 + i)] for i in range(cycles)])
            parts = [torch.cat([p, l]) for p, l in zip(parts, stream.split(self.labelled_per_batch))]
        return parts


# ---------------------------------------------------------------------------------------------
# Likelihood targets on the training device

VAL_SEED_OFFSET, TEST_SEED_OFFSET = 2, 3  # fixed binarizations use split_seed + offset


def binarization(binarize: str, likelihood: str, dataset: ImageDataset) -> str:
    """The binarization mode to use ("dynamic", "static" or "none"), after checking that the
    likelihood fits the pixels: Bernoulli needs binary targets, Gaussian on binary ones warns."""
    mode = binarize
    if likelihood == "auto":  # not resolved against data (a model config built by hand): vaekit's first default
        likelihood = "bernoulli"
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
        if self.dynamic:  # x ~ Bernoulli(p) as [u < p], u ~ U[0, 1): vectorised, 2.5-3.6x torch.bernoulli on a CPU
            xb = torch.rand_like(xb).lt_(xb)
        return xb, (None if self.y is None else self.y[idx])


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
    whole: bool = False,
) -> ImageDataset:
    """Seeded split of (x (N, C, H, W), y (N,)) into train/val[/test]; `test` if the source has one.

    Without a given test set, round(test_fraction * N) images are held out for testing first; then
    round(val_fraction * remaining) of the rest for validation. Every source passes here, so the
    checks that do not depend on the file format (image size, labels) are made here too.
    """
    for field in ("val_fraction", "test_fraction"):
        if not 0 <= getattr(cfg, field) < 1:
            raise VaekitError(f"{field} must be in [0, 1), got {getattr(cfg, field)}")
    h, w = x.shape[2:]
    if min(h, w) < MIN_SIZE:
        raise VaekitError(
            f"dataset '{name}': images are {h}x{w} (height x width, shape {tuple(x.shape[1:])}): "
            f"too small, need at least {MIN_SIZE}x{MIN_SIZE}"
        )
    if num_classes is None and y is not None:
        num_classes = _num_classes(name, y if test is None else np.concatenate([y, test[1]]))
    order = np.random.default_rng(cfg.split_seed).permutation(len(x))
    n_test = 0 if test is not None else round(cfg.test_fraction * len(x))
    n_val = round(cfg.val_fraction * (len(x) - n_test))
    parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    # Fancy indexing copies, which also turns read-only buffers (np.frombuffer) into writable arrays.
    splits = {part: _split(x[idx], None if y is None else y[idx], max_value, idx) for part, idx in parts.items()}
    if test is not None:  # labels are copied to int64
        splits["test"] = _split(test[0].copy(), test[1], max_value, np.arange(len(test[0])))
    if cfg.labels_per_class and y is not None:
        splits["train"] = keep_labels_per_class(splits["train"], cfg.labels_per_class, label_draw_seed(cfg))
    empty = [part for part in ("train", "val", "test") if len(splits[part]) == 0]
    if empty and not (whole and len(x)):
        raise VaekitError(
            f"dataset '{name}' has {len(x)} images: too few for val_fraction={cfg.val_fraction}, "
            f"test_fraction={cfg.test_fraction} (the {' and '.join(empty)} split would be empty)"
        )
    return ImageDataset(name, splits["train"], splits["val"], splits["test"], num_classes or 0, tuple(x.shape[1:]),
                        split_fingerprint(x, y, parts, test))


def _num_classes(name: str, y: np.ndarray) -> int:
    """K for labels y in 0..K-1 with every class present, and -1 (unknown) allowed; 0 if none is known."""
    if len(y) and y.min() < UNKNOWN:
        raise VaekitError(f"dataset '{name}': labels must be -1 (unknown) or 0..K-1, found {y.min()}")
    present = np.unique(y[y >= 0])
    if not len(present):
        return 0
    k = int(present[-1]) + 1
    if len(present) < k:  # the first few absent classes, without listing 0..K-1 (K may be huge)
        absent = np.setdiff1d(np.arange(min(k, len(present) + 5)), present)[:5].tolist()
        more = ", ..." if k - len(present) > len(absent) else ""
        raise VaekitError(
            f"dataset '{name}': labels must be 0..K-1 with an image for every class, but {k - len(present)} "
            f"of the classes 0..{k - 1} have no images: {', '.join(map(str, absent))}{more}"
        )
    return k


def _split(x: np.ndarray, y: np.ndarray | None, max_value: float, index: np.ndarray) -> Split:
    labels = None if y is None else torch.from_numpy(y.astype(np.int64))
    return Split(torch.from_numpy(x), labels, max_value, torch.from_numpy(np.asarray(index, np.int64)))


def label_draw_seed(cfg: DataConfig) -> int:
    """The seed of the labelled subset: --label-seed, else the split's seed (vaekit 0.2's choice)."""
    return cfg.split_seed if cfg.label_seed is None else cfg.label_seed


def keep_labels_per_class(split: Split, per_class: int, seed: int) -> Split:
    """The split with the labels of only `per_class` images of each class kept (a seeded, balanced
    choice among the known labels; a class with fewer keeps all it has); the others become -1."""
    assert split.y is not None
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    y = torch.full_like(split.y, UNKNOWN)
    for c in split.y[split.y >= 0].unique():
        members = (split.y == c).nonzero()[:, 0]
        keep = members[torch.randperm(len(members), generator=generator)[:per_class]]
        y[keep] = c
    return Split(split.x, y, split.max_value, split.index)


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
    """Search --data-dir (itself, then NAME inside) if given, and only there; else the cache, then system folders."""
    if cfg.data_dir is not None:
        data_dir = Path(cfg.data_dir).expanduser()
        if not str(cfg.data_dir).strip():
            raise VaekitError("data_dir is empty: give the folder holding the IDX files, or leave it out")
        if not data_dir.exists():
            raise VaekitError(f"data_dir {data_dir} does not exist")
        if not data_dir.is_dir():
            raise VaekitError(f"data_dir {data_dir} is not a folder")
        folders = [data_dir, data_dir / name]
    else:
        folders = [default_cache_dir() / name] + ([SYSTEM_DIRS[name]] if name in SYSTEM_DIRS else [])
    found = {}
    for folder in folders:
        found[folder] = {part: tuple(_idx_file(folder, stem) for stem in stems) for part, stems in IDX_FILES.items()}
        if all(all(pair) for pair in found[folder].values()):
            return found[folder]
    if cfg.data_dir is not None:
        # Name what is missing in the folder that holds the most of the four files.
        best = max(folders, key=lambda f: sum(p is not None for pair in found[f].values() for p in pair))
        missing = [f"{stem}[.gz]" for part, stems in IDX_FILES.items()
                   for stem, p in zip(stems, found[best][part]) if p is None]
        raise VaekitError(
            f"{name} not found in data_dir {data_dir}: {best} lacks {', '.join(missing)} (also looked in "
            f"{folders[1] if best == folders[0] else folders[0]}); run `vaekit download {name} --dest FOLDER` "
            "and pass that FOLDER as --data-dir"
        )
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
        data = path.read_bytes()
    except OSError as e:
        raise _cannot_read(path, e) from None
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:  # OSError: gzip.BadGzipFile
            raise VaekitError(f"{path}: damaged gzip file ({e}); delete it and download it again") from None
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
# CIFAR-10 (binary version) and SVHN (.mat): `vaekit download cifar10 | svhn`


def _named_folders(name: str, cfg: DataConfig) -> list[Path]:
    """Where a downloaded dataset may be: --data-dir (itself, then NAME inside) if given, else the cache."""
    if cfg.data_dir is None:
        return [default_cache_dir() / name]
    data_dir = Path(cfg.data_dir).expanduser()
    if not data_dir.is_dir():
        raise VaekitError(f"data_dir {data_dir} {'is not a folder' if data_dir.exists() else 'does not exist'}")
    return [data_dir, data_dir / name]


def _load_cifar10(folders: list[Path], name: str) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """((x, y) train, (x, y) test) from cifar-10-binary.tar.gz (read in place) or its extracted folder."""
    for folder in folders:
        for base in (folder / CIFAR_FOLDER, folder):
            if all((base / f).is_file() for part in CIFAR_FILES.values() for f in part):
                return tuple(_cifar_records([(base / f).read_bytes() for f in CIFAR_FILES[part]], base, CIFAR_FILES[part])
                             for part in ("train", "test"))
        archive = folder / CIFAR_ARCHIVE
        if archive.is_file():
            try:
                with tarfile.open(archive, "r:gz") as tar:  # members are read as bytes: nothing is extracted
                    members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                    missing = [f for part in CIFAR_FILES.values() for f in part if f not in members]
                    if missing:
                        raise VaekitError(f"{archive} lacks {', '.join(missing)}: not CIFAR-10's binary version")
                    return tuple(_cifar_records([tar.extractfile(members[f]).read() for f in CIFAR_FILES[part]],
                                                archive, CIFAR_FILES[part]) for part in ("train", "test"))
            except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
                raise VaekitError(f"{archive}: damaged archive ({e}); delete it and download it again") from None
    raise VaekitError(f"{name} not found: looked for {CIFAR_ARCHIVE} or {CIFAR_FOLDER}/ in "
                      f"{', '.join(map(str, folders))}; run `vaekit download {name}`, or pass --data-dir FOLDER")


def _cifar_records(blobs: list[bytes], where: Path, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Records of 1 label byte + 3072 pixel bytes -> images (N, 3, 32, 32) uint8, labels (N,) int64."""
    for blob, f in zip(blobs, names):
        if len(blob) % CIFAR_RECORD or not blob:
            raise VaekitError(f"{where}: {f} holds {len(blob)} bytes, not a whole number of {CIFAR_RECORD}-byte "
                              "records (1 label byte + 3072 pixel bytes): truncated or not CIFAR-10's binary version")
    records = np.frombuffer(b"".join(blobs), np.uint8).reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= 10:
        raise VaekitError(f"{where}: label {labels.max()} is out of range 0..9: not CIFAR-10's binary version")
    return np.ascontiguousarray(records[:, 1:].reshape(-1, 3, 32, 32)), labels


def _load_svhn(folders: list[Path], name: str) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """((x, y) train, (x, y) test) from train_32x32.mat and test_32x32.mat; label 10 is the digit 0."""
    for folder in folders:
        if all((folder / f).is_file() for f in SVHN_FILES.values()):
            return tuple(_read_svhn(folder / SVHN_FILES[part]) for part in ("train", "test"))
    raise VaekitError(f"{name} not found: looked for {' and '.join(SVHN_FILES.values())} in "
                      f"{', '.join(map(str, folders))}; run `vaekit download {name}`, or pass --data-dir FOLDER")


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))  # MATLAB v5: no pickle
    except (ValueError, OSError, TypeError, NotImplementedError, zlib.error) as e:
        raise VaekitError(f"{path}: not a readable MATLAB v5 file ({e})") from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None or x.ndim != 4 or x.shape[2] != 3 or x.dtype != np.uint8:
        raise VaekitError(f"{path}: expected X of shape (32, 32, 3, N) uint8 and y (N, 1): not SVHN's cropped digits")
    y = y.reshape(-1).astype(np.int64)
    if len(y) != x.shape[3] or (len(y) and (y.min() < 1 or y.max() > 10)):
        raise VaekitError(f"{path}: {x.shape[3]} images and {len(y)} labels in 1..10 expected")
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y % 10  # (N, 3, H, W); 10 -> 0


# ---------------------------------------------------------------------------------------------
# .npz files


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None, float]:
    """x as (N, C, H, W) uint8 (max 255) or float32 (max 1.0), optional labels y (N,) (-1: unknown)."""

    def bad(problem: str) -> VaekitError:
        return VaekitError(f"{path}: {problem}")

    try:
        # An open file rather than a path: np.load leaks its own file handle when the zip is damaged.
        with open(path, "rb") as f:
            # np.load would take anything else for a pickle (and then complain about pickles).
            magic = f.read(6)
            if magic.startswith(b"\x93NUMPY"):
                raise bad("a single .npy array, not an .npz archive with 'x' (and 'y')")
            if magic[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
                raise bad(f"not a valid .npz file ({'empty' if not magic else 'not a zip archive'})")
            f.seek(0)
            with np.load(f, allow_pickle=False) as npz:
                if "x" not in npz.files:
                    raise bad(f"no array 'x' (it holds {', '.join(npz.files) or 'nothing'})")
                x, y = npz["x"], npz["y"] if "y" in npz.files else None
    except _NPZ_ERRORS as e:
        if isinstance(e, OSError) and e.errno is not None:  # the file system's complaint, not the content's
            raise _cannot_read(path, e) from None
        raise bad(f"not a valid .npz file ({type(e).__name__}: {e})") from None

    if x.ndim not in (3, 4):
        raise bad(f"x has shape {x.shape}, expected (N, H, W) or (N, C, H, W)")
    if x.ndim == 4 and x.shape[1] not in CHANNELS:
        c, h, w = x.shape[1:]
        if w in (1, 3, 4) and min(c, h) >= 2 * w:
            raise bad(f"x has shape {x.shape}, which looks channels-last (N, H, W, C): transpose to (N, C, H, W)")
        raise bad(f"x has shape {x.shape}: {c} channels, expected (N, C, H, W) with C = 1 (grayscale) or 3 (RGB)")
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
        if y.dtype == np.uint64 and len(y) and y.max() > np.iinfo(np.int64).max:  # would wrap to negative
            raise bad(f"labels must be -1 (unknown) or 0..K-1 with an image for every class, found {y.max()}")
        y = y.astype(np.int64, copy=False)
    return x, y, max_value


def _cannot_read(path: Path, e: OSError) -> VaekitError:
    """One line for an OSError on a user-given path: the path and the system's reason."""
    if isinstance(e, FileNotFoundError):
        return VaekitError(f"{path}: no such file or folder")
    return VaekitError(f"{path}: cannot read ({e.strerror or e})")


# ---------------------------------------------------------------------------------------------
# Image folders


def _read_image_folder(root: Path) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Images (N, C, H, W) uint8, labels from class subfolders (sorted names) or None, the class names.

    A subfolder named unlabelled (or unlabeled) holds images of unknown class: label -1, not a class.
    Images are either all loose in `root` (no labels) or all in subfolders, never both.
    Grayscale (C=1) unless some image has colour, then every image is RGB (C=3).
    """
    from PIL import Image

    subfolders = [d for d in _listdir(root) if d.is_dir() and not d.name.startswith(".")]
    loose = _images_in(root)
    if subfolders and loose:
        raise VaekitError(
            f"{root}: {len(loose)} loose image(s) next to the subfolder(s) {', '.join(d.name for d in subfolders)}: "
            "move them into a class subfolder (or unlabelled/ if their class is unknown), or remove the subfolders"
        )
    classes = [d for d in subfolders if d.name.lower() not in UNLABELLED_DIRS]
    files = [(f, label) for label, folder in enumerate(classes) for f in _images_in(folder, class_folder=True)]
    files += [(f, UNKNOWN) for d in subfolders if d.name.lower() in UNLABELLED_DIRS for f in _images_in(d)]
    files = files if subfolders else [(f, UNKNOWN) for f in loose]
    if not files:
        raise VaekitError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    images = []
    for f, _ in files:
        try:
            with open(f, "rb") as stream, Image.open(stream) as im:
                rgb = _rgb8(im, f)  # (H, W, 3)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            if isinstance(e, OSError) and e.errno is not None:
                raise _cannot_read(f, e) from None
            raise VaekitError(f"{f}: cannot read image ({e})") from None
        if images and rgb.shape != images[0].shape:
            h, w, h0, w0 = *rgb.shape[:2], *images[0].shape[:2]
            raise VaekitError(f"{f} is {w}x{h} but {files[0][0]} is {w0}x{h0}: all images must share one size")
        images.append(rgb)
    x = np.stack(images).transpose(0, 3, 1, 2)  # (N, 3, H, W)
    gray = bool((x[:, :1] == x[:, 1:]).all())
    x = np.ascontiguousarray(x[:, :1] if gray else x)
    y = np.array([label for _, label in files], np.int64) if subfolders else None
    return x, y, [d.name for d in classes]


def _rgb8(im, path: Path) -> np.ndarray:
    """An image as (H, W, 3) uint8. 16-bit grey levels (mode I;16, or I from a 16-bit PNG) are scaled to
    8 bits (v / 257, rounded): Pillow's convert("RGB") clips them at 255, which turned nearly every pixel white."""
    if im.mode.startswith("I"):
        levels = np.asarray(im).astype(np.int64)
        if levels.size and (levels.min() < 0 or levels.max() > 65535):
            raise VaekitError(f"{path}: {im.mode} pixels must lie in 0..65535 (16-bit), found {levels.min()}..{levels.max()}")
        gray = np.rint(levels / 257).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if im.mode == "F":
        raise VaekitError(f"{path}: floating-point pixels (mode F) are not read: save 8- or 16-bit images")
    return np.asarray(im.convert("RGB"))


def _listdir(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as e:
        raise _cannot_read(folder, e) from None


def _images_in(folder: Path, class_folder: bool = False) -> list[Path]:
    """The image files of `folder` by name; a class folder without any is an error."""
    images = [f for f in _listdir(folder) if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    if class_folder and not images:
        raise VaekitError(f"{folder}: class folder without images ({', '.join(IMAGE_SUFFIXES)}); every class needs one")
    return images
