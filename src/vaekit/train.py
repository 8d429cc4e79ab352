"""The training loop: Adam on the model's loss, validation every epoch, best weights, checkpoints.

    fit -> prepare (data, model, optimizer, the epoch plan), restore or start a TrainState
        -> for each epoch: run_epoch (train_step on each batch), end_epoch (validate, one line
           to metrics.jsonl, checkpoint)
        -> pictures of the best model

The loop knows a model only through the contract in models/base.py: it logs every term the model
returns (a sum and a count per key, all-reduced under DDP) and never names one.

Randomness: the batches of an epoch come from generators seeded by (seed, epoch), the same on every
rank; the noise (dynamic binarization, reparameterization) from torch's global generator seeded
once per rank. A checkpoint saves every rank's generator state and the position in the epoch, so
an interrupted run resumes to exactly the run it would have been.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint as ckpt
from . import distributed
from . import models
from .allocator import keep_freed_memory
from .config import DataConfig, ModelConfig, TrainConfig, auto_epochs
from .data import VAL_SEED_OFFSET, DeviceData, EpochPlan, ImageDataset, binarization, epoch_order, fixed_targets
from .data import load_dataset, test_targets, training_targets
from .errors import Terminated, VaekitError
from .objectives import BOUND_NAMES, selected_bound
from .progress import EpochLines
from .progress import wanted as progress_lines
from .tensorboard import TensorBoardLog

__all__ = ["fit", "epoch_order", "resolve_device", "train_step", "speedups", "validate", "Interrupted"]


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


# ---------------------------------------------------------------------------------------------
# One step, and the sums of what it logs


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor | None,
    knobs: dict, autocast: contextlib.AbstractContextManager | None = None,
) -> dict[str, torch.Tensor]:
    """One Adam step on a batch x: (B, C, H, W), labels y; returns the model's per-example terms,
    detached and not synchronised (reading them is the caller's choice)."""
    with autocast or contextlib.nullcontext():
        terms = model(x, y, **knobs)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    optimizer.step()
    return {k: v.detach() for k, v in terms.items() if k != "loss"}


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


@torch.no_grad()
def validate(model: torch.nn.Module, data: DeviceData, group: distributed.Group, seed: int,
             batch_size: int = 1024) -> dict[str, float | None]:
    """Mean one-sample terms on fixed images with fixed noise (comparable across epochs)."""
    model.eval()
    sums = TermSums()
    with torch.random.fork_rng(devices=[data.x.device] if data.x.is_cuda else []):
        torch.manual_seed(seed + group.rank)
        for idx in torch.arange(len(data), device=data.x.device)[group.rank :: group.world].split(batch_size):
            terms = model(*data.batch(idx))
            sums.add({k: v for k, v in terms.items() if k != "loss"})
    model.train()
    return sums.means(group)


def speedups(model: torch.nn.Module, cfg: TrainConfig, device: torch.device):
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


# ---------------------------------------------------------------------------------------------
# Signals


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


def _interrupted(signum: int, epoch: int, step: int, out: Path) -> Interrupted:
    return Interrupted(
        f"stopped by {signal.Signals(signum).name} in epoch {epoch} after step {step}; checkpoint saved: "
        f"resume with `vaekit train --resume {out}`",
        128 + signum,
    )


def _non_finite(history: torch.Tensor, keys: list[str], epoch: int, first_step: int, out: Path) -> VaekitError:
    """Name the first step and the terms that went non-finite; history rows: the steps' term sums. With
    every term finite, a weight was: the last step's update (its gradient) made it so."""
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


# ---------------------------------------------------------------------------------------------
# What a run holds while it trains, and what a checkpoint restores


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
    averaged: torch.nn.Module  # the EMA of the weights (the model itself without --ema)
    optimizer: torch.optim.Optimizer
    train_data: DeviceData
    val_data: DeviceData
    plan: EpochPlan
    board: TensorBoardLog | None = None  # --tensorboard DIR
    lines: EpochLines | None = None  # off a terminal: a line per epoch (progress.py)

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
            if t.averaged is not t.model:
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
        if t.averaged is not t.model:
            t.averaged.load_state_dict({k[4:]: v for k, v in extra.items() if k.startswith("ema.")})
        return state


def prepare(data_cfg: DataConfig, model_cfg: ModelConfig, cfg: TrainConfig, out: Path,
            group: distributed.Group, fresh: bool = True) -> Training:
    """Load the data, check it against what the model needs, and build the model (a fresh run: from
    --init-from's weights where given) and optimizer."""
    device = group.device
    dataset = load_dataset(data_cfg)
    mode = binarization(data_cfg.binarize, model_cfg.likelihood, dataset)
    cls = models.model_class(model_cfg.model)
    labelled = check_labels(cls, model_cfg.model, dataset)
    facts = {"image_shape": dataset.image_shape, "num_classes": dataset.num_classes,
             "labelled_fraction": 1.0 if labelled is None else len(labelled) / len(dataset.train)}
    names = {f.name for f in dataclasses.fields(model_cfg)}
    model_cfg = replace(model_cfg, **{k: v for k, v in facts.items() if k in names})
    distributed.check_batch_size(cfg.batch_size, group)
    share = data_cfg.labelled_share if labelled is not None else 0.0
    plan = EpochPlan(len(dataset.train), cfg.batch_size, group.world, cfg.seed, labelled, share)
    if cfg.epochs == 0:
        cfg = replace(cfg, epochs=auto_epochs(plan.examples_per_epoch, cfg.batch_size))

    torch.manual_seed(cfg.seed)
    model = models.build(model_cfg)
    if cfg.init_from and fresh:  # a resumed run has its own weights
        new = ckpt.load_weights_of_run(model, model_cfg, Path(cfg.init_from))
        if new and group.is_main:
            modules = sorted({k.split(".")[0] for k in new})
            print(f"vaekit: --init-from {cfg.init_from}: {len(new)} tensors are not in that run and start fresh "
                  f"({', '.join(modules)})", file=sys.stderr)
    model = model.to(device)
    torch.manual_seed(cfg.seed + 7919 * group.rank)  # each rank draws its own noise
    # The fused Adam kernel (CPU and CUDA) updates every parameter in one pass instead of ~10 ops each.
    # Decoupled weight decay (AdamW); a resumed run keeps the setting its checkpoint was written with.
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 decoupled_weight_decay=True, fused=device.type in ("cpu", "cuda"))
    # Polyak averaging: validation, best weights and pictures use the average of the trajectory.
    averaged = copy.deepcopy(model).requires_grad_(False) if cfg.ema > 0 else model
    train_data = training_targets(dataset.train, mode, data_cfg.split_seed + 1, device)
    if cls.labels == "none":  # no label gather per step for a model that ignores them
        train_data = replace(train_data, y=None)
    val_data = fixed_targets(dataset.val, mode, data_cfg.split_seed + VAL_SEED_OFFSET, device)
    return Training(data_cfg, model_cfg, cfg, out, group, dataset, mode, model, averaged, optimizer,
                    train_data, val_data, plan)


