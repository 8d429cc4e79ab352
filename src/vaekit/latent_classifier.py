"""M1 (Kingma et al. 2014): a classifier on the latent means of a run's training images, for data
whose labels are mostly missing; and `vaekit predict` for any run that classifies.

The feature of an image is its expected code: E[z|x] averaged over BINARIZATIONS seeded Bernoulli
draws of its intensities when the model was trained on binarized pixels (one draw of an 8x8 digit
loses so much that its code is a noisy feature: on digits with 10 labels per class, one draw gave
M1 a test error of 0.27-0.35, the average of 20 draws 0.09-0.13), and E[z|x] of the pixels as they
are otherwise. Features are used as they are, not standardised: a collapsed latent dimension has a
mean near 0 for every image, and scaling it to unit variance hands the classifier pure noise (with 10
labels per class, standardising raised the logistic regression's test error from 0.095 to 0.117 on
digits and from 0.32 to 0.37 on Fashion-MNIST, and label spreading's from 0.06 to 0.12 on digits).

Two classifiers (scikit-learn), `classifier=`:

  spreading  (default) transductive, as Kingma et al.'s M1 (a transductive SVM): LabelSpreading with a
             kNN graph (n_neighbors 10, alpha 0.2) over the codes of ALL training images, labelled or
             not; a new image gets the label distribution summed over its 10 nearest training codes.
             Chosen on digits' VALIDATION split (72 images; VAE seeds 0-2, 10 and 100 labels per class)
             among n_neighbors 10/20/30 x alpha 0.2/0.5/0.8/0.99 x standardised or not: k 10 with alpha
             0.2 or 0.5 had the lowest validation error (0.083 at 10 labels per class, 0.023 at 100);
             the tie went to scikit-learn's default alpha, 0.2. Then confirmed, unchanged, on
             Fashion-MNIST (BENCHMARKS.md, "Semi-supervised classification").
  logistic   multinomial logistic regression (C 1) on the labelled codes alone: inductive, calibrated.

Nothing is pickled: the run folder keeps the features and labels (m1.safetensors: for spreading the
codes of every training image, label -1 where unknown) and the recipe (m1.json), and the classifier is
refitted from them when needed (deterministic; under a second on digits, about 10 s for the 57,000
codes of Fashion-MNIST).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from . import fingerprint, run_files, runs
from .data import Split, binarization, keep_labels_per_class, label_draw_seed, load_dataset
from .errors import VaekitError
from .models import classifying_models

WEIGHTS, RECIPE = "m1.safetensors", "m1.json"
BINARIZATIONS = 20
NEIGHBOURS, SPREAD_ALPHA = 10, 0.2
M1_RECIPES = {"spreading": f"label-spreading-knn{NEIGHBOURS}-alpha{SPREAD_ALPHA:g}-mean-code-of-20-binarizations",
              "logistic": "logistic-regression-mean-code-of-20-binarizations"}
M1_RECIPE = M1_RECIPES["spreading"]


def _classifier(features: np.ndarray, labels: np.ndarray, recipe: str = M1_RECIPE):
    """The fitted classifier of `recipe`; `labels` is -1 where unknown (spreading only)."""
    if recipe == M1_RECIPES["logistic"]:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=1.0, max_iter=5000).fit(features, labels)
    from sklearn.semi_supervised import LabelSpreading

    k = min(NEIGHBOURS, len(features))
    return LabelSpreading(kernel="knn", n_neighbors=k, alpha=SPREAD_ALPHA, max_iter=100).fit(features, labels)


@torch.no_grad()
def features(model, split: Split, mode: str, batch_size: int = 1024) -> np.ndarray:
    """The expected code of each image of the split: (N, D) float64 (see the module docstring)."""
    device = next(model.parameters()).device
    draws = BINARIZATIONS if mode != "none" else 1
    out = []
    for x in split.to_float().split(batch_size):
        x = x.to(device)
        codes = [model.encode(torch.bernoulli(x, generator=torch.Generator(device).manual_seed(i)) if mode != "none"
                              else x) for i in range(draws)]
        out.append(torch.stack(codes).mean(0).double().cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def class_probabilities(model, split: Split, mode: str, batch_size: int = 1024) -> torch.Tensor:
    """q(y|x) of a model that classifies, for each image of the split: (N, K) float64, averaged over the
    same BINARIZATIONS draws as the codes when the model was trained on binarized pixels. Such a model saw a
    fresh draw of each image at every step; one fixed draw of a test image is one noisy view of it (on
    digits with 10 labels per class, M2's test error over 5 label draws: 0.102 from one draw, 0.033 from
    the average of 20, BENCHMARKS.md)."""
    device = next(model.parameters()).device
    draws = BINARIZATIONS if mode != "none" else 1
    out = []
    for x in split.to_float().split(batch_size):
        x = x.to(device)
        probs = [model.predict_proba(torch.bernoulli(x, generator=torch.Generator(device).manual_seed(i))
                                     if mode != "none" else x) for i in range(draws)]
        out.append(torch.stack(probs).double().mean(0).cpu())
    return torch.cat(out)


def _run_data(run: Path):
    data_cfg, model_cfg, _ = runs.read_config(run)
    dataset = load_dataset(dataclasses.replace(data_cfg, labels_per_class=0))
    fingerprint.check(run, dataset)
    return data_cfg, dataset, binarization(data_cfg.binarize, model_cfg.likelihood, dataset)


def fit_m1(run: Path, labels_per_class: int | None = None, classifier: str = "spreading",
           label_seed: int | None = None) -> dict:
    """Fit M1 on the run's training images with the run's own labels, or `labels_per_class` of each
    class drawn by `label_seed` (default: the run's); `classifier`: spreading or logistic, see the module
    docstring; store it with the run; returns the recipe with "labelled" and "val_error"."""
    if labels_per_class is not None and (isinstance(labels_per_class, bool) or labels_per_class < 1):
        raise VaekitError(f"--labels-per-class must be at least 1, got {labels_per_class}")
    if classifier not in M1_RECIPES:
        raise VaekitError(f"--classifier must be one of {', '.join(M1_RECIPES)}, got {classifier!r}")
    recipe = M1_RECIPES[classifier]
    data_cfg, dataset, mode = _run_data(run)
    model = runs.load_model(run)
    per_class = labels_per_class if labels_per_class is not None else data_cfg.labels_per_class
    if dataset.train.y is None or dataset.num_classes < 2:
        raise VaekitError(f"M1 needs class labels of at least 2 classes, and '{data_cfg.dataset}' has none")
    if label_seed is not None:
        data_cfg = dataclasses.replace(data_cfg, label_seed=label_seed)
    train = keep_labels_per_class(dataset.train, per_class, label_draw_seed(data_cfg)) if per_class else dataset.train
    known = train.y >= 0
    missing = sorted(set(range(dataset.num_classes)) - set(train.y[known].tolist()))
    if missing:
        raise VaekitError(f"M1 needs a labelled training image of every class; classes {missing[:10]} have none")
    labelled = Split(train.x[known], train.y[known], train.max_value, train.index[known])
    if classifier == "spreading":  # every training image, the unknown labels -1
        codes, labels = features(model, train, mode), np.where(known.numpy(), train.y.numpy(), -1)
    else:
        codes, labels = features(model, labelled, mode), labelled.y.numpy()
    fitted = _classifier(codes, labels, recipe)
    val_known = dataset.val.y >= 0
    val = Split(dataset.val.x[val_known], dataset.val.y[val_known], dataset.val.max_value)
    val_error = float(np.mean(fitted.predict(features(model, val, mode)) != val.y.numpy()))
    ckpt.save_tensors(run / WEIGHTS, {"features": torch.from_numpy(codes), "labels": torch.from_numpy(labels)})
    record = {"recipe": recipe, "classifier": classifier, "labels_per_class": per_class, "labelled": int(known.sum()),
              "num_classes": dataset.num_classes, "val_error": val_error,
              "labelled_source_index": labelled.index.tolist()}
    ckpt.atomic_write(run / RECIPE, (json.dumps(record) + "\n").encode())
    return record


def load_m1(run: Path):
    """The run's M1 classifier refitted from its stored features, or None if it has none."""
    if not (run / WEIGHTS).is_file():
        return None
    features, labels, recipe = read_m1(run)
    if recipe not in M1_RECIPES.values():
        raise VaekitError(f"{run / RECIPE} was made with another M1 recipe ({recipe}): run `vaekit m1 {run}` again")
    return _classifier(features, labels, recipe)


def read_m1(run: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """m1.safetensors and m1.json, checked: features (N, D) finite floats, labels (N,) in -1..K-1 with at
    least 2 classes known, and the recipe's name."""
    fix = f"run `vaekit m1 {run}` again"
    tensors, _ = ckpt.load_tensors(run / WEIGHTS)
    features, labels = tensors.get("features"), tensors.get("labels")
    ok = (features is not None and labels is not None and features.dim() == 2 and features.is_floating_point()
          and labels.dim() == 1 and not labels.is_floating_point() and labels.dtype != torch.bool
          and len(labels) == len(features) and features.shape[1] >= 1)
    if not ok:
        raise VaekitError(f"{run / WEIGHTS} is damaged (its features and labels have the wrong shapes or types): {fix}")
    if not bool(torch.isfinite(features).all()):
        raise VaekitError(f"{run / WEIGHTS} is damaged (its features hold NaN or infinite values): {fix}")
    known = labels[labels >= 0]
    if bool((labels < -1).any()) or len(known.unique()) < 2:
        raise VaekitError(f"{run / WEIGHTS} is damaged (its labels are not -1 or classes, of at least 2 classes): {fix}")
    doc = run_files.read_object(run / RECIPE, {"recipe": lambda v: isinstance(v, str)}, fix)
    return features.double().numpy(), labels.long().numpy(), doc["recipe"]


def _codes_for(classifier, codes: np.ndarray, run: Path) -> np.ndarray:
    """The model's codes, if they have the width the stored M1 was fitted on."""
    if codes.shape[1] != classifier.n_features_in_:
        raise VaekitError(f"{run / WEIGHTS} holds codes of {classifier.n_features_in_} numbers but the model's have "
                          f"{codes.shape[1]}: it is another run's M1; run `vaekit m1 {run}` again")
    return codes


def label_error(run: Path, model, split: Split, mode: str) -> tuple[float, float | None] | None:
    """M1's test error on the images of `split` with known labels (mean, standard error), if the run has M1."""
    classifier = load_m1(run)
    if classifier is None or split.y is None or not bool((split.y >= 0).any()):
        return None
    known = split.y >= 0
    split = Split(split.x[known], split.y[known], split.max_value)
    wrong = classifier.predict(_codes_for(classifier, features(model, split, mode), run)) != split.y.numpy()
    se = float(wrong.std(ddof=1) / math.sqrt(len(wrong))) if len(wrong) > 1 else None
    return float(wrong.mean()), se


def predict_csv(run: Path, data: str | None = None) -> str:
    """CSV: index, predicted label, then one probability column per class; from M1 if the run has it,
    else from a model that classifies (its q(y|x), averaged over binarizations: class_probabilities)."""
    model = runs.load_model(run)
    split, _, mode = runs.evaluation_data(run, data=data)
    classifier = load_m1(run)
    if classifier is not None:
        probs = classifier.predict_proba(_codes_for(classifier, features(model, split, mode), run))
        classes = classifier.classes_
    elif model.classifies:
        probs = class_probabilities(model, split, mode).numpy()
        classes = np.arange(probs.shape[1])
    else:
        raise VaekitError(f"{run} does not classify: train with --model {' or '.join(classifying_models())}, or fit M1 "
                          f"with `vaekit m1 {run}`")
    names = ckpt.class_names(run, model.cfg.num_classes)  # an image folder's class names, else the numbers
    named = [names[int(c)] if 0 <= int(c) < len(names) else str(c) for c in classes]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    index = split.index.tolist() if split.index is not None else range(len(split))
    numbered = names == [str(k) for k in range(len(names))]
    writer.writerow(["index", "label", *(f"p{n}" if numbered else f"p_{n}" for n in named)])
    for i, p in zip(index, probs):
        writer.writerow([i, named[int(np.argmax(p))], *(f"{v:.6f}" for v in p)])
    return out.getvalue()
