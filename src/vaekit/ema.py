"""Polyak averaging of the weights (--ema): validation, best weights and pictures use the average."""

from __future__ import annotations

import copy

import torch


class EMA:
    """The exponential moving average of a model's weights; with decay 0, the model itself."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model, self.decay = model, decay
        self.module = copy.deepcopy(model).requires_grad_(False) if decay > 0 else model

    @property
    def active(self) -> bool:
        return self.module is not self.model

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the average towards the weights after optimisation step `step`; the decay warms up as
        (1 + step) / (10 + step), so that short runs average little. Buffers (running statistics) are copied."""
        if not self.active:
            return
        decay = min(self.decay, (1 + step) / (10 + step))
        for p_avg, p in zip(self.module.parameters(), self.model.parameters()):
            p_avg.lerp_(p, 1 - decay)
        for b_avg, b in zip(self.module.buffers(), self.model.buffers()):
            b_avg.copy_(b)