def check_labels(cls: type, name: str, dataset: ImageDataset) -> torch.Tensor | None:
    """Check the training labels against what the model needs (its `labels`); for a model trained on
    some labels, return the indices of the labelled training images."""
    if cls.labels == "none":
        return None
    y = dataset.train.y
    if y is None or dataset.num_classes < 2:
        found = "no labels" if y is None or dataset.num_classes == 0 else "labels of only 1 class"
        raise VaekitError(f"--model {name} needs class labels of at least 2 classes, and dataset "
                          f"'{dataset.name}' has {found}")
    known = y >= 0
    partial = [n for n, m in models.MODELS.items() if m.labels == "some"]
    if cls.labels == "all" and not known.all():
        raise VaekitError(f"--model {name} needs every training image labelled, and {int((~known).sum())} of "
                          f"{len(y)} in '{dataset.name}' are unknown (-1): for partly labelled data use "
                          f"--model {' or '.join(partial)}")
    if cls.labels == "some":
        if known.all():
            raise VaekitError(f"--model {name} learns from labelled and unlabelled images, and every training image "
                              f"of '{dataset.name}' is labelled: keep fewer labels (--labels-per-class N)")
        missing = sorted(set(range(dataset.num_classes)) - set(y[known].unique().tolist()))
        if missing:
            raise VaekitError(f"--model {name} needs a labelled training image of every class; classes "
                              f"{', '.join(map(str, missing[:10]))} have none in the training split of '{dataset.name}'")
        return known.nonzero()[:, 0]
    return None


