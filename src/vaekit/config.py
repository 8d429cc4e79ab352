"""Configuration: one frozen dataclass per concern, serialized as JSON in the run folder.

CLI flags are generated from these fields (see cli.py), so a flag and its field always agree.
A field's `metadata` may carry `help` and `choices`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import VaekitError


def _opt(default: Any, help: str, choices: tuple | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how pixels become likelihood targets."""

    dataset: str = _opt("digits", "digits | mnist | fashion-mnist | kmnist | FILE.npz | IMAGE_FOLDER")
    data_dir: str | None = _opt(None, "folder holding IDX files (default: the cache, then system datasets)")
    binarize: str = _opt(
        "auto",
        "dynamic: fresh Bernoulli sample each time an image is seen; static: once; none: raw "
        "intensities. auto = dynamic for the Bernoulli likelihood, none for the Gaussian",
        ("auto", "dynamic", "static", "none"),
    )
    val_fraction: float = _opt(0.05, "fraction of the training images held out for validation")
    test_fraction: float = _opt(0.2, "fraction held out for testing, for sources without a test split")
    split_seed: int = _opt(0, "seed of the train/validation/test split and the fixed test binarization")


@dataclass(frozen=True)
class ModelConfig:
    """The generative model p(x|z[,c]) p(z) and the inference network q(z|x[,c])."""

    model: str = _opt("vae", "vae | cvae (conditional on the class label)", ("vae", "cvae"))
    arch: str = _opt("conv", "network body: conv, or mlp (the classic 784-400-20 VAE)", ("conv", "mlp"))
    latent_dim: int = _opt(16, "dimension of z")
    width: int = _opt(16, "channels of the first conv layer (doubled at each downsampling)")
    hidden: int = _opt(128, "units of the fully connected hidden layer")
    likelihood: str = _opt(
        "bernoulli", "bernoulli (BCE, binary pixels) or gaussian (MSE, fixed sigma)", ("bernoulli", "gaussian")
    )
    sigma: float = _opt(0.1, "standard deviation of the Gaussian likelihood")
    class_prior: bool = _opt(True, "cvae: a learned Gaussian prior p(z|c) per class (--no-class-prior: p(z) = N(0, I))")
    # Filled in from the data, not from flags.
    image_shape: tuple[int, int, int] = (1, 8, 8)
    num_classes: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """The objective's knobs and the optimisation loop."""

    epochs: int = _opt(
        0, "passes over the training split; 0 = auto: about 13,200 steps, 10 to 600 epochs "
        "(600 epochs of digits, 16 of Fashion-MNIST at batch 64)"
    )
    batch_size: int = _opt(64, "images per optimisation step")
    lr: float = _opt(2e-3, "peak Adam learning rate")
    lr_schedule: str = _opt("cosine", "cosine decay to zero, or constant", ("cosine", "constant"))
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    beta: float = _opt(1.0, "weight of the KL term (beta-VAE); 1 is the ELBO")
    free_bits: float = _opt(0.0, "floor, in nats, on each latent dimension's batch-mean KL")
    kl_warmup: float = _opt(0.0, "epochs over which the KL weight ramps linearly from 0 to beta")
    ema: float = _opt(0.0, "decay of an exponential moving average of the weights (e.g. 0.999); 0: off")
    seed: int = _opt(0, "seed of initialisation, batching, binarization and sampling")
    device: str = _opt("auto", "auto | cpu | cuda | mps", ("auto", "cpu", "cuda", "mps"))
    compile: bool = _opt(False, "torch.compile the training step (CUDA: with CUDA graphs)")
    precision: str = _opt("fp32", "bf16: bfloat16 autocast for the networks (CUDA; CPUs with bf16 units)", ("fp32", "bf16"))
    checkpoint_every: float = _opt(5.0, "minutes between checkpoints within an epoch (one is always written per epoch)")
    dist_timeout: float = _opt(300.0, "seconds a process waits for the others (torchrun) before giving up")
    detect_anomaly: bool = _opt(False, "torch.autograd anomaly detection, to find the operation that made a NaN (slow)")


AUTO_STEPS, MIN_EPOCHS, MAX_EPOCHS = 13200, 10, 600


def auto_epochs(num_train: int, batch_size: int) -> int:
    """Epochs for --epochs 0: about AUTO_STEPS optimisation steps, between MIN_ and MAX_EPOCHS.

    Small data needs many passes (every pass draws a fresh binarization); large data needs few.
    """
    steps_per_epoch = -(-num_train // batch_size)
    return max(MIN_EPOCHS, min(MAX_EPOCHS, round(AUTO_STEPS / steps_per_epoch)))


C = TypeVar("C")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's type hint (int for float is fine; bool is not a number)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if typing.get_origin(hint) is tuple:
        return isinstance(value, (list, tuple)) and len(value) == len(args) and all(map(_fits, value, args))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def from_dict(cls: type[C], d: dict) -> C:
    """Build a config from a JSON dict; unknown keys, values of the wrong type and values outside a
    field's choices are errors (a config from another version, or edited by hand)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise VaekitError(f"{cls.__name__} has no field(s) {sorted(unknown)}: written by another vaekit version?")
    hints = typing.get_type_hints(cls)
    for name, value in d.items():
        choices = fields[name].metadata.get("choices")
        if not _fits(value, hints[name]) or (choices and value not in choices):
            hint = hints[name]
            expected = f"one of {', '.join(choices)}" if choices else hint.__name__ if isinstance(hint, type) else hint
            raise VaekitError(f"{cls.__name__}.{name} = {value!r} is not a valid value (expected {expected})")
    kwargs = dict(d)
    if "image_shape" in kwargs:
        kwargs["image_shape"] = tuple(kwargs["image_shape"])
    return cls(**kwargs)
