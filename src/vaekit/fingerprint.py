"""What data a run was trained on, and how it was split: a SHA-256 fingerprint, kept in RUN/split.json.

The split is seeded, so appending one image to an .npz reshuffles it: the test split of the run would then
hold training images, and `evaluate` would report them as test numbers. The fingerprint covers the images
and labels as read (before --labels-per-class hides some) and the positions that went into each split;
`evaluate`, `explore`, `report`, `reconstruct`, `m1` and `predict` on the run's own data, and
`train --resume`, refuse with one line when the data no longer gives it. A run without split.json
(vaekit <= 0.2) is not checked.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from .checkpoint import atomic_write
from .errors import VaekitError
from .run_files import read_object

SPLIT = "split.json"


def split_fingerprint(x: np.ndarray, y: np.ndarray | None, parts: dict[str, np.ndarray],
                      test: tuple[np.ndarray, np.ndarray] | None = None) -> str:
    """sha256 over the images x (shape, dtype, bytes), the labels y, the source positions of each split
    and a separate test set (x, y) where the source has one."""
    h = hashlib.sha256()

    def add(name: str, a: np.ndarray | None) -> None:
        if a is None:
            h.update(f"{name}:none;".encode())
            return
        a = np.ascontiguousarray(a)
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(memoryview(a).cast("B"))

    add("x", x)
    add("y", y)
    for name in sorted(parts):
        add(name, np.asarray(parts[name], np.int64))
    if test is not None:
        add("test_x", test[0])
        add("test_y", test[1])
    return h.hexdigest()


def record(run: Path, dataset) -> None:
    """Write RUN/split.json for a run trained on `dataset` (data.ImageDataset)."""
    doc = {"fingerprint": dataset.fingerprint, "dataset": dataset.name,
           "sizes": {"train": len(dataset.train), "val": len(dataset.val), "test": len(dataset.test)}}
    atomic_write(Path(run) / SPLIT, (json.dumps(doc, indent=1) + "\n").encode())


def recorded(run: Path) -> str | None:
    """The fingerprint in RUN/split.json (None for a run written before it existed)."""
    path = Path(run) / SPLIT
    if not path.is_file():
        return None
    doc = read_object(path, {"fingerprint": lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None},
                      "restore it, or delete it to skip this check of the run's data")
    return doc["fingerprint"]


def check(run: Path, dataset) -> None:
    """Refuse, with one line, a dataset that is not the one (or not split as the one) `run` was trained on."""
    expected = recorded(run)
    if expected is None or expected == dataset.fingerprint:
        return
    raise VaekitError(
        f"the data of {run} changed since it was trained: {dataset.name} now gives other images, labels or a "
        f"different split ({SPLIT}: sha256 {expected[:12]}..., now {dataset.fingerprint[:12]}...), so its test "
        "split would hold training images; restore the data the run was trained on (or evaluate a file as a "
        "whole with --data)")