# ---------------------------------------------------------------------------------------------
# The loop


def fit(
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool | None = None,
    pictures: bool = True,
    tensorboard: str | Path | None = None,
) -> Path:
    """Train a model and write its run folder; returns the folder.

    With resume=True the configs are the run's own (api.train reads them from config.json, with the
    epochs and device the user changed). Under torchrun, trains with DDP (see distributed.py).
    Raises Interrupted after SIGINT/SIGTERM, once a checkpoint is written. tensorboard: a folder to log
    each epoch's numbers and samples to as TensorBoard events, too.
    """
    out = Path(out)
    keep_freed_memory()  # steps reuse freed memory instead of faulting it in again (allocator.py)
    group = distributed.setup(resolve_device(train_cfg.device), train_cfg.dist_timeout)
    lock = ckpt.RunLock(out) if group.is_main else contextlib.nullcontext()
    try:
        with lock:
            try:
                board = TensorBoardLog(tensorboard, train_cfg.seed) if tensorboard and group.is_main else None
                try:
                    return _fit(data_cfg, model_cfg, train_cfg, out, group, overwrite, resume, progress, pictures, board)
                finally:
                    if board is not None:
                        board.close()
            except BaseException as e:  # a new run that failed before its first checkpoint gives the old one back
                if group.is_main and ckpt.restore_replaced(out):
                    back = f"the previous run in {out} is back in place"
                    if isinstance(e, VaekitError):
                        raise VaekitError(f"{e}; {back}") from None
                    print(f"vaekit: the new run stopped before its first checkpoint; {back}", file=sys.stderr)
                raise
    except RuntimeError as e:  # only a collective that failed (another rank died or timed out) is reworded
        if group.active and distributed.is_collective_failure(e):
            raise distributed.collective_failed(e) from e
        raise
    finally:
        distributed.teardown()


def _fit(data_cfg, model_cfg, train_cfg, out, group, overwrite, resume, progress, pictures, board=None) -> Path:
    resuming = resume and (out / ckpt.LAST).is_file()
    t = prepare(data_cfg, model_cfg, train_cfg, out, group, fresh=not resuming)
    t.board = board
    t.lines = EpochLines(t.cfg.epochs) if group.is_main and progress_lines(progress) else None
    state = TrainState(best={k: v.detach().clone() for k, v in t.model.state_dict().items()})
    if resuming:
        state = TrainState.restore(t)
        if group.is_main:  # the one writer (another rank deleting would race its writes)
            for tmp in out.glob(".*.tmp"):  # left by a write that was killed halfway
                tmp.unlink(missing_ok=True)
            ckpt.write_metrics(out, [r for r in ckpt.read_metrics(out) if r["epoch"] <= state.epoch])
        if state.epoch >= t.cfg.epochs or state.stalled(t.cfg.patience):
            if group.is_main and not state.stalled(t.cfg.patience):
                print(f"{out} has finished all {t.cfg.epochs} epochs; pass a larger --epochs to train longer")
            finish(t, state, pictures, repair=True)
            return out
    elif group.is_main:
        if resume:  # killed before its first checkpoint: nothing was saved, start again
            ckpt.check_restartable(out)
            ckpt.write_metrics(out, [])
        else:
            ckpt.prepare_run_folder(out, overwrite)
    if group.is_main:
        ckpt.save_config(out, t.data_cfg, t.model_cfg, t.cfg)
        if t.dataset.class_names:  # the classes by name (an image folder's subfolders)
            ckpt.save_class_names(out, t.dataset.class_names)
        if t.plan.labelled is not None:  # exactly which training images were labelled
            ckpt.save_labelled(out, t.dataset.train.index[t.plan.labelled], t.dataset.train.y[t.plan.labelled])
    group.barrier()

    ddp = torch.nn.parallel.DistributedDataParallel(t.model) if group.active else t.model
    forward, autocast = speedups(ddp, t.cfg, group.device)
    show = group.is_main and (progress is None or progress)
    bar = tqdm(total=t.total_steps, initial=state.step, disable=None if show else True, unit="step", dynamic_ncols=True)
    with bar, StopOnSignal() as stop, torch.autograd.set_detect_anomaly(t.cfg.detect_anomaly):
        while state.epoch < t.cfg.epochs and not state.stalled(t.cfg.patience):
            signum, seconds = run_epoch(t, state, forward, autocast, stop, bar)
            end_epoch(t, state, seconds, bar)
            if signum:  # the signal came in the epoch's last step: stop now that the epoch is saved
                raise _interrupted(signum, state.epoch, state.step, out)
    finish(t, state, pictures)
    return out


