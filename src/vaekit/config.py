"""Configuration: one frozen dataclass per concern, serialized as JSON in the run folder.

CLI flags are generated from these fields (see cli.py), so a flag and its field always agree. A
field's `metadata` carries `help`, `choices` and the valid range (`low`, `high`, `low_open`,
`high_open`); every config checks its own values when it is built (`__post_init__` -> `check`), so
the CLI, the Python API and a config.json read from disk are validated by the same code.
Each model adds its own fields in a dataclass derived from ModelConfig, in its own file (models/).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import VaekitError


def _opt(
    default: Any, help: str, choices: tuple | None = None, *, low: float | None = None, high: float | None = None,
    low_open: bool = False, high_open: bool = False,
) -> Any:
    """A documented field: its help, its choices, and the range [low, high] (open ends with *_open)."""
    if low is not None or high is not None:
        left = "" if low is None else f"{'>' if low_open else '>='} {_num(low)}"
        right = "" if high is None else f"{'<' if high_open else '<='} {_num(high)}"
        help = f"{help}; {' and '.join(s for s in (left, right) if s)}"
    return field(default=default, metadata={"help": help, "choices": choices, "low": low, "high": high,
                                            "low_open": low_open, "high_open": high_open})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _fits(value: Any, hint: Any) -> bool:
    """Whether a value fits a field's type hint (int for float is fine; bool is not a number)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if typing.get_origin(hint) is tuple:
        return isinstance(value, (list, tuple)) and len(value) == len(args) and all(map(_fits, value, args))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


fits = _fits  # public: the same test for the arguments of commands and API calls (options.py)

MAX_SEED = 2**32 - 1  # every consumer takes it: numpy, torch's generators (after x 1_000_003 + salts), scikit-learn
MAX_SIDE = 4096  # the largest image height, width (and channel count) a config may hold


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def check(cfg: Any) -> None:
    """Raise a one-line VaekitError naming the first field of `cfg` whose value has the wrong type,
    is not one of its choices, is not finite, or lies outside its range."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, meta = getattr(cfg, f.name), f.metadata
        name = f"{f.name} ({flag(f.name)})" if "help" in meta else f.name
        if not _fits(value, hints[f.name]):
            raise VaekitError(f"{name} = {_short(value)} is not a valid value (expected {_type_name(hints[f.name])})")
        if meta.get("path") and isinstance(value, (str, os.PathLike)):
            text = os.fspath(value)
            if not str(text).strip() or "\0" in str(text):
                raise VaekitError(f"{name} = {_short(value)} is not a usable path (empty, or holding a NUL character)")
        choices = meta.get("choices")
        if choices and value not in choices:
            raise VaekitError(f"{name} = {value!r} is not a valid value (expected one of {', '.join(map(str, choices))})")
        if isinstance(value, tuple) and ("low" in meta or "high" in meta):  # a range for each entry
            for i, entry in enumerate(value):
                _check_range(f"{name}[{i}]", entry, meta)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        _check_range(name, value, meta)


def _short(value: Any) -> str:
    """repr() of a value, cut to one short line (a user may pass anything)."""
    if isinstance(value, int) and abs(value) >= 10**30:
        return f"an int of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_range(name: str, value: Any, meta: Any) -> None:
    """A number's finiteness and its field's range [low, high] (open ends with *_open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, int) and abs(value) > 2**1000:  # beyond any range, and math.isfinite() overflows
        raise VaekitError(f"{name} = {_short(value)} is out of range")
    if not math.isfinite(value):
        raise VaekitError(f"{name} must be a finite number, got {value}")
    low, high = meta.get("low"), meta.get("high")
    if low is not None and (value <= low if meta.get("low_open") else value < low):
        raise VaekitError(f"{name} must be {'>' if meta.get('low_open') else '>='} {_num(low)}, got {_num(value)}")
    if high is not None and (value >= high if meta.get("high_open") else value > high):
        raise VaekitError(f"{name} must be {'<' if meta.get('high_open') else '<='} {_num(high)}, got {_num(value)}")


