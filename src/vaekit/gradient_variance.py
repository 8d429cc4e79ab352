"""How noisy a gradient estimator is: independent draws of the gradient of a model's training loss
on one fixed batch, and their variance and bias against a reference.

    variance  = E ||g - E[g]||^2          the trace of the estimator's covariance (sum over parameters)
    bias      = ||E[g] - g_ref||           against a reference, e.g. the mean of many unbiased draws

Used by benchmarks/gradient_variance.py and the tests of the categorical VAE's estimators.
"""

from __future__ import annotations

import torch


def gradient_draws(model: torch.nn.Module, params: list[torch.nn.Parameter], x: torch.Tensor, draws: int,
                   seed: int = 0, **knobs) -> torch.Tensor:
    """`draws` independent gradients of model(x, **knobs)["loss"] with respect to `params`: (draws, P).

    The model's buffers (e.g. a moving-average baseline that forward() updates) are restored after
    every draw, so all draws see the same model."""
    model.train()
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    rows = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in range(draws):
            loss = model(x, **knobs)["loss"]
            grads = torch.autograd.grad(loss, params)
            rows.append(torch.cat([g.reshape(-1) for g in grads]).double())
            with torch.no_grad():
                for name, b in model.named_buffers():
                    b.copy_(buffers[name])
    return torch.stack(rows)


def variance(draws: torch.Tensor) -> float:
    """E ||g - E[g]||^2 of draws (N, P), unbiased over the N draws."""
    return float(draws.var(0, unbiased=True).sum())


def bias(draws: torch.Tensor, reference: torch.Tensor) -> float:
    """||mean(draws) - reference||."""
    return float((draws.mean(0) - reference).norm())
