"""The training loop: Adam on the negative ELBO, validation every epoch, best weights, checkpoints.

    fit -> for each epoch: train_step on each batch (forward, backward, Adam step)
                           validate, one line to metrics.jsonl, checkpoint
        -> pictures of the best model

Randomness: the epoch order comes from a generator seeded by (seed, epoch), the same on every
rank; the noise (dynamic binarization, reparameterization) from torch's global generator seeded
once per rank. A checkpoint saves every rank's generator state and the position in the epoch, so
an interrupted run resumes to exactly the run it would have been.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint as ckpt
from . import distributed
from .config import DataConfig, ModelConfig, TrainConfig, auto_epochs
from .data import DeviceData, binarization, fixed_targets, load_dataset, test_targets, training_targets
from .data import VAL_SEED_OFFSET
from .errors import Terminated, VaekitError
from .models import VAE


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


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, c: torch.Tensor | None,
    beta: float | torch.Tensor, free_bits: float, autocast: contextlib.AbstractContextManager | None = None,
) -> dict[str, torch.Tensor]:
    """One Adam step on a batch x: (B, C, H, W); returns the batch's summed terms and the gradient
    norm, detached and not synchronised (reading them is the caller's choice)."""
    with autocast or contextlib.nullcontext():
        terms = model(x, c, beta=beta, free_bits=free_bits)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)  # measured, not clipped
    optimizer.step()
    return {**{k: v.detach().float().sum() for k, v in terms.items() if k != "loss"}, "grad_norm": grad_norm}


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


TERMS = ("neg_elbo", "recon", "kl")


@torch.no_grad()
def validate(model: VAE, data: DeviceData, group: distributed.Group, seed: int, batch_size: int = 1024) -> dict[str, float]:
    """Mean one-sample -ELBO and its parts on fixed images with fixed noise (comparable across epochs)."""
    model.eval()
    sums = torch.zeros(len(TERMS), device=data.x.device, dtype=torch.float64)
    with torch.random.fork_rng(devices=[data.x.device] if data.x.is_cuda else []):
        torch.manual_seed(seed + group.rank)
        for idx in torch.arange(len(data), device=data.x.device)[group.rank :: group.world].split(batch_size):
            x, c = data.batch(idx)
            terms = model(x, c if model.conditional else None)
            sums += torch.stack([terms[k].sum() for k in TERMS])
    model.train()
    return dict(zip(TERMS, (group.sum(sums) / len(data)).tolist()))


