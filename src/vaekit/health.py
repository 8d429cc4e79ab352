"""Runs that fail quietly: posterior collapse, a dead classifier, a loss that never fell.

Each check reads numbers a run already has (an evaluation, or the best epoch's validation terms and
the activity of the test codes) and returns findings: one line each, saying what was seen and what to
try. The CLI prints them after training and after `vaekit evaluate`; the report shows them as a banner
at its top. Thresholds:

    posterior collapse   no active latent axis, or the mean KL(q || p) below KL_COLLAPSE nats per image:
                         q(z|x) is the prior for every image, and the decoder ignores z
    dead classifier      a model that classifies (reports label_error) is no better than chance:
                         label_error >= DEAD_SHARE * (1 - 1/K) for K classes
    flat loss            after at least FLAT_EPOCHS epochs the best validation -ELBO is within
                         FLAT_SHARE of the first epoch's: training did not move the model
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .models.base import axis_size

KL_COLLAPSE = 0.1  # nats per image: a used latent carries several nats on any data set vaekit reads
ACTIVITY = 0.01  # Cov_x(E_q[z_d]) above this: an active unit (Burda et al. 2016)
DEAD_SHARE = 0.95
FLAT_EPOCHS, FLAT_SHARE = 3, 0.001


@dataclass(frozen=True)
class Finding:
    kind: str  # "collapse", "dead-classifier", "flat-loss"
    seen: str  # what the numbers say
    advice: str  # what to try

    def line(self) -> str:
        return f"{self.seen}; {self.advice}"


def axis_activity(codes: torch.Tensor, axis_size: int = 1) -> torch.Tensor:
    """Per latent axis, the variance over images of its posterior mean: codes (N, D) -> (D / axis_size,).

    A Gaussian axis is one dimension (axis_size 1); a categorical variable of K categories is K
    consecutive dimensions (its one-hot mean), whose variances add up."""
    codes = codes.detach().double()
    if len(codes) < 2:
        return torch.zeros(codes.shape[1] // axis_size, dtype=torch.float64)
    return codes.var(0, unbiased=True).view(-1, axis_size).sum(-1)


def active_units(codes: torch.Tensor, axis_size: int = 1) -> int:
    return int((axis_activity(codes, axis_size) > ACTIVITY).sum())


def check(numbers: dict, metrics: list[dict] | None = None, num_classes: int = 0) -> list[Finding]:
    """Findings from a run's numbers: `kl` (nats per image), `active_units` of `latent_axes`, `label_error`
    (models that classify), and the epochs' metrics (for a flat loss). Missing numbers are not checked."""
    found = []
    kl, active, axes = numbers.get("kl"), numbers.get("active_units"), numbers.get("latent_axes")
    if isinstance(kl, (int, float)) and isinstance(active, int) and (active == 0 or kl < KL_COLLAPSE):
        of = f" of {axes}" if isinstance(axes, int) else ""
        found.append(Finding(
            "collapse", f"posterior collapse: KL {kl:.3f} nats per image, {active}{of} active units (q(z|x) is "
            "the prior, the decoder ignores z)",
            "try --kl-warmup 100 (the KL weight ramps up over 100 epochs) or --free-bits 0.5, or a smaller --lr"))
    error = numbers.get("label_error")
    if num_classes >= 2 and isinstance(error, (int, float)) and error >= DEAD_SHARE * (1 - 1 / num_classes):
        found.append(Finding(
            "dead-classifier", f"dead classifier: label error {error:.3f}, chance is {1 - 1 / num_classes:.3f} "
            f"for {num_classes} classes",
            "try more labels (--labels-per-class), a larger --alpha, or more --epochs"))
    found += flat_loss(metrics or [])
    return found


def flat_loss(metrics: list[dict]) -> list[Finding]:
    values = [m.get("val_neg_elbo") for m in metrics]
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if len(values) < FLAT_EPOCHS:
        return []
    first, best = values[0], min(values)
    if first - best > FLAT_SHARE * max(abs(first), 1.0):
        return []
    return [Finding("flat-loss", f"flat loss: the validation -ELBO went from {first:.3f} to at best {best:.3f} "
                    f"nats in {len(values)} epochs", "try another --lr (e.g. 10x smaller), or check the data")]


def training_numbers(model, metrics: list[dict], x: torch.Tensor, y: torch.Tensor | None) -> dict:
    """The numbers check() reads, for a run without an evaluation: the best epoch's validation KL and
    label error, and the active units of the codes of images x (the test images)."""
    numbers: dict = {}
    scored = [m for m in metrics if isinstance(m.get("val_neg_elbo"), (int, float))]
    if scored:
        best = min(scored, key=lambda m: m["val_neg_elbo"])
        numbers.update({k: best.get(f"val_{k}") for k in ("kl", "label_error") if best.get(f"val_{k}") is not None})
    with torch.no_grad():
        codes = model.encode(x[:2000], None if y is None else y[:2000])
    size = axis_size(model)
    numbers["active_units"] = active_units(codes, size)
    numbers["latent_axes"] = codes.shape[1] // size
    return numbers
