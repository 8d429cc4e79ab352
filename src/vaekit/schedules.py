"""The loop's schedules over the global step: the learning rate and the KL weight."""

from __future__ import annotations

import math

from .config import TrainConfig


def lr_factor(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Cosine decay from the peak --lr to 0 over the run (or constant)."""
    if cfg.lr_schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def kl_weight(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """beta, ramped linearly from 0 over the first --kl-warmup epochs."""
    if cfg.kl_warmup <= 0:
        return cfg.beta
    return cfg.beta * min(1.0, (step + 1) / (cfg.kl_warmup * steps_per_epoch))