def epoch_order(seed: int, epoch: int, n: int, device: torch.device) -> torch.Tensor:
    """The shuffled order of epoch `epoch` (from 1): a function of (seed, epoch) only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).to(device)


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


def _non_finite(history: torch.Tensor, epoch: int, first_step: int, out: Path) -> VaekitError:
    """Name the first step and term that went non-finite; history rows: (recon, kl, grad norm)."""
    row, col = (int(v) for v in (~torch.isfinite(history)).nonzero()[0])
    term = ("the reconstruction term", "the KL term", "a gradient")[col]
    if (out / ckpt.LAST).is_file():
        saved = f"the last good checkpoint (step {ckpt.saved_step(out)}) is kept in {out}"
    else:
        saved = "no checkpoint had been written yet"
    return VaekitError(
        f"{term} became non-finite in epoch {epoch}, step {first_step + row + 1}; {saved}; "
        "try a lower --lr (or --detect-anomaly to find the operation)"
    )


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
) -> Path:
    """Train a model and write its run folder; returns the folder.

    With resume=True the configs are the run's own (api.train reads them from config.json, with the
    epochs and device the user changed). Under torchrun, trains with DDP (see distributed.py).
    Raises Interrupted after SIGINT/SIGTERM, once a checkpoint is written.
    """
    out = Path(out)
    group = distributed.setup(resolve_device(train_cfg.device), train_cfg.dist_timeout)
    try:
        return _fit(data_cfg, model_cfg, train_cfg, out, group, overwrite, resume, progress, pictures)
    except RuntimeError as e:  # only a collective that failed (another rank died or timed out) is reworded
        if group.active and distributed.is_collective_failure(e):
            raise distributed.collective_failed(e) from e
        raise
    finally:
        distributed.teardown()


def _fit(data_cfg, model_cfg, train_cfg, out, group, overwrite, resume, progress, pictures) -> Path:
    device = group.device
    dataset = load_dataset(data_cfg)
    mode = binarization(data_cfg.binarize, model_cfg.likelihood, dataset)
    if model_cfg.model == "cvae" and dataset.num_classes < 2:
        raise VaekitError(f"--model cvae needs class labels, and dataset '{data_cfg.dataset}' has none")
    model_cfg = replace(model_cfg, image_shape=dataset.image_shape, num_classes=dataset.num_classes)
    distributed.check_batch_size(train_cfg.batch_size, group)
    if train_cfg.epochs < 0:
        raise VaekitError(f"--epochs must be positive (or 0 for automatic), got {train_cfg.epochs}")
    if train_cfg.epochs == 0:
        train_cfg = replace(train_cfg, epochs=auto_epochs(len(dataset.train), train_cfg.batch_size))

    torch.manual_seed(train_cfg.seed)
    model = VAE(model_cfg).to(device)
    torch.manual_seed(train_cfg.seed + 7919 * group.rank)  # each rank draws its own noise
    # The fused Adam kernel (CPU and CUDA) updates every parameter in one pass instead of ~10 ops each.
    optimizer = torch.optim.Adam(
        model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, fused=device.type in ("cpu", "cuda")
    )
    train_data = training_targets(dataset.train, mode, data_cfg.split_seed + 1, device)
    val_data = fixed_targets(dataset.val, mode, data_cfg.split_seed + VAL_SEED_OFFSET, device)
    n = len(distributed.padded_order(torch.arange(len(train_data)), group.world))
    bs = train_cfg.batch_size
    steps_per_epoch = math.ceil(n / bs)
    total_steps = steps_per_epoch * train_cfg.epochs

    # Where to start: `epoch` epochs are complete and `batch` batches of the next one are done.
    epoch, batch, step, best_val = 0, 0, 0, math.inf
    best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # Polyak averaging: validation, best weights and pictures use the average of the trajectory.
    averaged = copy.deepcopy(model).requires_grad_(False) if train_cfg.ema > 0 else model
    sums = torch.zeros(len(TERMS), device=device, dtype=torch.float64)
    if resume and (out / ckpt.LAST).is_file():
        best, extra, state = ckpt.load_resume_point(out, model, optimizer)
        try:
            epoch, batch, step, best_val = state["epoch"], state["batch"], state["step"], state["best_val"]
            extra[f"rng.{group.rank}.cpu"]
        except KeyError as e:
            raise VaekitError(f"{out / ckpt.LAST} lacks {e} in its training state: it cannot be resumed") from None
        for tmp in out.glob(".*.tmp"):  # left by a write that was killed halfway
            tmp.unlink(missing_ok=True)
        if state.get("world", 1) != group.world:
            raise VaekitError(f"{out} was trained with {state.get('world', 1)} processes: resume it with as many")
        torch.set_rng_state(extra[f"rng.{group.rank}.cpu"])
        if device.type == "cuda" and f"rng.{group.rank}.cuda" in extra:
            torch.cuda.set_rng_state(extra[f"rng.{group.rank}.cuda"], device)
        if batch and group.is_main:
            sums = extra["sums"].to(device)
        if averaged is not model:
            averaged.load_state_dict({k[4:]: v for k, v in extra.items() if k.startswith("ema.")})
        if group.is_main:
            ckpt.write_metrics(out, [r for r in ckpt.read_metrics(out) if r["epoch"] <= epoch])
        if epoch >= train_cfg.epochs:
            if group.is_main:
                print(f"{out} has finished all {train_cfg.epochs} epochs; pass a larger --epochs to train longer")
                from .plots import picture_names

                if pictures and not all((out / name).is_file() for name in picture_names(model.conditional)):
                    model.load_state_dict(best)  # stopped while drawing them: draw them now
                    _draw_pictures(out, model.eval(), dataset, data_cfg, mode, device)
            return out
    elif group.is_main:
        if resume:  # killed before its first checkpoint: nothing was saved, start again
            ckpt.write_metrics(out, [])
        else:
            ckpt.prepare_run_folder(out, overwrite)
    if group.is_main:
        ckpt.save_config(out, data_cfg, model_cfg, train_cfg)
    group.barrier()

    def checkpoint() -> None:
        """Every rank's generator state and the partial epoch sums, then rank 0 writes."""
        rng = {"cpu": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        states = group.gather_objects(rng)
        partial = group.sum(sums)
        if group.is_main:
            extra = {f"rng.{r}.{k}": v for r, s in enumerate(states) for k, v in s.items()}
            state = {"epoch": epoch, "batch": batch, "step": step, "best_val": best_val, "world": group.world}
            if averaged is not model:
                extra.update({f"ema.{k}": v for k, v in averaged.state_dict().items()})
            ckpt.save_resume_point(out, model, best, optimizer, {**extra, "sums": partial}, state)

    ddp = torch.nn.parallel.DistributedDataParallel(model) if group.active else model
    forward, autocast = speedups(ddp, train_cfg, device)
    conditional = model.conditional
    show = group.is_main and (progress is None or progress)
    bar = tqdm(total=total_steps, initial=step, disable=None if show else True, unit="step", dynamic_ncols=True)
    last_save, signum = time.monotonic(), 0
    with StopOnSignal() as stop, torch.autograd.set_detect_anomaly(train_cfg.detect_anomaly):
        while epoch < train_cfg.epochs:
            t0 = time.perf_counter()
            order = distributed.padded_order(epoch_order(train_cfg.seed, epoch + 1, len(train_data), device), group.world)
            first = batch
            history = torch.zeros(steps_per_epoch - first, 3, device=device)  # recon, kl, grad norm per step
            while batch < steps_per_epoch:
                idx = order[batch * bs : (batch + 1) * bs][group.rank :: group.world]
                for g in optimizer.param_groups:
                    g["lr"] = train_cfg.lr * lr_factor(train_cfg, step, total_steps)
                beta = kl_weight(train_cfg, step, steps_per_epoch)
                x, c = train_data.batch(idx)
                weight = torch.tensor(beta, device=device) if train_cfg.compile else beta  # no recompile per value
                terms = train_step(forward, optimizer, x, c if conditional else None, weight, train_cfg.free_bits, autocast)
                if averaged is not model:  # decay warms up so that short runs average little
                    decay = min(train_cfg.ema, (1 + step) / (10 + step))
                    with torch.no_grad():
                        for p_avg, p in zip(averaged.parameters(), model.parameters()):
                            p_avg.lerp_(p, 1 - decay)
                sums += torch.stack([terms[k] for k in TERMS])
                history[batch - first] = torch.stack([terms["recon"], terms["kl"], terms["grad_norm"]])
                batch, step = batch + 1, step + 1
                bar.update(1)
                due = time.monotonic() - last_save > 60 * train_cfg.checkpoint_every
                signum, due = stop.signum, due
                if group.active:  # every rank must checkpoint and stop at the same step
                    signum, due = (int(v) for v in group.max(torch.tensor([signum, due], device=device)))
                if (signum or due) and batch < steps_per_epoch:
                    if not torch.isfinite(history).all():
                        raise _non_finite(history, epoch + 1, step - (batch - first), out)
                    checkpoint()
                    last_save = time.monotonic()
                if signum:
                    break
            train_seconds = time.perf_counter() - t0
            if batch < steps_per_epoch:  # stopped mid-epoch, checkpoint written
                bar.close()
                raise _interrupted(signum, epoch + 1, step, out)
            if not torch.isfinite(history).all():
                raise _non_finite(history, epoch + 1, step - (batch - first), out)
            epoch, batch = epoch + 1, 0
            train_terms = dict(zip(TERMS, (group.sum(sums) / n).tolist()))
            sums.zero_()
            val_terms = validate(averaged, val_data, group, seed=data_cfg.split_seed)
            if val_terms["neg_elbo"] < best_val:
                best_val = val_terms["neg_elbo"]
                best = {k: v.detach().clone() for k, v in averaged.state_dict().items()}
            if group.is_main:  # the line first: a resume drops lines past the checkpoint and redoes them
                ckpt.append_metrics(out, {
                    "epoch": epoch, "step": step,
                    **{f"train_{k}": v for k, v in train_terms.items()},
                    **{f"val_{k}": v for k, v in val_terms.items()},
                    "lr": optimizer.param_groups[0]["lr"], "kl_weight": beta,
                    "train_seconds": train_seconds, "images_per_second": (n - first * bs) / train_seconds,
                    "seconds": time.perf_counter() - t0,
                })
            checkpoint()
            last_save = time.monotonic()
            bar.set_postfix(loss=f"{train_terms['neg_elbo']:.2f}", val=f"{val_terms['neg_elbo']:.2f}", refresh=False)
            if signum:  # the signal came in the epoch's last step: stop now that the epoch is saved
                bar.close()
                raise _interrupted(signum, epoch, step, out)
    bar.close()
    model.load_state_dict(best)
    model.eval()
    if pictures and group.is_main:
        _draw_pictures(out, model, dataset, data_cfg, mode, device)
    return out


def _draw_pictures(out: Path, model: VAE, dataset, data_cfg: DataConfig, mode: str, device: torch.device) -> None:
    from . import plots  # matplotlib is imported only when pictures are drawn

    plots.run_pictures(out, model, test_targets(dataset.test, data_cfg.split_seed, mode, device), data_cfg.split_seed)
