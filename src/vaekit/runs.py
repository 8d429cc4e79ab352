"""A run folder read back: its configs, its model with trained weights, and the data it is evaluated on.

Low in the import order (config, checkpoint, data, models below it): the loop, evaluation, pictures,
the report, the explorer and the API all read runs through here, and none of them is imported here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import fingerprint
from .config import DataConfig, ModelConfig, TrainConfig, from_dict, to_dict
from .data import Split, binarization, load_dataset
from .errors import VaekitError
from .models import build, config_from_dict


def read_config(folder: Path) -> tuple[DataConfig, ModelConfig, TrainConfig]:
    """The three configs of a run folder's config.json, each checked as it is built."""
    folder = Path(folder)
    doc = ckpt.read_config_doc(folder)
    try:
        return from_dict(DataConfig, doc["data"]), config_from_dict(doc["model"]), from_dict(TrainConfig, doc["train"])
    except (KeyError, TypeError, AttributeError) as e:
        raise VaekitError(f"{folder / ckpt.CONFIG} is not a valid vaekit config: {e}") from None


def load_model(folder: Path, device: str | torch.device = "cpu", weights: str = ckpt.BEST) -> torch.nn.Module:
    """The model of a run folder with its best (or another) weights, in eval mode."""
    _, model_cfg, _ = read_config(folder)
    model = build(model_cfg)
    tensors, _ = ckpt.load_tensors(Path(folder) / weights)
    ckpt.check_finite(tensors, Path(folder) / weights)
    ckpt.load_state_dict_into(model, tensors, Path(folder) / weights)
    return model.to(device).eval()


def load_weights_of_run(model: torch.nn.Module, model_cfg: ModelConfig, folder: Path) -> list[str]:
    """Put the best weights of another run into `model` (--init-from). Each of its tensors must fit one of the
    model's; the model may have more (e.g. --autoregressive on a factorized run's weights), which keep their
    fresh initialisation. Returns the names of those."""
    folder = Path(folder)
    try:
        _, theirs, _ = read_config(folder)
        tensors, _ = ckpt.load_tensors(folder / ckpt.BEST)
        ckpt.check_finite(tensors, folder / ckpt.BEST)
    except VaekitError as e:
        raise VaekitError(f"--init-from {folder}: {e}") from None
    try:
        return ckpt.load_state_dict_into(model, tensors, folder / ckpt.BEST, partial=True)
    except VaekitError:
        mine, other = to_dict(model_cfg), to_dict(theirs)
        differ = [k for k in sorted(mine.keys() | other.keys()) if mine.get(k) != other.get(k)]
        raise VaekitError(f"--init-from {folder}: its weights do not fit this model (the model settings that differ: "
                          f"{', '.join(differ) or 'none'})") from None


def evaluation_data(run: str | Path, dataset: str | None = None, data: str | None = None, data_dir: str | None = None):
    """(split, data config, binarization) to evaluate a run on: its own test split by default, the test
    split of another dataset, or every image of a .npz file; binarized as in training, with a fixed seed."""
    data_cfg, model_cfg, _ = read_config(Path(run))
    if dataset is not None and data is not None:
        raise VaekitError("give --dataset or --data, not both")
    if dataset is not None or data is not None:
        data_cfg = dataclasses.replace(data_cfg, dataset=dataset or data, data_dir=data_dir or data_cfg.data_dir)
    # evaluation sees every known label; a --data file is read whole, however few images it has
    source = load_dataset(dataclasses.replace(data_cfg, labels_per_class=0), whole=data is not None)
    if dataset is None and data is None:  # its own split: the data must still be what it was trained on
        fingerprint.check(Path(run), source)
    if source.image_shape != tuple(model_cfg.image_shape):
        raise VaekitError(
            f"the model takes images of shape {tuple(model_cfg.image_shape)} but {data_cfg.dataset} has {source.image_shape}"
        )
    mode = binarization(data_cfg.binarize, model_cfg.likelihood, source)
    split = source.test
    if data is not None:  # a whole file: evaluate every image in it
        parts = (source.train, source.val, source.test)
        ys = None if source.train.y is None else torch.cat([p.y for p in parts])
        split = Split(torch.cat([p.x for p in parts]), ys, source.train.max_value, torch.cat([p.index for p in parts]))
    if split.y is not None and model_cfg.num_classes and int(split.y.max()) >= model_cfg.num_classes:
        raise VaekitError(f"{data_cfg.dataset} has labels up to {int(split.y.max())}, but the model knows "
                          f"{model_cfg.num_classes} classes (0..{model_cfg.num_classes - 1})")
    return split, data_cfg, mode
