"""Memory estimates: refuse, with one line, what cannot fit before allocating it.

Every number has a range (config.py, options.py), but products of numbers in range can still ask for
terabytes: a latent of 4096 groups x 4096 categories behind 65536 hidden units, 4096x4096 images in a
config.json, a decoder pass over 2**24 (image, sample) pairs. These estimates are coarse (within a small
factor) and compared with the device's whole memory, so they refuse only what could never fit.
"""

from __future__ import annotations

import math
import os

import torch

from .errors import VaekitError

TRAIN_COPIES = 4  # weights, gradients and Adam's two moments


def device_memory(device: torch.device | str = "cpu") -> int:
    """Bytes of memory of the device: a GPU's own, else the machine's physical memory."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # not POSIX: assume a large machine
        return 2**40


def _size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n / 1e3:.3g} kB"


def check_fits(nbytes: float, what: str, device: torch.device | str = "cpu") -> None:
    """Raise a one-line VaekitError if `what` needs more than the device's memory."""
    have = device_memory(device)
    if nbytes > have:
        raise VaekitError(f"{what} needs about {_size(nbytes)} of memory, more than the {_size(have)} of this "
                          f"{'GPU' if torch.device(device).type == 'cuda' else 'machine'}")


def check_model_size(model_cls: type, cfg) -> None:
    """Build the model on the meta device (no memory) and refuse one whose training state cannot fit."""
    with torch.device("meta"):
        model = model_cls(cfg)
    numel = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    check_fits(4 * TRAIN_COPIES * numel, f"--model {cfg.model} with these settings has {numel:,} parameters: it",)


def pair_bytes(image_shape: tuple[int, ...], width: int = 16) -> int:
    """Rough bytes of the decoder's activations for one (image, sample) pair: a few copies of the
    widest feature map (width channels at full resolution) and of the image."""
    return 4 * 4 * math.prod(image_shape[1:]) * (max(width, 1) + image_shape[0])
