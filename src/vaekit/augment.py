"""Augmentation of a classifier's input: random translations of whole images."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(x: torch.Tensor, pixels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image moved by its own whole-pixel offset (dy, dx), each uniform in [-pixels, pixels]; what
    leaves the frame is lost and what enters is 0 (the background of the MNIST family): (B, C, H, W)."""
    if pixels <= 0 or not len(x):
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (pixels, pixels, pixels, pixels))  # (B, C, H + 2p, W + 2p)
    offset = torch.randint(0, 2 * pixels + 1, (2, b), generator=generator, device=x.device)
    rows = offset[0, :, None] + torch.arange(h, device=x.device)  # (B, H): the rows each image keeps
    cols = offset[1, :, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
