"""What stops a run safely: signals (a checkpoint first, then a clear exit) and non-finite numbers
(named, before any checkpoint could hold them)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .errors import Terminated, VaekitError


class Interrupted(Exception):
    """Training stopped by a signal after writing a checkpoint; exit_code = 128 + signal number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopOnSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step; a second signal stops at once."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.signum:
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def interrupted(signum: int, epoch: int, step: int, out: Path) -> Interrupted:
    return Interrupted(
        f"stopped by {signal.Signals(signum).name} in epoch {epoch} after step {step}; checkpoint saved: "
        f"resume with `vaekit train --resume {out}`",
        128 + signum,
    )


def check_finite(history: list[torch.Tensor], keys: list[str], parameters: Iterable[torch.Tensor], epoch: int,
                 first_step: int, out: Path) -> None:
    """Before a checkpoint and at the epoch's end: the terms of the steps since `first_step` (history rows:
    each step's term sums), then the weights. A non-finite gradient shows in the weights first (its step
    still logged finite terms), so the check costs nothing per step and no checkpoint ever holds a
    non-finite weight."""
    if not history:
        return
    rows = torch.stack(history)  # (S, K)
    if torch.isfinite(rows).all() and torch.stack([torch.isfinite(p).all() for p in parameters]).all():
        return
    raise non_finite(rows, keys, epoch, first_step, out)


def non_finite(history: torch.Tensor, keys: list[str], epoch: int, first_step: int, out: Path) -> VaekitError:
    """Name the first step and the terms that went non-finite; with every term finite, a weight was: the last
    step's update (its gradient) made it so."""
    bad = ~torch.isfinite(history)
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        names = [keys[col] for col in bad[row].nonzero()[:, 0].tolist()]
        term = f"the {', '.join(names)} term{'s' if len(names) > 1 else ''}"
    else:
        row, term = len(history) - 1, "a gradient"
    if (out / ckpt.LAST).is_file():
        saved = f"the last good checkpoint (step {ckpt.saved_step(out)}) is kept in {out}"
    else:
        saved = "no checkpoint had been written yet"
    return VaekitError(
        f"{term} became non-finite in epoch {epoch}, step {first_step + row + 1}; {saved}; "
        "try a lower --lr (or --detect-anomaly to find the operation)"
    )