def run_epoch(t: Training, state: TrainState, forward, autocast, stop: StopOnSignal, bar: tqdm) -> tuple[int, dict]:
    """Train from state.batch to the end of the epoch (or a signal); returns (signal, timing)."""
    start, first, last_save, signum = time.perf_counter(), state.batch, time.monotonic(), 0
    device, group, cfg = t.group.device, t.group, t.cfg
    batches = t.plan.batches(state.epoch + 1, device)
    history: list[torch.Tensor] = []  # per step: the terms' batch sums (K,)
    keys: list[str] = []
    knob_tensors: dict[str, torch.Tensor] = {}  # --compile: 0-d tensors, refilled each step
    while state.batch < t.plan.steps:
        for g in t.optimizer.param_groups:
            g["lr"] = cfg.lr * lr_factor(cfg, state.step, t.total_steps)
        beta = kl_weight(cfg, state.step, t.plan.steps)
        knobs = {"beta": beta, **t.model.knobs(state.step)}
        if cfg.compile:  # tensors, no recompile per value; filled in place: a new CUDA tensor per step
            # would copy from host memory, which waits for the GPU to finish the previous step
            knobs = {k: knob_tensors.setdefault(k, torch.zeros((), device=device)).fill_(v) for k, v in knobs.items()}
        knobs["free_bits"] = cfg.free_bits
        idx = batches[state.batch]
        x, y = t.train_data.batch(idx[group.rank :: group.world] if group.active else idx)
        terms = train_step(forward, t.optimizer, x, y, knobs, autocast)
        if t.averaged is not t.model:  # decay warms up so that short runs average little
            decay = min(cfg.ema, (1 + state.step) / (10 + state.step))
            with torch.no_grad():
                for p_avg, p in zip(t.averaged.parameters(), t.model.parameters()):
                    p_avg.lerp_(p, 1 - decay)
                for b_avg, b in zip(t.averaged.buffers(), t.model.buffers()):  # running statistics: the latest
                    b_avg.copy_(b)
        keys, sums = TermSums.batch_sums(terms)
        state.sums.add(terms, sums)
        history.append(sums)
        state.batch, state.step = state.batch + 1, state.step + 1
        bar.update(1)
        due = time.monotonic() - last_save > 60 * cfg.checkpoint_every
        signum = stop.signum
        if group.active:  # every rank must checkpoint and stop at the same step
            signum, due = (int(v) for v in group.max(torch.tensor([signum, due], device=device)))
        if (signum or due) and state.batch < t.plan.steps:
            check_finite(t, history, keys, state, first)
            state.save(t)
            last_save = time.monotonic()
        if signum and state.batch < t.plan.steps:  # stopped mid-epoch, checkpoint written
            raise _interrupted(signum, state.epoch + 1, state.step, t.out)
    check_finite(t, history, keys, state, first)
    seconds = time.perf_counter() - start
    examples = t.plan.examples_per_epoch * (t.plan.steps - first) / t.plan.steps
    timing = {"knobs": {k: float(v) for k, v in knobs.items() if k != "free_bits"}, "lr": t.optimizer.param_groups[0]["lr"],
              "train_seconds": seconds, "images_per_second": examples / seconds, "start": start}
    return signum, timing


