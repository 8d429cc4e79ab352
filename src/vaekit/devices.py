"""Where a run computes: the device, and the compiled forward and autocast context it trains with."""

from __future__ import annotations

import contextlib

import torch

from .config import TrainConfig
from .errors import VaekitError


def resolve_device(name: str) -> torch.device:
    """auto: CUDA, else MPS, else the CPU; an explicit device that is missing is a VaekitError."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise VaekitError(f"unknown device '{name}': use auto, cpu, cuda or mps")
    if (name == "cuda" and not torch.cuda.is_available()) or (name == "mps" and not mps):
        raise VaekitError(f"--device {name} was asked for but is not available here: use --device cpu or auto")
    return torch.device(name)


def speedups(model: torch.nn.Module, cfg: TrainConfig, device: torch.device
             ) -> tuple[torch.nn.Module, contextlib.AbstractContextManager | None]:
    """(forward to train with, autocast context) for --compile and --precision.

    torch.compile with static shapes (the last, smaller batch compiles once more); on CUDA in
    "reduce-overhead" mode, which replays CUDA graphs. bf16 autocast keeps the parameters, the
    optimizer and the log-likelihood reductions in fp32 (BCE-with-logits autocasts to fp32).
    """
    forward = model
    if cfg.compile:
        forward = torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None, dynamic=False)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else None
    return forward, autocast
