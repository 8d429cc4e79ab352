"""The training loop: Adam on the negative ELBO, validation every epoch, best weights, checkpoints.

    fit -> for each epoch: train_epoch -> train_step (forward, backward, step)
                           validate, log a line to metrics.jsonl, checkpoint
        -> pictures of the best model

All randomness (initialisation, shuffling, dynamic binarization, reparameterization noise) comes
from torch's global generator seeded once, so a run is reproducible and a checkpoint that saves the
generator state resumes exactly.
"""

from __future__ import annotations

import math
import shutil
import signal
import threading
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .config import DataConfig, ModelConfig, TrainConfig
from .data import ImageDataset, Split, batches, binarize_static, load_dataset
from .errors import VaekitError
from .models import VAE


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise VaekitError("--device cuda was asked for but no CUDA GPU is available: use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise VaekitError("--device mps was asked for but MPS is not available: use --device cpu or auto")
    if name not in ("cpu", "cuda", "mps"):
        raise VaekitError(f"unknown device '{name}': use auto, cpu, cuda or mps")
    return torch.device(name)


def binarization(data_cfg: DataConfig, model_cfg: ModelConfig, dataset: ImageDataset) -> str:
    """The binarization mode to use, after checking that the likelihood fits the pixels."""
    mode = data_cfg.binarize
    if mode == "auto":
        mode = "dynamic" if model_cfg.likelihood == "bernoulli" else "none"
    if model_cfg.likelihood == "bernoulli" and mode == "none" and not dataset.is_binary:
        raise VaekitError(
            "the Bernoulli likelihood needs binary pixels but this data has grey levels: "
            "use --binarize dynamic or static, or --likelihood gaussian"
        )
    if model_cfg.likelihood == "gaussian" and (mode != "none" or dataset.is_binary):
        warnings.warn("a Gaussian likelihood on binary pixels: the Bernoulli likelihood is the one that fits", stacklevel=2)
    return mode


@dataclass
class DeviceData:
    """Images resident on the training device; batches are index gathers."""

    x: torch.Tensor  # (N, C, H, W) uint8 levels or float in [0, 1]
    y: torch.Tensor | None
    max_value: float
    dynamic: bool  # draw a fresh Bernoulli sample of every batch

    def targets(self, xb: torch.Tensor) -> torch.Tensor:
        """Likelihood targets of a gathered batch: float in [0, 1], binarized if dynamic."""
        xb = xb.float().div_(self.max_value)
        return torch.bernoulli(xb) if self.dynamic else xb


def fixed_targets(split: Split, mode: str, seed: int, device: torch.device) -> DeviceData:
    """Validation/test images, binarized once with a fixed seed (so evaluation is repeatable)."""
    x = split.to_float()
    if mode != "none":
        x = binarize_static(x, seed)
    return DeviceData(x.to(device), None if split.y is None else split.y.to(device), 1.0, dynamic=False)


VAL_SEED_OFFSET, TEST_SEED_OFFSET = 2, 3  # the fixed binarizations use split_seed + offset


def test_targets(split: Split, data_cfg: DataConfig, mode: str, device: torch.device) -> DeviceData:
    """The evaluation images of a run: binarized once, always with the same seed."""
    return fixed_targets(split, mode, data_cfg.split_seed + TEST_SEED_OFFSET, device)


def training_targets(split: Split, mode: str, seed: int, device: torch.device) -> DeviceData:
    if mode == "static":
        return fixed_targets(split, mode, seed, device)
    y = None if split.y is None else split.y.to(device)
    return DeviceData(split.x.to(device), y, split.max_value, dynamic=mode == "dynamic")


def train_step(
    model: VAE, optimizer: torch.optim.Optimizer, x: torch.Tensor, c: torch.Tensor | None, beta: float, free_bits: float
) -> dict[str, torch.Tensor]:
    """One Adam step on a batch; returns the batch's summed terms and the gradient norm (detached, not synced)."""
    terms = model(x, c, beta=beta, free_bits=free_bits)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)  # only measured, not clipped
    optimizer.step()
    return {**{k: v.detach().sum() for k, v in terms.items() if k != "loss"}, "grad_norm": grad_norm}


@torch.no_grad()
def validate(model: VAE, data: DeviceData, batch_size: int = 1024, seed: int = 0) -> dict[str, float]:
    """Mean one-sample negative ELBO and its parts on fixed data, with fixed noise (comparable across epochs)."""
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    with torch.random.fork_rng(devices=[data.x.device] if data.x.is_cuda else []):
        torch.manual_seed(seed)
        for xb, yb in batches(data.x, data.y, batch_size, shuffle=False):
            for k, v in model(xb, yb if model.conditional else None).items():
                if k != "loss":
                    sums[k] = sums.get(k, 0) + v.sum()
    model.train()
    n = len(data.x)
    return {k: float(v) / n for k, v in sums.items()}


