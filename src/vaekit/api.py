"""The Python API; the CLI is a thin layer over these functions.

    import vaekit
    run = vaekit.train("runs/digits", dataset="digits", epochs=50)
    report = vaekit.evaluate(run, iw_samples=1000)      # dict: neg_elbo, nll, active_units, ...
    model = vaekit.load(run)                            # a VAE in eval mode
    images = model.sample(16)                           # (16, C, H, W) in [0, 1]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import DataConfig, ModelConfig, TrainConfig
from .data import binarization, load_dataset, test_targets
from .errors import VaekitError
from .evaluate import evaluate as evaluate_model
from .models import VAE
from .train import fit, resolve_device

CONFIGS = (DataConfig, ModelConfig, TrainConfig)
RESUME_CHANGES = {"epochs", "device"}  # the settings a resumed run may change


def make_configs(**options) -> tuple[DataConfig, ModelConfig, TrainConfig]:
    """Split keyword options (any field of DataConfig, ModelConfig, TrainConfig) into the three configs."""
    known = {f.name: cls for cls in CONFIGS for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise VaekitError(f"unknown option(s) {unknown}")
    return tuple(cls(**{k: v for k, v in options.items() if known[k] is cls}) for cls in CONFIGS)  # type: ignore[return-value]


def train(
    out: str | Path, *, overwrite: bool = False, resume: bool = False, progress: bool | None = None, **options
) -> Path:
    """Train a model into the run folder `out` (options: fields of the config dataclasses); returns `out`.

    With resume=True the run continues with the settings in its config.json; only `epochs` (to train
    longer) and `device` (to move it, e.g. a GPU run onto a CPU) may be given."""
    if resume:
        changed = sorted(set(options) - RESUME_CHANGES)
        if changed:
            raise VaekitError(f"--resume continues a run with its own settings: only --epochs and --device may change, got {changed}")
        data_cfg, model_cfg, train_cfg = ckpt.read_config(Path(out))
        if "epochs" in options:
            options["epochs"] = max(options["epochs"], train_cfg.epochs)
        train_cfg = dataclasses.replace(train_cfg, **options)
    else:
        data_cfg, model_cfg, train_cfg = make_configs(**options)
    return fit(data_cfg, model_cfg, train_cfg, out, overwrite=overwrite, resume=resume, progress=progress)


def load(run: str | Path, device: str = "cpu") -> VAE:
    """The best model of a run folder, in eval mode."""
    return ckpt.load_model(Path(run), resolve_device(device))


def evaluation_data(run: str | Path, dataset: str | None = None, data: str | None = None, data_dir: str | None = None):
    """(images, labels, description) to evaluate a run on: its own test split by default, the test
    split of another dataset, or every image of a .npz file; binarized as in training, with a fixed seed."""
    data_cfg, model_cfg, _ = ckpt.read_config(Path(run))
    if dataset is not None and data is not None:
        raise VaekitError("give --dataset or --data, not both")
    if dataset is not None or data is not None:
        data_cfg = dataclasses.replace(data_cfg, dataset=dataset or data, data_dir=data_dir or data_cfg.data_dir)
    source = load_dataset(data_cfg)
    if source.image_shape != tuple(model_cfg.image_shape):
        raise VaekitError(
            f"the model takes images of shape {tuple(model_cfg.image_shape)} but {data_cfg.dataset} has {source.image_shape}"
        )
    mode = binarization(data_cfg.binarize, model_cfg.likelihood, source)
    split = source.test
    if data is not None:  # a whole file: evaluate every image in it
        from .data import Split

        parts = (source.train, source.val, source.test)
        ys = None if source.train.y is None else torch.cat([p.y for p in parts])
        split = Split(torch.cat([p.x for p in parts]), ys, source.train.max_value)
    return split, data_cfg, mode


def evaluate(
    run: str | Path,
    *,
    dataset: str | None = None,
    data: str | None = None,
    data_dir: str | None = None,
    iw_samples: int = 1000,
    device: str = "auto",
    max_batch: int | None = None,
    samples_per_class: int = 1000,
    limit: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Test-set -ELBO, its parts, the IWAE estimate of -log p(x) and latent usage of a run; see evaluate.py.
    `log` hears of slow one-off work (training a CVAE's judge)."""
    if iw_samples < 1:
        raise VaekitError(f"--iw-samples must be at least 1, got {iw_samples}")
    dev = resolve_device(device)
    model = ckpt.load_model(Path(run), dev)
    split, data_cfg, mode = evaluation_data(run, dataset, data, data_dir)
    targets = test_targets(split, data_cfg.split_seed, mode, dev)
    if limit is not None:  # the first `limit` test images
        if limit < 1:
            raise VaekitError(f"--limit must be at least 1, got {limit}")
        targets.x, targets.y = targets.x[:limit], None if targets.y is None else targets.y[:limit]
    if model.conditional and targets.y is None:
        raise VaekitError(f"{data_cfg.dataset} has no labels, and a conditional VAE is evaluated on labelled images")
    result = evaluate_model(model, targets.x, targets.y, iw_samples=iw_samples, max_batch=max_batch)
    result["dataset"] = data_cfg.dataset
    if model.conditional:  # nll is -log p(x|c); judge the class-conditional samples too
        from .classifier import cached_classifier, conditional_accuracy_per_class

        classifier, result["classifier_accuracy"] = cached_classifier(Path(run), load_dataset(data_cfg), dev, log=log)
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(0)
            per_class = conditional_accuracy_per_class(model, classifier, samples_per_class)
        result["conditional_accuracy"] = sum(per_class) / len(per_class)
        result["conditional_accuracy_per_class"] = per_class
        result["samples_per_class"] = samples_per_class
    return result
