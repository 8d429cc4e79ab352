"""The training loop: Adam on the model's loss, validation every epoch, best weights, checkpoints.

    fit -> prepare (prepare.py: data, model, optimizer, the epoch plan), restore or start a TrainState
        -> for each epoch: run_epoch (run_step on each batch), log (validate, one line to
           metrics.jsonl, checkpoint)

The loop knows a model only through the contract in models/base.py: it logs every term the model
returns (a sum and a count per key, all-reduced under DDP), never names one, and keeps the best
weights by the term the model declares (`model.bound`). Pictures and the report are drawn by the
caller (api.train), not here.

Randomness: the batches of an epoch come from generators seeded by (seed, epoch), the same on every
rank; the noise (dynamic binarization, reparameterization) from torch's global generator seeded
once per rank. A checkpoint saves every rank's generator state and the position in the epoch, so
an interrupted run resumes to exactly the run it would have been.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint as ckpt
from . import distributed, fingerprint
from .allocator import keep_freed_memory
from .config import DataConfig, ModelConfig, TrainConfig
from .data import DeviceData, epoch_order
from .devices import resolve_device, speedups
from .errors import VaekitError
from .guards import StopOnSignal, check_finite, interrupted
from .objectives import BOUND_NAMES
from .prepare import prepare
from .progress import EpochLines
from .progress import wanted as progress_lines
from .run_state import TermSums, Training, TrainState
from .schedules import kl_weight, lr_factor
from .tensorboard import TensorBoardLog

__all__ = ["fit", "epoch_order", "train_step", "validate"]


def fit(
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool | None = None,
    tensorboard: str | Path | None = None,
    then: Callable[[Path], None] | None = None,
) -> Path:
    """Train a model and write its run folder (configs, weights, checkpoints, metrics); returns the folder.

    With resume=True the configs are the run's own (api.train reads them from config.json, with the
    epochs and device the user changed). Under torchrun, trains with DDP (see distributed.py).
    Raises guards.Interrupted after SIGINT/SIGTERM, once a checkpoint is written. tensorboard: a folder
    to log each epoch's numbers and samples to as TensorBoard events, too. then: what the caller does with
    the trained run while its folder is still locked (api.train: its pictures and report), on rank 0.
    """
    out = Path(out)
    keep_freed_memory()  # steps reuse freed memory instead of faulting it in again (allocator.py)
    group = distributed.setup(resolve_device(train_cfg.device), train_cfg.dist_timeout)
    lock = ckpt.RunLock(out) if group.is_main else contextlib.nullcontext()
    try:
        with lock:
            try:
                return prepare_and_train(data_cfg, model_cfg, train_cfg, out, group, resume, overwrite, progress,
                                         tensorboard, then)
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


def prepare_and_train(data_cfg: DataConfig, model_cfg: ModelConfig, train_cfg: TrainConfig, out: Path,
                      group: distributed.Group, resume: bool, overwrite: bool, progress: bool | None,
                      tensorboard: str | Path | None, then: Callable[[Path], None] | None) -> Path:
    """Prepare the run, train it and hand it to `then` (rank 0), with its TensorBoard log open meanwhile."""
    board = TensorBoardLog(tensorboard, train_cfg.seed) if tensorboard and group.is_main else None
    try:
        t = prepare(data_cfg, model_cfg, train_cfg, out, group, fresh=not (resume and (out / ckpt.LAST).is_file()))
        t.board = board
        t.lines = EpochLines(t.cfg.epochs) if group.is_main and progress_lines(progress) else None
        train(t, resume, overwrite, progress)
        if then is not None and group.is_main:
            then(out)
        return out
    finally:
        if board is not None:
            board.close()


def train(t: Training, resume: bool, overwrite: bool, progress: bool | None) -> Path:
    """The loop over epochs, from a fresh run folder or from its last checkpoint."""
    state = start(t, resume, overwrite)
    ddp = torch.nn.parallel.DistributedDataParallel(t.model) if t.group.active else t.model
    forward, autocast = speedups(ddp, t.cfg, t.group.device)
    show = t.group.is_main and (progress is None or progress)
    bar = tqdm(total=t.total_steps, initial=state.step, disable=None if show else True, unit="step", dynamic_ncols=True)
    with bar, StopOnSignal() as stop, torch.autograd.set_detect_anomaly(t.cfg.detect_anomaly):
        while state.epoch < t.cfg.epochs and not state.stalled(t.cfg.patience):
            signum, timing = run_epoch(t, state, forward, autocast, stop, bar)
            log(t, state, timing, bar)
            if signum:  # the signal came in the epoch's last step: stop now that the epoch is saved
                raise interrupted(signum, state.epoch, state.step, t.out)
    if state.stalled(t.cfg.patience) and t.group.is_main:
        print(f"vaekit: stopped early after epoch {state.epoch} of {t.cfg.epochs}: the validation "
              f"{BOUND_NAMES.get(state.bound, state.bound)} has not improved since epoch {state.best_epoch} "
              f"(--patience {t.cfg.patience})", file=sys.stderr)
    return t.out


def start(t: Training, resume: bool, overwrite: bool) -> TrainState:
    """A fresh state in a prepared run folder, or the state of its last checkpoint (resume)."""
    out, group = t.out, t.group
    state = TrainState(best={k: v.detach().clone() for k, v in t.model.state_dict().items()}, bound=t.model.bound)
    resuming = resume and (out / ckpt.LAST).is_file()
    if resume:  # the data must still be what the run was trained on (and split the same way)
        fingerprint.check(out, t.dataset)
    if resuming:
        state = TrainState.restore(t)
        if group.is_main:  # the one writer (another rank deleting would race its writes)
            for tmp in out.glob(".*.tmp"):  # left by a write that was killed halfway
                tmp.unlink(missing_ok=True)
            ckpt.write_metrics(out, [r for r in ckpt.read_metrics(out) if r["epoch"] <= state.epoch])
        if state.epoch >= t.cfg.epochs or state.stalled(t.cfg.patience):  # finished: nothing to write
            if group.is_main and not state.stalled(t.cfg.patience):
                print(f"{out} has finished all {t.cfg.epochs} epochs; pass a larger --epochs to train longer")
            return state
    if group.is_main and not resuming:
        if resume:  # killed before its first checkpoint: nothing was saved, start again
            ckpt.check_restartable(out)
            ckpt.write_metrics(out, [])
        else:
            ckpt.prepare_run_folder(out, overwrite)
    if group.is_main:
        ckpt.save_config(out, t.data_cfg, t.model_cfg, t.cfg)
        fingerprint.record(out, t.dataset)
        if t.dataset.class_names:  # the classes by name (an image folder's subfolders)
            ckpt.save_class_names(out, t.dataset.class_names)
        if t.plan.labelled is not None:  # exactly which training images were labelled
            ckpt.save_labelled(out, t.dataset.train.index[t.plan.labelled], t.dataset.train.y[t.plan.labelled])
    group.barrier()
    return state


def run_epoch(t: Training, state: TrainState, forward, autocast, stop: StopOnSignal, bar: tqdm) -> tuple[int, dict]:
    """Train from state.batch to the end of the epoch (or a signal); returns (signal, timing)."""
    start_time, first, last_save = time.perf_counter(), state.batch, time.monotonic()
    group, signum = t.group, 0
    batches = t.plan.batches(state.epoch + 1, group.device)
    history: list[torch.Tensor] = []  # per step: the terms' batch sums (K,)
    keys: list[str] = []
    knob_tensors: dict[str, torch.Tensor] = {}  # --compile: 0-d tensors, refilled each step
    while state.batch < t.plan.steps:
        knobs = schedule(t, state, knob_tensors)
        idx = batches[state.batch]
        x, y = t.train_data.batch(idx[group.rank :: group.world] if group.active else idx)
        terms = train_step(forward, t.optimizer, x, y, knobs, autocast)
        t.ema.update(state.step)
        keys, sums = TermSums.batch_sums(terms)
        state.sums.add(terms, sums)
        history.append(sums)
        state.batch, state.step = state.batch + 1, state.step + 1
        bar.update(1)
        due = time.monotonic() - last_save > 60 * t.cfg.checkpoint_every
        signum = stop.signum
        if group.active:  # every rank must checkpoint and stop at the same step
            signum, due = (int(v) for v in group.max(torch.tensor([signum, due], device=group.device)))
        if (signum or due) and state.batch < t.plan.steps:
            check_finite(history, keys, t.model.parameters(), state.epoch + 1, state.step - (state.batch - first), t.out)
            state.save(t)
            last_save = time.monotonic()
        if signum and state.batch < t.plan.steps:  # stopped mid-epoch, checkpoint written
            raise interrupted(signum, state.epoch + 1, state.step, t.out)
    check_finite(history, keys, t.model.parameters(), state.epoch + 1, state.step - (state.batch - first), t.out)
    seconds = time.perf_counter() - start_time
    examples = t.plan.examples_per_epoch * (t.plan.steps - first) / t.plan.steps
    timing = {"knobs": {k: float(v) for k, v in knobs.items() if k != "free_bits"}, "lr": t.optimizer.param_groups[0]["lr"],
              "train_seconds": seconds, "images_per_second": examples / seconds, "start": start_time}
    return signum, timing


def schedule(t: Training, state: TrainState, knob_tensors: dict[str, torch.Tensor]) -> dict:
    """Set this step's learning rate; return the model's knobs: the KL weight (beta), the free-bits floor and
    the model's own schedules (model.knobs)."""
    cfg = t.cfg
    for g in t.optimizer.param_groups:
        g["lr"] = cfg.lr * lr_factor(cfg, state.step, t.total_steps)
    knobs = {"beta": kl_weight(cfg, state.step, t.plan.steps), **t.model.knobs(state.step)}
    if cfg.compile:  # tensors, no recompile per value; filled in place: a new CUDA tensor per step
        # would copy from host memory, which waits for the GPU to finish the previous step
        knobs = {k: knob_tensors.setdefault(k, torch.zeros((), device=t.group.device)).fill_(v) for k, v in knobs.items()}
    knobs["free_bits"] = cfg.free_bits
    return knobs


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


def log(t: Training, state: TrainState, timing: dict, bar: tqdm) -> None:
    """The epoch's end: validate, keep the best weights by the model's bound, write the metrics line, checkpoint."""
    state.epoch, state.batch = state.epoch + 1, 0
    train_terms = state.sums.means(t.group)
    state.sums.clear()
    val_terms = validate(t.averaged, t.val_data, t.group, seed=t.data_cfg.split_seed)
    if state.bound not in val_terms:
        raise VaekitError(f"--model {t.model_cfg.model} is validated by its term '{state.bound}' (its `bound`), but its "
                          f"forward() returned only {', '.join(sorted(val_terms)) or 'no terms'}")
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
    bar.set_postfix(loss=f"{train_terms[state.bound]:.2f}", val=f"{val_terms[state.bound]:.2f}", refresh=False)