def _lr_factor(cfg: TrainConfig, step: int, total_steps: int) -> float:
    if cfg.lr_schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def _kl_weight(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    if cfg.kl_warmup <= 0:
        return cfg.beta
    return cfg.beta * min(1.0, (step + 1) / (cfg.kl_warmup * steps_per_epoch))


def _prepare_folder(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise VaekitError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            what = "a vaekit run" if ckpt.is_run(out) else "other files"
            raise VaekitError(f"{out} already holds {what}: pass --overwrite to replace it, or --resume {out} to continue it")
        if not ckpt.is_run(out):
            raise VaekitError(f"{out} holds files that are not a vaekit run: refusing to delete them, choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


class Interrupted(Exception):
    """Training stopped by a signal after writing a checkpoint; `exit_code` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class _StopOnSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step (main thread only)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:  # a second signal: stop now, the last checkpoint stays intact
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _rng_state(prefix: str) -> dict[str, torch.Tensor]:
    state = {f"{prefix}.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state[f"{prefix}.cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(tensors: dict[str, torch.Tensor], prefix: str) -> None:
    torch.set_rng_state(tensors[f"{prefix}.cpu"])
    if f"{prefix}.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[f"{prefix}.cuda"])


TERMS = ("neg_elbo", "recon", "kl")  # summed per epoch; plus the gradient norm, watched for non-finite values


def _non_finite_message(history: torch.Tensor, epoch: int, first_step: int, out: Path) -> str:
    """Name the first step and term that went non-finite; history: (steps, 4) = recon, kl, grad norm, ok."""
    bad = (~torch.isfinite(history[:, :3])).nonzero()
    row, col = int(bad[0, 0]), int(bad[0, 1])
    term = ("the reconstruction term", "the KL term", "a gradient")[col]
    return (
        f"{term} became non-finite in epoch {epoch}, step {first_step + row + 1}; the last good checkpoint "
        f"is kept in {out}; try a lower --lr (or --detect-anomaly to find the operation)"
    )


def fit(
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig | None,
    out: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool | None = None,
    pictures: bool = True,
) -> Path:
    """Train a model and write its run folder; returns the folder.

    With resume=True, every config comes from the folder's config.json except train_cfg.epochs
    (to train longer) when train_cfg is given. Raises Interrupted after SIGINT/SIGTERM.
    """
    out = Path(out)
    if resume:
        data_cfg, model_cfg, saved = ckpt.read_config(out)
        train_cfg = saved if train_cfg is None else replace(saved, epochs=max(train_cfg.epochs, saved.epochs))
    assert train_cfg is not None
    device = resolve_device(train_cfg.device)
    dataset = load_dataset(data_cfg)
    mode = binarization(data_cfg, model_cfg, dataset)
    if model_cfg.model == "cvae" and dataset.num_classes < 2:
        raise VaekitError(f"--model cvae needs class labels, and dataset '{data_cfg.dataset}' has none")
    model_cfg = replace(model_cfg, image_shape=dataset.image_shape, num_classes=dataset.num_classes)

    torch.manual_seed(train_cfg.seed)
    model = VAE(model_cfg).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, fused=device.type == "cuda" or None
    )
    train_data = training_targets(dataset.train, mode, data_cfg.split_seed + 1, device)
    val_data = fixed_targets(dataset.val, mode, data_cfg.split_seed + VAL_SEED_OFFSET, device)
    n, bs = len(train_data.x), train_cfg.batch_size
    steps_per_epoch = math.ceil(n / bs)
    total_steps = steps_per_epoch * train_cfg.epochs

    # Where to start: epoch `epoch` is the last completed one; `batch` batches of the next are done.
    epoch, batch, step, best_val = 0, 0, 0, math.inf
    extra: dict[str, torch.Tensor] = {}
    best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if resume and (out / ckpt.LAST).is_file():
        best, extra, state = ckpt.load_resume_point(out, model, optimizer)
        epoch, batch, step, best_val = state["epoch"], state["batch"], state["step"], state["best_val"]
        _set_rng_state(extra, "rng")
        ckpt.write_metrics(out, [r for r in ckpt.read_metrics(out) if r["epoch"] <= epoch])
        if epoch >= train_cfg.epochs:
            print(f"{out} has finished all {train_cfg.epochs} epochs; pass a larger --epochs to train longer")
            return out
    elif resume:  # killed before its first checkpoint: nothing was saved, start again
        ckpt.write_metrics(out, [])
    else:
        _prepare_folder(out, overwrite)
    ckpt.save_config(out, data_cfg, model_cfg, train_cfg)

    def checkpoint(epoch_rng: dict[str, torch.Tensor], sums: torch.Tensor) -> None:
        state = {"epoch": epoch, "batch": batch, "step": step, "best_val": best_val}
        tensors = {**_rng_state("rng"), **epoch_rng, "sums": sums}
        ckpt.save_resume_point(out, model, best, optimizer, tensors, state)

    conditional = model.conditional
    bar = tqdm(total=total_steps, initial=step, disable=None if progress is None else not progress, unit="step", dynamic_ncols=True)
    last_save = time.monotonic()
    model.train()
    with _StopOnSignal() as stop, torch.autograd.set_detect_anomaly(train_cfg.detect_anomaly):
        while epoch < train_cfg.epochs:
            t0 = time.perf_counter()
            if batch == 0:  # a fresh epoch: remember the RNG that draws its order, so a resume can redraw it
                epoch_rng = _rng_state("epoch_rng")
                sums = torch.zeros(len(TERMS), device=device, dtype=torch.float64)
            else:  # resuming mid-epoch: redraw the same order, then continue with the saved generator
                epoch_rng = {k: v for k, v in extra.items() if k.startswith("epoch_rng.")}
                sums = extra["sums"].to(device)
                resume_rng = _rng_state("rng")
                _set_rng_state(epoch_rng, "epoch_rng")
            order = torch.randperm(n, device=device)
            if batch > 0:
                _set_rng_state(resume_rng, "rng")
            first_batch = batch
            history = torch.zeros(steps_per_epoch - first_batch, 4, device=device)
            for batch in range(first_batch, steps_per_epoch):
                idx = order[batch * bs : (batch + 1) * bs]
                for group in optimizer.param_groups:
                    group["lr"] = train_cfg.lr * _lr_factor(train_cfg, step, total_steps)
                beta = _kl_weight(train_cfg, step, steps_per_epoch)
                c = train_data.y[idx] if conditional else None
                terms = train_step(model, optimizer, train_data.targets(train_data.x[idx]), c, beta, train_cfg.free_bits)
                sums += torch.stack([terms[k] for k in TERMS])
                history[batch - first_batch, :3] = torch.stack([terms["recon"], terms["kl"], terms["grad_norm"]])
                step += 1
                bar.update(1)
                if stop.signum is not None or time.monotonic() - last_save > 60 * train_cfg.checkpoint_every:
                    batch += 1
                    if not torch.isfinite(history).all():
                        raise VaekitError(_non_finite_message(history, epoch + 1, first_batch, out))
                    if batch < steps_per_epoch:
                        checkpoint(epoch_rng, sums)
                        last_save = time.monotonic()
                    if stop.signum is not None:
                        bar.close()
                        name = signal.Signals(stop.signum).name
                        raise Interrupted(
                            f"stopped by {name} in epoch {epoch + 1} after step {step}; checkpoint saved: "
                            f"resume with `vaekit train --resume {out}`",
                            128 + stop.signum,
                        )
                    batch -= 1
            if not torch.isfinite(history).all():
                raise VaekitError(_non_finite_message(history, epoch + 1, first_batch, out))
            epoch, batch = epoch + 1, 0
            train_terms = dict(zip(TERMS, (sums / n).tolist()))
            val_terms = validate(model, val_data, seed=data_cfg.split_seed)
            if val_terms["neg_elbo"] < best_val:
                best_val = val_terms["neg_elbo"]
                best = {k: v.detach().clone() for k, v in model.state_dict().items()}
            record = {
                "epoch": epoch,
                "step": step,
                **{f"train_{k}": v for k, v in train_terms.items()},
                **{f"val_{k}": v for k, v in val_terms.items()},
                "lr": optimizer.param_groups[0]["lr"],
                "kl_weight": beta,
                "seconds": time.perf_counter() - t0,
            }
            checkpoint({}, torch.zeros(0))
            last_save = time.monotonic()
            ckpt.append_metrics(out, record)
            bar.set_postfix(loss=f"{train_terms['neg_elbo']:.2f}", val=f"{val_terms['neg_elbo']:.2f}", refresh=False)
    bar.close()
    model.load_state_dict(best)
    model.eval()
    if pictures:
        from .plots import run_pictures

        run_pictures(out, model, test_targets(dataset.test, data_cfg, mode, device), data_cfg.split_seed)
    return out
