"""The Python API; the CLI is a thin layer over these functions.

    import vaekit
    run = vaekit.train("runs/digits", dataset="digits", epochs=50)
    report = vaekit.evaluate(run, iw_samples=1000)      # dict: neg_elbo, nll, active_units, ...
    model = vaekit.load(run)                            # the model in eval mode
    data = vaekit.load_data(run)                        # {"train", "val", "test"}: torch TensorDatasets (x, y)
    images = vaekit.sample(model, 16)                   # (16, C, H, W) in [0, 1], without autograd

The model's own methods (model.encode, decode, sample, reconstruct) follow the caller's grad mode, so
gradients reach z or the weights (latent optimisation, gradient probes); the functions here are their
no-grad conveniences.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import health, models
from .config import DataConfig, ModelConfig, TrainConfig, flag
from .data import Split, load_dataset, stored_location, test_targets
from .devices import resolve_device
from .errors import VaekitError
from .evaluate import evaluate as evaluate_model
from .evaluate import mean_and_se
from .latent_classifier import BINARIZATIONS, class_probabilities, label_error
from .options import EvaluateCall, RunCall, TrainCall
from .recipes import RESUME_CHANGES, read_recipe, stage_status
from .runs import evaluation_data, load_model, read_config
from .train import fit



def dataset_defaults(options: dict) -> dict:
    """The settings the chosen model takes on the chosen dataset where `options` leave them unset (its
    `dataset_defaults`); none where `options` name the network body (arch): a named body gets its
    built-in defaults, so `--arch mlp --hidden 400` is the classic MLP on every dataset."""
    if "arch" in options:
        return {}
    cls = models.model_class(options.get("model", "vae"))
    given = getattr(cls, "dataset_defaults", {}).get(options.get("dataset", DataConfig.dataset), {})
    return {k: v for k, v in given.items() if k not in options}


def training_defaults(options: dict) -> dict:
    """The settings the chosen model needs under `options` to avoid posterior collapse (its optional
    `training_defaults(options)`, e.g. a KL warm-up with the VampPrior), where `options` leave them unset."""
    cls = models.model_class(options.get("model", "vae"))
    hook = getattr(cls, "training_defaults", None)
    given = hook(options) if hook is not None else {}
    return {k: v for k, v in given.items() if k not in options}


def applied_defaults(options: dict) -> dict:
    """Every setting make_configs adds to `options`: the dataset's defaults, then the model's training ones."""
    applied = dataset_defaults(options)
    return {**applied, **training_defaults({**applied, **options})}


def make_configs(**options) -> tuple[DataConfig, ModelConfig, TrainConfig]:
    """Split keyword options (fields of DataConfig, the chosen model's config, TrainConfig) into the
    three configs, over the model's defaults for the dataset (dataset_defaults) and those it needs to
    avoid posterior collapse (training_defaults); each config checks its values (types, choices,
    ranges) as it is built."""
    options = {**applied_defaults(options), **options}
    for key in ("dataset", "data_dir", "init_from"):  # paths as absolute ones: a run is used from anywhere
        if isinstance(options.get(key), str):
            options[key] = stored_location(options[key])
    model_config = models.model_class(options.get("model", "vae")).Config
    classes = (DataConfig, model_config, TrainConfig)
    known = {f.name: cls for cls in classes for f in dataclasses.fields(cls) if "help" in f.metadata or f.name == "model"}
    unknown = sorted(set(options) - set(known))
    if unknown:
        owners: dict[str, list[str]] = {}
        for name, cls in models.MODELS.items():
            for f in dataclasses.fields(cls.Config):
                if "help" in f.metadata:
                    owners.setdefault(f.name, []).append(name)
        if any(k in owners for k in unknown):
            raise VaekitError(", ".join(f"{flag(k)} is a setting of --model {' or '.join(owners[k])}" for k in unknown
                                        if k in owners) + f", not of --model {options.get('model', 'vae')}")
        raise VaekitError(f"unknown option(s) {unknown}")
    return tuple(cls(**{k: v for k, v in options.items() if known[k] is cls}) for cls in classes)  # type: ignore[return-value]


def train(
    out: str | Path, *, overwrite: bool = False, resume: bool = False, progress: bool | None = None,
    tensorboard: str | Path | None = None, pictures: bool = True, **options
) -> Path:
    """Train a model into the run folder `out` (options: fields of the config dataclasses), then draw its
    pictures and write report.html (unless pictures=False); returns `out`.

    With resume=True the run continues with the settings in its config.json; only `epochs` (to train
    longer) and `device` (to move it, e.g. a GPU run onto a CPU) may be given. tensorboard: a folder to
    log the numbers and samples of each epoch to (needs the tensorboard package)."""
    TrainCall(out, overwrite, resume, progress, tensorboard)  # types: overwrite="no" is not True
    if resume:
        changed = sorted(set(options) - RESUME_CHANGES)
        if changed:
            raise VaekitError(f"--resume continues a run with its own settings: only --epochs and --device may change, got {changed}")
        data_cfg, model_cfg, train_cfg = read_config(Path(out))
        if isinstance(options.get("epochs"), int) and not isinstance(options["epochs"], bool):
            options["epochs"] = max(options["epochs"], train_cfg.epochs)
        train_cfg = dataclasses.replace(train_cfg, **options)
    else:
        data_cfg, model_cfg, train_cfg = make_configs(**options)

    def draw(run: Path) -> None:  # in the run's lock: no other vaekit process writes it meanwhile
        from .report import render_run  # matplotlib loads only where pictures are drawn

        render_run(run, resolve_device(train_cfg.device))

    return fit(data_cfg, model_cfg, train_cfg, out, overwrite=overwrite, resume=resume, progress=progress,
               tensorboard=tensorboard, then=draw if pictures else None)


def train_recipe(
    recipe: str | Path, *, out: str | Path | None = None, overwrite: bool = False, progress: bool | None = None,
    tensorboard: str | Path | None = None, pictures: bool = True, log: Callable[[str], None] = print, **overrides
) -> list[Path]:
    """Train the stages of a recipe file (recipes.py), the options in `overrides` replacing the file's; a stage
    already finished is skipped, an interrupted one resumed. Returns the stages' run folders."""
    folders = []
    for stage in read_recipe(recipe, overrides, out):
        configs = make_configs(**stage.options)
        status = "new" if overwrite else stage_status(stage, configs)
        common = dict(progress=progress, tensorboard=tensorboard, pictures=pictures)
        if status == "finished":
            log(f"vaekit: stage {stage.name}: {stage.out} has finished training; skipped")
        elif status == "unfinished":
            log(f"vaekit: stage {stage.name}: resuming {stage.out}")
            train(stage.out, resume=True, **common, **{k: v for k, v in stage.options.items() if k in RESUME_CHANGES})
        else:
            log(f"vaekit: stage {stage.name}: training {stage.out}")
            train(stage.out, overwrite=overwrite, **common, **stage.options)
        folders.append(stage.out)
    return folders


def load(run: str | Path, device: str = "cpu") -> torch.nn.Module:
    """The best model of a run folder, in eval mode."""
    RunCall(run, device)
    return load_model(Path(run), resolve_device(device))


def diagnose(run: str | Path, device: str = "cpu") -> list[str]:
    """Lines on a run that failed quietly (posterior collapse, a dead classifier, a flat loss; health.py),
    from its training: the best epoch's validation terms and the active units of its test codes."""
    model = load(run, device)
    split, data_cfg, mode = evaluation_data(run)
    test = test_targets(split, data_cfg.split_seed, mode, next(iter(model.parameters())).device)
    metrics = ckpt.read_metrics(Path(run))
    numbers = health.training_numbers(model, metrics, test.x, test.y)
    return [f.line() for f in health.check(numbers, metrics, model.num_classes)]


@torch.no_grad()
def sample(model: torch.nn.Module, n: int, labels=None) -> torch.Tensor:
    """n mean images E[x|z], z drawn from the prior, without autograd: (n, C, H, W) in [0, 1]."""
    return model.sample(n, labels=labels)


@torch.no_grad()
def encode(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """The posterior means E[z|x] of images x: (B, C, H, W), without autograd: (B, D)."""
    return model.encode(x, y)


@torch.no_grad()
def decode(model: torch.nn.Module, z: torch.Tensor, labels=None, *, draw: bool = False) -> torch.Tensor:
    """Images of latent points z: (B, D), without autograd: the mean image E[x|z] (draw=True: x ~ p(x|z))."""
    return model.decode(z, labels, draw=draw)


@torch.no_grad()
def reconstruct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """E[x | z = E[z|x]] of images x, without autograd: (B, C, H, W) in [0, 1]."""
    return model.reconstruct(x, y)


def load_data(run: str | Path) -> dict[str, torch.utils.data.TensorDataset]:
    """The train, validation and test splits a run used, as torch TensorDatasets of (x, y): x (N, C, H, W)
    float32 grey levels in [0, 1] (binarize them as the model does: x.bernoulli() for a Bernoulli
    likelihood), y (N,) int64 labels, -1 where unknown (as in training: --labels-per-class keeps only
    some); an unlabelled dataset has y = -1 everywhere."""
    data_cfg, _, _ = read_config(Path(run))
    source = load_dataset(data_cfg)
    out = {}
    for name, split in (("train", source.train), ("val", source.val), ("test", source.test)):
        y = split.y if split.y is not None else torch.full((len(split.x),), -1, dtype=torch.long)
        out[name] = torch.utils.data.TensorDataset(split.to_float(), y)
    return out


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
    progress: bool | None = False,
) -> dict:
    """Test-set -ELBO, its parts, the IWAE estimate of -log p(x) and latent usage of a run; see evaluate.py.
    `log` hears of slow one-off work (e.g. training a judge of a model's samples)."""
    for name, value in (("--iw-samples", iw_samples), ("--samples-per-class", samples_per_class),
                        ("--limit", limit), ("--max-batch", max_batch)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise VaekitError(f"{name} must be a whole number of at least 1, got {value!r}")
    EvaluateCall(run, dataset, data, data_dir, iw_samples, device, max_batch, samples_per_class, limit, log, progress)
    dev = resolve_device(device)
    model = load_model(Path(run), dev)
    split, data_cfg, mode = evaluation_data(run, dataset, data, data_dir)
    targets = test_targets(split, data_cfg.split_seed, mode, dev)
    if limit is not None:  # the first `limit` test images
        targets.x, targets.y = targets.x[:limit], None if targets.y is None else targets.y[:limit]
    if model.labels == "all" and (targets.y is None or bool((targets.y < 0).any())):
        raise VaekitError(f"{data_cfg.dataset} lacks labels, and --model {model.cfg.model} is evaluated on "
                          "labelled images (its nll is -log p(x|c))")
    result = evaluate_model(model, targets.x, targets.y, iw_samples=iw_samples, max_batch=max_batch, progress=progress)
    result["dataset"] = data_cfg.dataset
    every_label = dataclasses.replace(data_cfg, labels_per_class=0)
    context = models.EvalContext(Path(run), lambda: load_dataset(every_label), dev, log, samples_per_class)
    result.update(model.metrics(context))
    if limit is not None:
        split = Split(split.x[:limit], None if split.y is None else split.y[:limit], split.max_value)
    known = None if split.y is None else split.y >= 0
    if model.classifies and mode != "none" and known is not None and bool(known.any()):
        # q(y|x) averaged over binarizations, as the model saw its images in training (one draw is noisy)
        probs = class_probabilities(model, Split(split.x[known], None, split.max_value), mode)
        result["label_error"], result["label_error_se"] = mean_and_se((probs.argmax(-1) != split.y[known]).double())
        result["label_error_binarizations"] = BINARIZATIONS
    m1 = label_error(Path(run), model, split, mode)  # M1: a classifier on the latent means, if the run has one
    if m1 is not None:  # named apart when the model classifies too (M1 fitted on a run of a model that classifies)
        key = "m1_label_error" if "label_error" in result else "label_error"
        result[key], result[f"{key}_se"] = m1
    # runs that failed quietly: posterior collapse, a dead classifier, a loss that never fell (health.py)
    result["warnings"] = [f.line() for f in health.check(result, ckpt.read_metrics(Path(run)), model.num_classes)]
    return result
