"""M1 (Kingma et al. 2014): a classifier of the latent means E[z|x] of a run's labelled training
images, for data whose labels are mostly missing; and `vaekit predict` for any run that classifies.

The classifier is scikit-learn's multinomial logistic regression on standardised codes (calibrated
class probabilities for `vaekit predict`, and no cross-validation that a few labels per class could
not feed). Nothing is
pickled: the run folder keeps the labelled codes and labels (m1.safetensors) and the recipe (m1.json),
and the classifier is refitted from them when needed (deterministic; a second on a few thousand codes).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .data import UNKNOWN, fixed_targets, keep_labels_per_class, load_dataset
from .errors import VaekitError

WEIGHTS, RECIPE = "m1.safetensors", "m1.json"
M1_RECIPE = "logistic-regression-standardised"


def _classifier(codes: np.ndarray, labels: np.ndarray):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000)).fit(codes, labels)


@torch.no_grad()
def _codes(model, x: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    return torch.cat([model.encode(xb) for xb in x.split(batch_size)]).double().cpu().numpy()


def fit_m1(run: Path, labels_per_class: int | None = None) -> dict:
    """Fit M1 on the run's labelled training images (the run's own labels, or `labels_per_class` of
    each class); store it with the run; returns {"labelled", "val_error"}."""
    data_cfg, model_cfg, _ = ckpt.read_config(run)
    model = ckpt.load_model(run)
    if labels_per_class is not None and labels_per_class < 1:
        raise VaekitError(f"--labels-per-class must be at least 1, got {labels_per_class}")
    per_class = labels_per_class if labels_per_class is not None else data_cfg.labels_per_class
    dataset = load_dataset(data_cfg.__class__(**{**data_cfg.__dict__, "labels_per_class": 0}))
    if dataset.train.y is None or dataset.num_classes < 2:
        raise VaekitError(f"M1 needs class labels of at least 2 classes, and '{data_cfg.dataset}' has none")
    train = keep_labels_per_class(dataset.train, per_class, data_cfg.split_seed) if per_class else dataset.train
    known = train.y >= 0
    missing = sorted(set(range(dataset.num_classes)) - set(train.y[known].tolist()))
    if missing:
        raise VaekitError(f"M1 needs a labelled training image of every class; classes {missing[:10]} have none")
    mode = _mode(data_cfg, model_cfg)
    x = fixed_targets(train, mode, data_cfg.split_seed + 1, "cpu").x[known]
    codes, labels = _codes(model, x), train.y[known].numpy()
    classifier = _classifier(codes, labels)
    val = fixed_targets(dataset.val, mode, data_cfg.split_seed + 2, "cpu")
    val_error = float(np.mean(classifier.predict(_codes(model, val.x)) != val.y.numpy()))
    ckpt.save_tensors(run / WEIGHTS, {"codes": torch.from_numpy(codes), "labels": torch.from_numpy(labels)})
    record = {"recipe": M1_RECIPE, "labels_per_class": per_class, "labelled": int(known.sum()),
              "num_classes": dataset.num_classes, "val_error": val_error,
              "labelled_source_index": train.index[known].tolist()}
    ckpt.atomic_write(run / RECIPE, (json.dumps(record) + "\n").encode())
    return record


def _mode(data_cfg, model_cfg) -> str:
    from .data import binarization

    return binarization(data_cfg.binarize, model_cfg.likelihood, load_dataset(data_cfg))


def load_m1(run: Path):
    """The run's M1 classifier refitted from its stored codes, or None if it has none."""
    if not (run / WEIGHTS).is_file():
        return None
    tensors, _ = ckpt.load_tensors(run / WEIGHTS)
    try:
        return _classifier(tensors["codes"].numpy(), tensors["labels"].numpy())
    except KeyError as e:
        raise VaekitError(f"{run / WEIGHTS} lacks {e}: delete it and run `vaekit m1 {run}` again") from None


def label_error(run: Path, model, x: torch.Tensor, y: torch.Tensor | None) -> tuple[float, float | None] | None:
    """M1's test error on the images with known labels (mean, standard error), if the run has M1."""
    classifier = load_m1(run)
    if classifier is None or y is None or not bool((y >= 0).any()):
        return None
    known = (y >= 0).cpu()
    wrong = classifier.predict(_codes(model, x[known.to(x.device)])) != y[known.to(y.device)].cpu().numpy()
    se = float(wrong.std(ddof=1) / math.sqrt(len(wrong))) if len(wrong) > 1 else None
    return float(wrong.mean()), se


def predict_csv(run: Path, data: str | None = None) -> str:
    """CSV: index, predicted label, then one probability column per class; from M1 if the run has it,
    else from a model that classifies (predict_proba, e.g. M2's q(y|x))."""
    from .api import evaluation_data
    from .data import test_targets

    model = ckpt.load_model(run)
    split, data_cfg, mode = evaluation_data(run, data=data)
    x = test_targets(split, data_cfg.split_seed, mode, "cpu").x
    classifier = load_m1(run)
    if classifier is not None:
        probs = classifier.predict_proba(_codes(model, x))
        classes = classifier.classes_
    elif hasattr(model, "predict_proba"):
        probs = torch.cat([model.predict_proba(xb) for xb in x.split(1024)]).double().numpy()
        classes = np.arange(probs.shape[1])
    else:
        raise VaekitError(f"{run} does not classify: train with --model m2, or fit M1 with `vaekit m1 {run}`")
    out = io.StringIO()
    index = split.index.tolist() if split.index is not None else range(len(x))
    out.write("index,label," + ",".join(f"p{c}" for c in classes) + "\n")
    for i, p in zip(index, probs):
        out.write(f"{i},{classes[int(np.argmax(p))]}," + ",".join(f"{v:.6f}" for v in p) + "\n")
    return out.getvalue()


__all__ = ["fit_m1", "load_m1", "label_error", "predict_csv", "UNKNOWN"]
