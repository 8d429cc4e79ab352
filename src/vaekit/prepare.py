"""A run made ready to train: its data checked against what the model needs, the model built (from
--init-from's weights where given), its optimizer and weight average, and the epoch plan."""

from __future__ import annotations

import sys
from dataclasses import fields, replace
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import distributed, fingerprint, models, runs
from .config import DataConfig, ModelConfig, TrainConfig, auto_epochs, auto_patience
from .data import VAL_SEED_OFFSET, EpochPlan, ImageDataset, binarization, fixed_targets, load_dataset, training_targets
from .ema import EMA
from .errors import VaekitError
from .likelihoods import choose_likelihood
from .run_state import Training


def prepare(data_cfg: DataConfig, model_cfg: ModelConfig, cfg: TrainConfig, out: Path,
            group: distributed.Group, fresh: bool = True) -> Training:
    """Load the data, check it against what the model needs, and build the model (a fresh run: from
    --init-from's weights where given) and optimizer."""
    device = group.device
    dataset = load_dataset(data_cfg)
    model_cfg, said = choose_likelihood(model_cfg, data_cfg, dataset)  # --likelihood auto follows the data
    mode = binarization(data_cfg.binarize, model_cfg.likelihood, dataset)
    cls = models.model_class(model_cfg.model)
    labelled = check_labels(cls, model_cfg.model, dataset)
    facts = {"image_shape": dataset.image_shape, "num_classes": dataset.num_classes,
             "labelled_fraction": 1.0 if labelled is None else len(labelled) / len(dataset.train)}
    names = {f.name for f in fields(model_cfg)}
    model_cfg = replace(model_cfg, **{k: v for k, v in facts.items() if k in names})
    base = base_of(cls, model_cfg, dataset) if fresh else None  # a run the model is built on (M1+M2's VAE)
    if base is not None:
        model_cfg = cls.with_base(model_cfg, base[0])
    distributed.check_batch_size(cfg.batch_size, group)
    share = labelled_share(data_cfg, labelled, len(dataset.train), group.is_main)
    plan = EpochPlan(len(dataset.train), cfg.batch_size, group.world, cfg.seed, labelled, share)
    if cfg.patience is None:  # unset: early stopping with automatic epochs (config.auto_patience), else none
        epochs = cfg.epochs or auto_epochs(plan.examples_per_epoch, cfg.batch_size)
        cfg = replace(cfg, patience=auto_patience(epochs) if cfg.epochs == 0 else 0)
    if cfg.epochs == 0:
        cfg = replace(cfg, epochs=auto_epochs(plan.examples_per_epoch, cfg.batch_size))

    torch.manual_seed(cfg.seed)
    model = models.build(model_cfg)
    if base is not None:  # its weights, frozen inside the model, under `base.`
        ckpt.load_state_dict_into(model.base, base[1], Path(cls.base_run(model_cfg)) / ckpt.BEST)
    if cfg.init_from and fresh:  # a resumed run has its own weights
        new = runs.load_weights_of_run(model, model_cfg, Path(cfg.init_from))
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
    train_data = training_targets(dataset.train, mode, data_cfg.split_seed + 1, device)
    if cls.labels == "none":  # no label gather per step for a model that ignores them
        train_data = replace(train_data, y=None)
    val_data = fixed_targets(dataset.val, mode, data_cfg.split_seed + VAL_SEED_OFFSET, device)
    if group.is_main:
        print(said, flush=True)
    return Training(data_cfg, model_cfg, cfg, out, group, dataset, mode, model, EMA(model, cfg.ema), optimizer,
                    train_data, val_data, plan)


SHARE_WEIGHT, MAX_SHARE = 10, 0.5


def labelled_share(data_cfg: DataConfig, labelled: torch.Tensor | None, num_train: int, say: bool) -> float:
    """The share of each batch drawn from the labelled images: --labelled-share, else SHARE_WEIGHT x their
    fraction of the training images, at most MAX_SHARE (BENCHMARKS.md, "Semi-supervised classification": 0.5
    wins on digits' 100 of 1,365, 0.02 on Fashion-MNIST's 100 of 57,000, where 0.5 lets q(y|x) memorise them)."""
    if labelled is None:
        return 0.0
    if data_cfg.labelled_share is not None:
        return data_cfg.labelled_share
    share = min(MAX_SHARE, SHARE_WEIGHT * len(labelled) / num_train)
    if say:
        print(f"vaekit: {len(labelled)} of {num_train} training images are labelled: each batch draws {share:.3g} of "
              f"its images from them ({SHARE_WEIGHT} x their fraction, at most {MAX_SHARE}; --labelled-share sets it)",
              flush=True)
    return share


def base_of(cls: type, model_cfg: ModelConfig, dataset: ImageDataset) -> tuple[ModelConfig, dict] | None:
    """The model config and best weights of the run a model is built on (its optional `base_run(cfg)`), checked
    to be trained on the same images and split."""
    folder = getattr(cls, "base_run", lambda cfg: None)(model_cfg)
    if folder is None:
        return None
    folder = Path(folder)
    try:
        _, base_cfg, _ = runs.read_config(folder)
        fingerprint.check(folder, dataset)
        tensors, _ = ckpt.load_tensors(folder / ckpt.BEST)
        ckpt.check_finite(tensors, folder / ckpt.BEST)
    except VaekitError as e:
        raise VaekitError(f"{folder} (the run {model_cfg.model} is built on): {e}") from None
    return base_cfg, tensors


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