def check_finite(t: Training, history: list[torch.Tensor], keys: list[str], state: TrainState, first: int) -> None:
    """Before a checkpoint and at the epoch's end: the terms of the steps since `first`, then the weights.
    A non-finite gradient shows in the weights first (its step still logged finite terms), so the check
    costs nothing per step and no checkpoint ever holds a non-finite weight."""
    if not history:
        return
    rows = torch.stack(history)  # (S, K)
    if torch.isfinite(rows).all() and torch.stack([torch.isfinite(p).all() for p in t.model.parameters()]).all():
        return
    raise _non_finite(rows, keys, state.epoch + 1, state.step - (state.batch - first), t.out)


def end_epoch(t: Training, state: TrainState, timing: dict, bar: tqdm) -> None:
    """Validate, keep the best weights, write the epoch's metrics line, checkpoint."""
    state.epoch, state.batch = state.epoch + 1, 0
    train_terms = state.sums.means(t.group)
    state.sums.clear()
    val_terms = validate(t.averaged, t.val_data, t.group, seed=t.data_cfg.split_seed)
    state.bound = selected_bound(val_terms)
    if val_terms[state.bound] is not None and val_terms[state.bound] < state.best_val:
        state.best_val, state.best_epoch = val_terms[state.bound], state.epoch
        state.best = {k: v.detach().clone() for k, v in t.averaged.state_dict().items()}
    if t.group.is_main:  # the line first: a resume drops lines past the checkpoint and redoes them
        knobs = timing["knobs"]
        record = {
            "epoch": state.epoch, "step": state.step,
            **{f"train_{k}": v for k, v in train_terms.items()},
            **{f"val_{k}": v for k, v in val_terms.items()},
            "lr": timing["lr"], "kl_weight": knobs.pop("beta"), **knobs,
            "train_seconds": timing["train_seconds"], "images_per_second": timing["images_per_second"],
            "seconds": time.perf_counter() - timing["start"],
        }
        ckpt.append_metrics(t.out, record)
        if t.lines is not None:
            t.lines.epoch(record, state.bound)
        if t.board is not None:
            t.board.epoch(record, t.averaged)
    state.save(t)
    bar.set_postfix(loss=f"{train_terms['neg_elbo']:.2f}", val=f"{val_terms['neg_elbo']:.2f}", refresh=False)


def finish(t: Training, state: TrainState, pictures: bool, repair: bool = False) -> None:
    """Load the best weights; draw the pictures and write report.html (on resume of a finished run: only
    if some are missing)."""
    t.model.load_state_dict(state.best)
    t.model.eval()
    if state.stalled(t.cfg.patience) and t.group.is_main:
        print(f"vaekit: stopped early after epoch {state.epoch} of {t.cfg.epochs}: the validation {BOUND_NAMES[state.bound]} has not "
              f"improved since epoch {state.best_epoch} (--patience {t.cfg.patience})", file=sys.stderr)
    if not (pictures and t.group.is_main):
        return
    from . import plots  # matplotlib is imported only when pictures are drawn
    from . import report

    names = (*plots.picture_names(t.model), report.REPORT)
    if repair and all((t.out / name).is_file() for name in names):
        return
    test = test_targets(t.dataset.test, t.data_cfg.split_seed, t.mode, t.group.device)
    drawn = plots.run_pictures(t.out, t.model, test, t.data_cfg.split_seed)
    try:
        report.write_report(t.out, model=t.model, test=test, shown=t.dataset.test.to_float(), pictures=drawn)
    except VaekitError as e:  # the trained run is saved whole; the report can be written later
        print(f"vaekit: warning: {e}; the run is complete: `vaekit report {t.out}` writes the report", file=sys.stderr)
