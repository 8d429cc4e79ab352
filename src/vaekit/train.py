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
    """One Adam step on a batch; returns the batch's summed terms (detached, not synced)."""
    terms = model(x, c, beta=beta, free_bits=free_bits)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    optimizer.step()
    return {k: v.detach().sum() for k, v in terms.items() if k != "loss"}


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


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["rng.cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])


def save_checkpoint(out: Path, model: VAE, best: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Best weights to model.safetensors, then everything needed to resume to last.safetensors."""
    import json

    ckpt.save_tensors(out / ckpt.BEST, best)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in best.items()})
    opt_state = optimizer.state_dict()
    for i, s in opt_state["state"].items():
        tensors.update({f"optim.{i}.{k}": torch.as_tensor(v) for k, v in s.items()})
    tensors.update(_rng_state())
    meta = dict(state, param_groups=opt_state["param_groups"])
    ckpt.save_tensors(out / ckpt.LAST, tensors, metadata={"train_state": json.dumps(meta)})


def load_checkpoint(out: Path, model: VAE, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Restore model, optimizer and RNG from last.safetensors; returns (best weights, scalar state)."""
    import json

    tensors, metadata = ckpt.load_tensors(out / ckpt.LAST)
    try:
        meta = json.loads(metadata["train_state"])
    except (KeyError, json.JSONDecodeError):
        raise VaekitError(f"{out / ckpt.LAST} holds no training state: it cannot be resumed") from None
    part = lambda prefix: {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
    ckpt.load_state_dict_into(model, part("model."), out / ckpt.LAST)
    best = part("best.")
    opt_state: dict = {"state": {}, "param_groups": meta.pop("param_groups")}
    for key, v in part("optim.").items():
        i, name = key.split(".", 1)
        opt_state["state"].setdefault(int(i), {})[name] = v
    optimizer.load_state_dict(opt_state)
    _set_rng_state(tensors)
    return best, meta


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

    With resume=True, data_cfg and model_cfg come from the folder's config.json and only
    train_cfg.epochs (to train longer) is taken from the arguments.
    """
    out = Path(out)
    if resume:
        data_cfg, model_cfg, saved_train = ckpt.read_config(out)
        train_cfg = replace(saved_train, epochs=max(train_cfg.epochs, saved_train.epochs) if train_cfg else saved_train.epochs)
    device = resolve_device(train_cfg.device)
    dataset = load_dataset(data_cfg)
    mode = binarization(data_cfg, model_cfg, dataset)
    model_cfg = replace(model_cfg, image_shape=dataset.image_shape, num_classes=dataset.num_classes)
    if model_cfg.model == "cvae" and dataset.num_classes < 2:
        raise VaekitError(f"--model cvae needs class labels, and dataset '{data_cfg.dataset}' has none")

    torch.manual_seed(train_cfg.seed)
    model = VAE(model_cfg).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, fused=device.type == "cuda" or None
    )
    train_data = training_targets(dataset.train, mode, data_cfg.split_seed + 1, device)
    val_data = fixed_targets(dataset.val, mode, data_cfg.split_seed + VAL_SEED_OFFSET, device)
    conditional = model.conditional
    steps_per_epoch = math.ceil(len(train_data.x) / train_cfg.batch_size)
    total_steps = steps_per_epoch * train_cfg.epochs

    start_epoch, step, best_val = 0, 0, math.inf
    if resume:
        if not (out / ckpt.LAST).is_file():
            raise VaekitError(f"{out} has no checkpoint to resume from (no {ckpt.LAST})")
        best, state = load_checkpoint(out, model, optimizer)
        start_epoch, step, best_val = state["epoch"], state["step"], state["best_val"]
        ckpt.write_metrics(out, [r for r in ckpt.read_metrics(out) if r["epoch"] <= start_epoch])
        if start_epoch >= train_cfg.epochs:
            print(f"{out} has finished all {train_cfg.epochs} epochs; pass a larger --epochs to train longer")
            return out
    else:
        _prepare_folder(out, overwrite)
        best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt.save_config(out, data_cfg, model_cfg, train_cfg)

    bar = tqdm(total=total_steps, initial=step, disable=None if progress is None else not progress, unit="step", dynamic_ncols=True)
    model.train()
    for epoch in range(start_epoch + 1, train_cfg.epochs + 1):
        t0 = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        for xb, yb in batches(train_data.x, train_data.y, train_cfg.batch_size, shuffle=True):
            for group in optimizer.param_groups:
                group["lr"] = train_cfg.lr * _lr_factor(train_cfg, step, total_steps)
            beta = _kl_weight(train_cfg, step, steps_per_epoch)
            terms = train_step(model, optimizer, train_data.targets(xb), yb if conditional else None, beta, train_cfg.free_bits)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + v
            step += 1
            bar.update(1)
        n = len(train_data.x)
        train_terms = {k: float(v) / n for k, v in sums.items()}
        if not all(math.isfinite(v) for v in train_terms.values()):
            bad = [k for k, v in train_terms.items() if not math.isfinite(v)]
            raise VaekitError(
                f"the loss became non-finite in epoch {epoch} (step {step}, term {', '.join(bad)}); "
                f"the last good checkpoint is in {out}; try a lower --lr"
            )
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
        ckpt.append_metrics(out, record)
        bar.set_postfix(loss=f"{train_terms['neg_elbo']:.2f}", val=f"{val_terms['neg_elbo']:.2f}", refresh=False)
        if epoch == train_cfg.epochs or epoch % max(1, train_cfg.epochs // 20) == 0:
            save_checkpoint(out, model, best, optimizer, {"epoch": epoch, "step": step, "best_val": best_val})
    bar.close()
    model.load_state_dict(best)
    model.eval()
    if pictures:
        from .plots import run_pictures

        run_pictures(out, model, test_targets(dataset.test, data_cfg, mode, device), data_cfg.split_seed)
    return out
