"""The contract every model keeps; the loop, evaluation, pictures and the CLI know models only by it.

A model is an nn.Module in one file of this folder, plus one line in MODELS (models/__init__.py):

    Config: type[ModelConfig]         its frozen config: ModelConfig's shared fields plus its own
    labels: "none" | "all" | "some"   which labels training needs: none (VAE), every image's (CVAE),
                                      or some (M2: y = -1 marks an unknown label)
    num_classes: int                  classes it can draw (0: it draws without a class)
    bound: str                        the per-example term of forward() that validation keeps the best
                                      weights by: "neg_elbo", or e.g. "neg_iwae" for a model trained on
                                      the IWAE bound (the loop refuses a model whose forward lacks it)
    classifies: bool                  whether it has predict_proba(x) -> (B, K), its own q(y|x) (M2):
                                      `vaekit predict` and label_error use it; False for the others
    dataset_defaults (optional)       {dataset: {field: value}}: settings that replace the built-in
                                      defaults on that dataset (under any flag given) unless --arch is
                                      given: the best measured set-up for about 15 minutes on 2 CPU
                                      cores there
    training_defaults(options)        (optional, a staticmethod) {field: value}: settings the model needs
                                      where `options` leave them unset, e.g. a KL warm-up against
                                      posterior collapse; the CLI prints what it added

    forward(x, y, **knobs) -> dict    the training objective of a batch x: (B, C, H, W), labels y: (B,)
                                      or None: "loss" (the scalar to minimise) and per-example terms,
                                      each a 1-d tensor over the examples it is defined on (a term of
                                      the labelled images only has one entry per labelled image). The
                                      loop logs every key, as a sum and a count. Knobs: beta, free_bits
                                      (the loop's KL weight and floor) and those of knobs(step).
    knobs(step) -> dict[str, float]   the model's own schedules at global step `step` (e.g. a temperature);
                                      logged each epoch
    bounds(x, y, num_samples, chunk)  evaluation terms per example, with true samples: "recon" and "kl"
                                      (-ELBO = recon + kl), "nll" (-IWAE with num_samples samples), and
                                      any other per-example number (e.g. "label_error"); a 2-d entry
                                      (B, D) is reported per latent dimension (its column means)
    sample(n, labels=None)            n images in [0, 1]; labels: one int or n ints, for num_classes > 0
    reconstruct(x, y=None)            images in [0, 1]
    encode(x, y=None) -> (B, D)       a point per image (the posterior mean): maps, active units
    decode(z, labels=None, draw=False) images in [0, 1] of latent points z: (B, D): the mean image E[x|z]
                                      (draw=True: an image drawn from p(x|z))
    traversal(z, steps) -> (A, S, D)  latent points that walk each latent axis of one point z: (D,), the
                                      others kept at z's values: a Gaussian dimension over S quantiles
                                      of its prior, a categorical variable over its K categories. Axis
                                      a is column a of bounds()' "kl_per_dim" (to order the rows by KL)
    metrics(context) -> dict          numbers only this model has (e.g. the judge of conditional samples)
    posterior(x, c), prior(c), likelihood(z, c)   (optional) the distributions, for objectives.py's generic
                                      bounds; the loop never calls them
    names (optional)                  {term: what it measures}, over NAMES: e.g. the CVAE's nll is -log p(x|c);
                                      "axis" names one latent axis ("dimension", "variable")
    base_run(cfg), with_base(cfg, base_cfg)   (optional, staticmethods) a run the model is built on (M1+M2: the
                                      VAE of --init-latents): prepare.py checks it was trained on the same
                                      data, puts its model config into cfg by with_base, and its best weights
                                      into the model's `base` submodule
    density (optional)                a sentence, where the bound is a density of something other than the
                                      pixels (M1+M2: the VAE's codes): no bits/dim are reported then
    axis_size (optional)              code dimensions per latent axis (default 1; a categorical variable of K
                                      categories: K); active units and per-axis numbers count axes

encode, decode, sample, reconstruct and traversal follow the caller's grad mode (torch.no_grad() or
not), so gradients reach z or the weights where the caller asks; the pictures, the report and the
explorer call them under torch.no_grad().
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from ..config import ModelConfig
from ..errors import VaekitError

LABEL_NEEDS = ("none", "all", "some")

# What the evaluation terms measure, for a model that draws without a class; a model's `names` replace some.
NAMES = {"neg_elbo": "-ELBO", "recon": "-E_q[log p(x|z)]", "kl": "KL(q(z|x) || p(z))", "nll": "-log p(x)",
         "axis": "dimension"}


def names_of(model) -> dict[str, str]:
    """What each evaluation term of this model measures (NAMES, with the model's own `names`)."""
    return {**NAMES, **getattr(model, "names", {})}


def warmup_epochs(options: dict, epochs: float = 100.0) -> float:
    """A KL warm-up of `epochs` epochs (the VampPrior paper's 100), or a third of a shorter run's --epochs."""
    given = options.get("epochs")
    if isinstance(given, int) and not isinstance(given, bool) and given > 0:
        return float(min(epochs, max(1, given // 3)))
    return epochs


def axis_size(model) -> int:
    """Code dimensions per latent axis of this model (its `axis_size`, default 1)."""
    return int(getattr(model, "axis_size", 1))


@dataclass
class EvalContext:
    """What a model's metrics() may use: the run folder (to cache things in), its dataset (loaded on
    demand), the device, a logger for slow one-off work, and the options of `vaekit evaluate`."""

    run: Path | None
    dataset: Callable[[], Any]
    device: torch.device
    log: Callable[[str], None] | None = None
    samples_per_class: int = 1000


class Model(Protocol):
    Config: ClassVar[type[ModelConfig]]
    labels: ClassVar[str]
    classifies: ClassVar[bool]
    dataset_defaults: ClassVar[dict[str, dict[str, Any]]]
    cfg: ModelConfig

    @property
    def num_classes(self) -> int: ...
    @property
    def bound(self) -> str: ...
    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None, **knobs: Any) -> dict[str, torch.Tensor]: ...
    def knobs(self, step: int) -> dict[str, float]: ...
    def bounds(self, x: torch.Tensor, y: torch.Tensor | None, num_samples: int, chunk: int) -> dict[str, torch.Tensor]: ...
    def sample(self, n: int, labels: Any = None) -> torch.Tensor: ...
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor: ...
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor: ...
    def decode(self, z: torch.Tensor, labels: Any = None, *, draw: bool = False) -> torch.Tensor: ...
    def traversal(self, z: torch.Tensor, steps: int = 9) -> torch.Tensor: ...
    def metrics(self, context: EvalContext) -> dict: ...
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """q(y|x): (B, K); only where `classifies` is True."""


def class_labels(labels: Any, n: int, num_classes: int, device: torch.device) -> torch.Tensor | None:
    """Labels for n images as a (n,) long tensor: one int for all, or n ints; None stays None.

    A model that draws classes (num_classes > 0) needs them; one that does not refuses them."""
    if labels is None:
        if num_classes:
            raise VaekitError("this model draws a class per image: give labels (e.g. --label 7)")
        return None
    if not num_classes:
        raise VaekitError("labels were given but this model draws no classes (train a model that does: see `vaekit train --help`, --model)")
    if isinstance(labels, bool) or not isinstance(labels, (int, list, tuple, torch.Tensor)):
        raise VaekitError(f"labels must be an int or a list of ints, got {type(labels).__name__}")
    try:
        c = torch.as_tensor(labels, device=device)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise VaekitError(f"labels must be an int or a list of ints ({e})") from None
    if c.dtype == torch.bool or c.is_floating_point() or c.is_complex():  # 2.7 would become class 2
        raise VaekitError(f"labels must be whole numbers (class numbers), got {c.dtype} values")
    c = c.long()
    c = c.expand(n) if c.dim() == 0 else c
    if c.shape != (n,):
        raise VaekitError(f"got {c.numel()} labels for {n} samples")
    if n and (c.min() < 0 or c.max() >= num_classes):
        raise VaekitError(f"labels must be in 0..{num_classes - 1}")
    return c


MAX_DRAW = 65536  # images one call draws at once: the decoder's activations of 28x28 images stay near 3 GB


def check_count(n: Any, what: str = "n") -> int:
    """A number of images to draw: an int in 1..MAX_DRAW."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise VaekitError(f"{what} must be a whole number of at least 1, got {n!r}")
    if n > MAX_DRAW:
        raise VaekitError(f"{what} must be at most {MAX_DRAW} (draw more in several calls), got {n}")
    return n


def gaussian_traversal(z: torch.Tensor, steps: int = 9) -> torch.Tensor:
    """Walk each dimension of z: (D,) over `steps` quantiles of N(0, 1) (from 2.5 % to 97.5 %), the
    other dimensions kept: (D, steps, D)."""
    steps = check_count(steps, "steps")
    levels = torch.linspace(0.025, 0.975, steps, dtype=torch.float64)
    values = torch.distributions.Normal(0.0, 1.0).icdf(levels).to(z)  # (S,)
    walk = z.expand(len(z), steps, len(z)).clone()  # (D, S, D)
    axis = torch.arange(len(z), device=z.device)
    walk[axis, :, axis] = values
    return walk
