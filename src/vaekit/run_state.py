"""What a run holds while it trains, and what a checkpoint restores.

    Training    the fixed parts: configs, data, model, its weight average, optimizer, the epoch plan
    TrainState  where the run is: epoch, batch, step, the best validation bound and its weights, the
                epoch's running sums, every rank's generator state (saved and restored whole)
    TermSums    a sum and a count per logged term, exact across a resume
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import distributed
from .config import DataConfig, ModelConfig, TrainConfig
from .data import DeviceData, EpochPlan, ImageDataset
from .ema import EMA
from .errors import VaekitError
from .progress import EpochLines
from .tensorboard import TensorBoardLog


@dataclass
class TermSums:
    """A sum and a count per logged key (a term of the labelled images only averages over those).

    A step costs one stacked row of batch sums; the rows are folded into the float64 sums only when
    they are read (a checkpoint, the epoch's end), by a sequential cumulative sum on the CPU: the same
    additions in the same order as adding step by step, so a resumed epoch sums exactly as an
    uninterrupted one. Counts are Python ints (a tensor's length needs no device sync)."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # key -> 0-d float64 sum (CPU)
    counts: dict[str, int] = field(default_factory=dict)
    rows: list[torch.Tensor] = field(default_factory=list)  # steps not yet folded: (K,) batch sums of `keys`
    keys: list[str] = field(default_factory=list)

    @staticmethod
    def batch_sums(terms: dict[str, torch.Tensor]) -> tuple[list[str], torch.Tensor]:
        """(sorted keys, (K,) float32 sums over the batch)."""
        keys = sorted(terms)
        if len({terms[k].shape for k in keys}) == 1:  # one reduction for all (a term of some images differs)
            return keys, torch.stack([terms[k].float() for k in keys]).sum(1)
        return keys, torch.stack([terms[k].float().sum() for k in keys])

    def add(self, terms: dict[str, torch.Tensor], sums: torch.Tensor | None = None) -> None:
        """Add a step's per-example terms (or their batch_sums, already taken)."""
        keys = sorted(terms)
        if sums is None:
            sums = self.batch_sums(terms)[1]
        if keys != self.keys:
            self.fold()
            self.keys = keys
        self.rows.append(sums)
        for k in keys:
            self.counts[k] = self.counts.get(k, 0) + terms[k].numel()

    def fold(self) -> None:
        if not self.rows:
            return
        rows = torch.stack(self.rows).double().cpu()  # (S, K)
        start = torch.stack([self.sums.get(k, rows.new_zeros(())).cpu() for k in self.keys])
        for k, total in zip(self.keys, torch.cat([start[None], rows]).cumsum(0)[-1]):
            self.sums[k] = total
        self.rows = []

    def table(self, device: torch.device | str = "cpu") -> tuple[list[str], torch.Tensor | None]:
        """(sorted keys, (K, 2) float64 rows of sum and count): what is all-reduced and checkpointed."""
        self.fold()
        keys = sorted(self.sums)
        if not keys:
            return keys, None
        return keys, torch.stack([torch.stack([self.sums[k], self.sums[k].new_tensor(float(self.counts[k]))])
                                  for k in keys]).to(device)

    @classmethod
    def from_table(cls, keys: list[str], rows: torch.Tensor) -> TermSums:
        return cls({k: row[0].cpu().clone() for k, row in zip(keys, rows)}, {k: int(row[1]) for k, row in zip(keys, rows)})

    def means(self, group: distributed.Group) -> dict[str, float | None]:
        """Every key's mean over all ranks (None where no example had it)."""
        keys, rows = self.table(group.device)
        if rows is None:
            return {}
        return {k: (float(s / c) if c else None) for k, (s, c) in zip(keys, group.sum(rows).tolist())}

    def clear(self) -> None:
        self.sums, self.counts, self.rows, self.keys = {}, {}, [], []


@dataclass
class Training:
    """The fixed parts of a run: configs, data, model, optimizer and the epoch plan."""

    data_cfg: DataConfig
    model_cfg: ModelConfig
    cfg: TrainConfig
    out: Path
    group: distributed.Group
    dataset: ImageDataset
    mode: str  # binarization
    model: torch.nn.Module
    ema: EMA  # the average of the weights (the model itself without --ema)
    optimizer: torch.optim.Optimizer
    train_data: DeviceData
    val_data: DeviceData
    plan: EpochPlan
    board: TensorBoardLog | None = None  # --tensorboard DIR
    lines: EpochLines | None = None  # off a terminal: a line per epoch (progress.py)

    @property
    def averaged(self) -> torch.nn.Module:
        """The weights validation, the best weights and pictures use: the average (--ema) or the model."""
        return self.ema.module

    @property
    def total_steps(self) -> int:
        return self.plan.steps * self.cfg.epochs


@dataclass
class TrainState:
    """Where a run is: `epoch` epochs complete and `batch` batches of the next one done, at global
    `step`; the best validation bound (`bound`: objectives.selected_bound) and its weights; the running sums
    of the epoch; RNG states."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_val: float = math.inf
    best: dict[str, torch.Tensor] = field(default_factory=dict)
    sums: TermSums = field(default_factory=TermSums)
    best_epoch: int = 0
    bound: str = "neg_elbo"

    def stalled(self, patience: int) -> bool:
        """Whether early stopping is due: `patience` epochs (> 0) without a better validation bound."""
        return patience > 0 and self.epoch - self.best_epoch >= patience

    def save(self, t: Training) -> None:
        """Every rank's generator state and the partial epoch sums; then rank 0 writes, atomically."""
        rng = {"cpu": torch.get_rng_state()}
        if t.group.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(t.group.device)
        states = t.group.gather_objects(rng)
        keys, rows = self.sums.table(t.group.device)
        partial = t.group.sum(rows) if rows is not None else []
        if t.group.is_main:
            extra = {f"rng.{r}.{k}": v for r, s in enumerate(states) for k, v in s.items()}
            extra.update({f"sums.{k}": v for k, v in zip(keys, partial)})
            if t.ema.active:
                extra.update({f"ema.{k}": v for k, v in t.averaged.state_dict().items()})
            state = {"epoch": self.epoch, "batch": self.batch, "step": self.step, "best_val": self.best_val,
                     "best_epoch": self.best_epoch, "bound": self.bound, "world": t.group.world}
            ckpt.save_resume_point(t.out, t.model, self.best, t.optimizer, extra, state)

    @classmethod
    def restore(cls, t: Training) -> TrainState:
        """The state in last.safetensors, with the model, optimizer, EMA and RNG put back."""
        best, extra, saved = ckpt.load_resume_point(t.out, t.model, t.optimizer)
        rank = t.group.rank
        try:
            state = cls(saved["epoch"], saved["batch"], saved["step"], saved["best_val"], best,
                        best_epoch=saved.get("best_epoch", saved["epoch"]),  # vaekit <= 0.2: not recorded
                        bound=saved.get("bound", "neg_elbo"))
            extra[f"rng.{rank}.cpu"]
        except KeyError as e:
            raise VaekitError(f"{t.out / ckpt.LAST} lacks {e} in its training state: it cannot be resumed") from None
        if state.bound != t.model.bound:
            raise VaekitError(f"{t.out / ckpt.LAST} keeps the best weights by '{state.bound}', but this model is validated "
                              f"by '{t.model.bound}': it cannot be resumed")
        if saved.get("world", 1) != t.group.world:
            raise VaekitError(f"{t.out} was trained with {saved.get('world', 1)} processes: resume it with as many")
        torch.set_rng_state(extra[f"rng.{rank}.cpu"])
        if t.group.device.type == "cuda" and f"rng.{rank}.cuda" in extra:
            torch.cuda.set_rng_state(extra[f"rng.{rank}.cuda"], t.group.device)
        if state.batch and t.group.is_main:  # the partial sums of the epoch (kept once, on rank 0)
            saved_sums = {k[5:]: v for k, v in extra.items() if k.startswith("sums.")}
            if "sums" in extra:  # vaekit 0.1: (neg_elbo, recon, kl) sums over batch * batch_size images
                count = float(min(state.batch * t.cfg.batch_size, t.plan.examples_per_epoch))
                saved_sums = {k: torch.stack([s, s.new_tensor(count)])
                              for k, s in zip(("neg_elbo", "recon", "kl"), extra["sums"].double())}
            if saved_sums:
                keys = sorted(saved_sums)
                state.sums = TermSums.from_table(keys, torch.stack([saved_sums[k] for k in keys]).to(t.group.device))
        if t.ema.active:
            t.averaged.load_state_dict({k[4:]: v for k, v in extra.items() if k.startswith("ema.")})
        return state

