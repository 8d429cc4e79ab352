"""The arguments of the API calls and commands that are not config fields, checked like config fields.

Each call builds one of these frozen dataclasses from its arguments; `config.check` then holds every
value to its type and range (the metadata `low`/`high` of config.py), so `vaekit.train(..., overwrite="no")`
and `vaekit evaluate RUN --iw-samples 0` are refused by the same code, with one line. A range is one
that the code after it can honour: a count of images that a picture or a decoder pass can hold, a seed
that every generator takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import MAX_SEED, Checked, _opt
from .errors import VaekitError

MAX_IW = 2**20  # importance samples per image
MAX_PICTURE = 4096  # images in one picture (sample, reconstruct, analogy)
MAX_SAMPLES_PER_CLASS = 100_000


def _path(default: Any = None) -> Any:
    return field(default=default, metadata={"path": True})


DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class TrainCall(Checked):
    """vaekit.train's own arguments (the settings are config fields)."""

    out: str | Path = _path()
    overwrite: bool = False
    resume: bool = False
    progress: bool | None = None
    tensorboard: str | Path | None = _path()


@dataclass(frozen=True)
class RunCall(Checked):
    """A call that reads a run folder: vaekit.load, predict, m1."""

    run: str | Path = _path()
    device: str = field(default="cpu", metadata={"choices": DEVICES})


@dataclass(frozen=True)
class EvaluateCall(Checked):
    """vaekit.evaluate's arguments (and `vaekit evaluate`'s flags)."""

    run: str | Path = _path()
    dataset: str | None = _path()
    data: str | Path | None = _path()
    data_dir: str | Path | None = _path()
    iw_samples: int = _opt(1000, "importance samples K", low=1, high=MAX_IW)
    device: str = field(default="auto", metadata={"choices": DEVICES})
    max_batch: int | None = _opt(None, "(image, sample) pairs per decoder pass", low=1, high=2**24)
    samples_per_class: int = _opt(1000, "samples per class judged", low=1, high=MAX_SAMPLES_PER_CLASS)
    limit: int | None = _opt(None, "the first N test images", low=1, high=2**40)
    log: Any = None  # a function of one string, or None
    progress: bool | None = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.log is not None and not callable(self.log):
            raise VaekitError(f"log must be a function of one string, got {type(self.log).__name__}")


@dataclass(frozen=True)
class PictureCall(Checked):
    """`vaekit sample`, `reconstruct` and `analogy`: how many images, and the seed of the draw."""

    n: int = _opt(64, "number of images", low=1, high=MAX_PICTURE)
    seed: int = _opt(0, "seed of the draw", low=0, high=MAX_SEED)


@dataclass(frozen=True)
class ServeCall(Checked):
    """`vaekit explore`'s address."""

    port: int = _opt(8000, "port", low=0, high=65535)


@dataclass(frozen=True)
class M1Call(Checked):
    """`vaekit m1`'s arguments."""

    run: str | Path = _path()
    labels_per_class: int | None = _opt(None, "labels per class", low=1, high=2**31)
    classifier: str = _opt("spreading", "the classifier", ("spreading", "logistic"))
    label_seed: int | None = _opt(None, "seed of which images keep their labels", low=0, high=MAX_SEED)