def _num(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


class Checked:
    """Mixed into every config: its values are checked when it is built."""

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class DataConfig(Checked):
    """Where images come from and how pixels become likelihood targets."""

    dataset: str = _opt("digits", "digits | mnist | fashion-mnist | kmnist | cifar10 | svhn | FILE.npz | IMAGE_FOLDER")
    data_dir: str | None = _opt(None, "folder holding IDX files (default: the cache, then system datasets)")
    binarize: str = _opt(
        "auto",
        "dynamic: fresh Bernoulli sample each time an image is seen; static: once; none: raw "
        "intensities. auto = dynamic for the Bernoulli likelihood on binary data and on the MNIST family (their recipe), "
        "none for the others; Bernoulli on other grey-level or colour data needs dynamic or static, given",
        ("auto", "dynamic", "static", "none"),
    )
    val_fraction: float = _opt(0.05, "fraction of the training images held out for validation", low=0, high=1,
                               high_open=True)
    test_fraction: float = _opt(0.2, "fraction held out for testing, for sources without a test split", low=0,
                                high=1, high_open=True)
    split_seed: int = _opt(0, "seed of the train/validation/test split and the fixed test binarization", low=0,
                           high=MAX_SEED)
    labels_per_class: int = _opt(
        0, "keep the labels of only this many training images per class (a balanced, seeded subset; the "
        "others become unknown, -1); 0 keeps every known label", low=0, high=2**31)
    label_seed: int | None = _opt(
        None, "seed of which training images keep their labels with --labels-per-class (another draw of the "
        "labelled subset on the same split; default: --split-seed)", low=0, high=MAX_SEED)
    labelled_share: float | None = _opt(
        None, "models trained on labelled and unlabelled images: the share of each batch drawn from the "
        "labelled ones (default: 10 x the labelled fraction of the training images, at most 0.5)", low=0, high=1,
        low_open=True, high_open=True)


@dataclass(frozen=True)
class ModelConfig(Checked):
    """What every model shares: p(x|z...) on conv or MLP bodies and an amortised q(z|x...)."""

    model: str = _opt("vae", "which model (one of vaekit.models.MODELS)")
    arch: str = _opt("conv", "network body: conv, resnet (residual conv blocks, for natural images), or mlp (the classic "
                     "784-400-20 VAE). Unset, --model vae on fashion-mnist takes the gated MLP 2x300, latent 40, 150 "
                     "epochs (the command prints them)", ("conv", "resnet", "mlp"))
    latent_dim: int = _opt(16, "dimension of z", low=1, high=4096)
    width: int = _opt(16, "channels of the first conv layer (doubled at each downsampling)", low=1, high=1024)
    hidden: int = _opt(128, "units of the fully connected hidden layer", low=1, high=65536)
    hidden_layers: int = _opt(1, "fully connected hidden layers of the encoder and of the decoder (--arch mlp --hidden "
                              "300 --hidden-layers 2: the VampPrior paper's MLP)", low=1, high=64)
    gated: bool = _opt(False, "gated hidden layers, h = (W x) * sigmoid(V x) (Dauphin et al. 2017; the VampPrior "
                       "paper's), instead of SiLU(W x)")
    likelihood: str = _opt(
        "auto", "p(x|z): bernoulli (binary pixels), gaussian (real values, fixed --sigma: a density, nats), "
        "logistic-mixture (PixelCNN++'s discretized logistic mixture over 2^--bits levels), discretized-gaussian "
        "(a learned scale per value). auto follows the data and says so: binary pixels or digits/mnist/fashion-mnist/"
        "kmnist (grey levels, binarized by their recipes) -> bernoulli; 8-bit grey or colour -> logistic-mixture; "
        "real values in [0, 1] -> gaussian",
        ("bernoulli", "gaussian", "logistic-mixture", "discretized-gaussian", "auto"),
    )
    bits: int = _opt(8, "levels of the discretized likelihoods: 2^bits per value (8: the 256 of 8-bit images; 5: "
                     "bins of 1/31, 8-bit data floored to 5 bits)", low=1, high=16)
    mixture_components: int = _opt(10, "components of --likelihood logistic-mixture per pixel", low=1, high=256)
    sigma: float = _opt(0.1, "standard deviation of the Gaussian likelihood", low=0, low_open=True)
    # Filled in from the data, not from flags.
    image_shape: tuple[int, int, int] = field(default=(1, 8, 8), metadata={"low": 1, "high": MAX_SIDE})
    num_classes: int = field(default=0, metadata={"low": 0, "high": 65536})


@dataclass(frozen=True)
class TrainConfig(Checked):
    """The objective's knobs and the optimisation loop."""

    epochs: int = _opt(
        0, "passes over the training split; 0 = auto: about 13,200 steps, 10 to 600 epochs "
        "(600 epochs of digits, 16 of Fashion-MNIST at batch 64)", low=0, high=10**7
    )
    batch_size: int = _opt(64, "images per optimisation step", low=1, high=2**24)
    lr: float = _opt(2e-3, "peak Adam learning rate", low=0, low_open=True)
    lr_schedule: str = _opt("cosine", "cosine decay to zero, or constant", ("cosine", "constant"))
    weight_decay: float = _opt(0.0, "AdamW weight decay", low=0)
    beta: float = _opt(1.0, "weight of the KL term (beta-VAE); 1 is the ELBO", low=0)
    free_bits: float = _opt(0.0, "floor, in nats, on each latent dimension's batch-mean KL", low=0)
    kl_warmup: float = _opt(0.0, "epochs over which the KL weight ramps linearly from 0 to beta", low=0)
    init_from: str | None = _opt(
        None, "start from the best weights of this run folder instead of random ones (fine-tuning, e.g. on the "
        "IWAE bound with --train-samples); each of its tensors must fit this model, which may add more (e.g. "
        "--autoregressive), started fresh")
    patience: int | None = _opt(
        None, "stop early when the validation -ELBO (-IWAE_K with --train-samples K) has not improved for this many "
        "epochs (0: never). Unset: with automatic --epochs, a fifth of them (at least 10), so small data stops "
        "when validation stops improving instead of running to the cap; with --epochs given, never", low=0, high=10**7)
    ema: float = _opt(0.0, "decay of an exponential moving average of the weights (e.g. 0.999); 0: off", low=0,
                      high=1, high_open=True)
    seed: int = _opt(0, "seed of initialisation, batching, binarization and sampling", low=0, high=MAX_SEED)
    device: str = _opt("auto", "auto | cpu | cuda | mps", ("auto", "cpu", "cuda", "mps"))
    compile: bool = _opt(False, "torch.compile the training step (CUDA: with CUDA graphs)")
    precision: str = _opt("fp32", "bf16: bfloat16 autocast for the networks (CUDA; CPUs with bf16 units)", ("fp32", "bf16"))
    checkpoint_every: float = _opt(5.0, "minutes between checkpoints within an epoch (one is always written per epoch)",
                                   low=0)
    dist_timeout: float = _opt(300.0, "seconds a process waits for the others (torchrun) before giving up", low=0,
                               low_open=True, high=10**7)
    detect_anomaly: bool = _opt(False, "torch.autograd anomaly detection, to find the operation that made a NaN (slow)")


AUTO_STEPS, MIN_EPOCHS, MAX_EPOCHS = 13200, 10, 600


AUTO_PATIENCE_FRACTION, MIN_PATIENCE = 0.2, 10


def auto_patience(epochs: int) -> int:
    """--patience unset with automatic --epochs: a fifth of the epochs, at least MIN_PATIENCE. The best
    weights (by validation) are what a run keeps, so stopping once validation has stalled that long
    gives the same model as running on, unless validation would have improved again later."""
    return max(MIN_PATIENCE, round(AUTO_PATIENCE_FRACTION * epochs))


def auto_epochs(num_train: int, batch_size: int) -> int:
    """Epochs for --epochs 0: about AUTO_STEPS optimisation steps, between MIN_ and MAX_EPOCHS.

    Small data needs many passes (every pass draws a fresh binarization); large data needs few.
    """
    steps_per_epoch = -(-num_train // batch_size)
    return max(MIN_EPOCHS, min(MAX_EPOCHS, round(AUTO_STEPS / steps_per_epoch)))


C = TypeVar("C")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[C], d: dict, ignore: frozenset[str] = frozenset()) -> C:
    """Build a config from a JSON dict; unknown keys (but those in `ignore`) and invalid values are
    errors (a config from another version, or edited by hand)."""
    if not isinstance(d, dict):
        raise VaekitError(f"{cls.__name__} must be a JSON object, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names - ignore
    if unknown:
        raise VaekitError(f"{cls.__name__} has no field(s) {sorted(unknown)}: written by another vaekit version?")
    kwargs = {k: v for k, v in d.items() if k in names}
    if isinstance(kwargs.get("image_shape"), list):
        kwargs["image_shape"] = tuple(kwargs["image_shape"])
    try:
        return cls(**kwargs)
    except VaekitError as e:
        raise VaekitError(f"{cls.__name__}: {e}") from None
