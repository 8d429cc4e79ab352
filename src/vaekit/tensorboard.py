"""`vaekit train --tensorboard DIR`: the numbers of each epoch's metrics line and a grid of samples, also
written as TensorBoard events (an optional extra: pip install 'vaekit[tensorboard]')."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import VaekitError
from .grids import sample_grid


class TensorBoardLog:
    """A SummaryWriter on DIR; epoch() logs one metrics line (step = the epoch) and samples of the model."""

    def __init__(self, folder: str | Path, seed: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise VaekitError("--tensorboard needs the tensorboard package: pip install 'vaekit[tensorboard]' "
                              "(or pip install tensorboard)") from None
        try:
            self.writer = SummaryWriter(log_dir=str(folder))
        except OSError as e:
            raise VaekitError(f"--tensorboard {folder}: {e.strerror or e}") from None
        self.seed = seed

    def epoch(self, record: dict, model: torch.nn.Module) -> None:
        epoch = record["epoch"]
        for key, value in record.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key.replace("_", "/", 1) if key.startswith(("train_", "val_")) else key,
                                       value, epoch)
        training = model.training
        # Samples from a generator of their own: the training run's noise stays what it would have been.
        with torch.random.fork_rng(devices=[d for d in {p.device for p in model.parameters()} if d.type == "cuda"]):
            torch.manual_seed(self.seed)
            picture = np.asarray(sample_grid(model.eval()))
        model.train(training)
        self.writer.add_image("samples", picture, epoch, dataformats="HW" if picture.ndim == 2 else "HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
