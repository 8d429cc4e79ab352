"""A judge for conditional samples: a small CNN classifier trained on the real training images.

conditional_accuracy = the fraction of samples x ~ p(x|z,c), z ~ p(z|c), that the classifier assigns
to the requested class c. Compared with the classifier's accuracy on real test images, it says how
recognisable the samples are. The classifier sees intensities in [0, 1]: real images as stored and
samples as their means E[x|z,c] (Bernoulli probabilities), the same kind of picture.

The judge is trained to ignore what is not the class: a shift of up to one pixel and a Gaussian blur
of up to BLUR_SIGMA pixels (of a 28x28 image; in proportion for other sizes). A VAE's E[x|z,c]
averages over the images that z could have come from, so it is smooth; a judge trained on sharp
images only reads smoothness as a class (it calls 1-pixel blurred real sandals sneakers and blurred
shirts pullovers; benchmarks/judge.py measures it, BENCHMARKS.md has the table).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from . import run_files
from .data import ImageDataset, batches
from .errors import VaekitError

WEIGHTS, REPORT = "classifier.safetensors", "classifier.json"
BLUR_SIGMA = 1.0  # the judge's largest training blur, in pixels of a 28x28 image (in proportion for other sizes)
JUDGE = "cnn2-shift1-blur1at28"  # names the judge's recipe in classifier.json; a cached judge of another recipe is retrained


class Classifier(nn.Module):
    """x: (B, C, H, W) in [0, 1] -> class logits (B, K). Two conv + max-pool blocks, then a dense
    layer: about 4M multiply-adds per 28x28 image, ~91% on Fashion-MNIST in a few epochs."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, width: int = 32):
        super().__init__()
        c, h, w = image_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Dropout(0.25), nn.Linear(2 * width * (h // 4) * (w // 4), 128), nn.ReLU(),
            nn.Dropout(0.25), nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@torch.no_grad()
def predict(classifier: Classifier, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted classes (N,) of images x: (N, C, H, W) in [0, 1]."""
    classifier.eval()
    return torch.cat([classifier(xb).argmax(-1) for xb, _ in batches(x, None, batch_size, shuffle=False)])


def accuracy(classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(classifier, x) == y).float().mean())


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image x[i]: (B, C, H, W) with its own Gaussian of std sigma[i] pixels (B,), edges replicated."""
    b, c, h, w = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))  # the kernel reaches 3 sigma
    r = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    kernel = (kernel / kernel.sum(-1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, 2 radius + 1)
    x = x.reshape(1, b * c, h, w)  # one group per image and channel
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=b * c)
    return x.reshape(b, c, h, w)


def train_classifier(
    dataset: ImageDataset, device: torch.device, *, epochs: int | None = None, seed: int = 0,
    blur_sigma: float = BLUR_SIGMA,
) -> tuple[Classifier, float]:
    """Train on the training split (best epoch by validation accuracy); returns (classifier, test accuracy).
    blur_sigma: the largest training blur in pixels of a 28x28 image, scaled to the image size
    (0: none, the judge of benchmarks/judge.py's first row); each image gets sigma ~ U(0, that).
    Repeatable: initialisation, order, augmentation and dropout all follow `seed`."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _train_classifier(dataset, device, epochs, seed, blur_sigma)


def _train_classifier(dataset: ImageDataset, device: torch.device, epochs: int | None, seed: int,
                      blur_sigma: float) -> tuple[Classifier, float]:
    gen = torch.Generator().manual_seed(seed)
    classifier = Classifier(dataset.image_shape, dataset.num_classes).to(device)
    known = dataset.train.y >= 0  # the judge learns from the images whose label is known
    x, y = dataset.train.to_float()[known].to(device), dataset.train.y[known].to(device)
    blur_sigma = blur_sigma * min(dataset.image_shape[1:]) / 28  # 1 px at 28x28 is 0.29 px at 8x8
    val_known = dataset.val.y >= 0
    xv, yv = dataset.val.to_float()[val_known].to(device), dataset.val.y[val_known].to(device)
    # About 300k images' worth of steps: 60 passes over digits, 6 over Fashion-MNIST.
    epochs = epochs or max(5, min(60, math.ceil(300_000 / len(x))))
    optimizer = torch.optim.Adam(classifier.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=epochs * math.ceil(len(x) / 128))
    best_acc, best = -1.0, None
    for _ in range(epochs):
        classifier.train()
        order = torch.randperm(len(x), generator=gen).to(device)
        for idx in order.split(128):
            xb = x[idx]
            # Augmentation (see the module docstring): shift by up to one pixel, blur by up to BLUR_SIGMA.
            shift = [int(s) for s in torch.randint(-1, 2, (2,), generator=gen)]
            xb = torch.roll(xb, shifts=shift, dims=(2, 3))
            if blur_sigma > 0:
                xb = gaussian_blur(xb, (torch.rand(len(xb), generator=gen) * blur_sigma).to(device))
            loss = F.cross_entropy(classifier(xb), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        acc = accuracy(classifier, xv, yv)
        if acc > best_acc:
            best_acc, best = acc, {k: v.detach().clone() for k, v in classifier.state_dict().items()}
    classifier.load_state_dict(best)
    test_known = dataset.test.y >= 0
    test_acc = accuracy(classifier, dataset.test.to_float()[test_known].to(device), dataset.test.y[test_known].to(device))
    return classifier.eval(), test_acc


def cached_classifier(
    run: Path, dataset: ImageDataset, device: torch.device, *, log: Callable[[str], None] | None = None
) -> tuple[Classifier, float]:
    """The run's classifier from classifier.safetensors, trained and cached there on first use
    (`log`, if given, is told before training starts: it takes minutes on Fashion-MNIST)."""
    run = Path(run)
    if (run / WEIGHTS).is_file() and (run / REPORT).is_file():
        report = read_judge_report(run / REPORT)
        classifier = Classifier(tuple(report["image_shape"]), report["num_classes"])
        test_acc = float(report["test_accuracy"])
        # A judge of an older recipe, or trained on other data (evaluate --dataset), is retrained below.
        if report.get("judge") == JUDGE and report.get("data") == dataset.fingerprint:
            tensors, _ = ckpt.load_tensors(run / WEIGHTS)
            ckpt.load_state_dict_into(classifier, tensors, run / WEIGHTS)
            return classifier.to(device).eval(), test_acc
    if log is not None:
        log(f"training the judge of conditional samples (once; cached in {run / WEIGHTS})")
    classifier, test_acc = train_classifier(dataset, device)
    ckpt.save_tensors(run / WEIGHTS, classifier.state_dict())
    report = {"judge": JUDGE, "image_shape": list(dataset.image_shape), "num_classes": dataset.num_classes,
              "test_accuracy": test_acc, "data": dataset.fingerprint}
    ckpt.atomic_write(run / REPORT, (json.dumps(report, indent=2) + "\n").encode())
    return classifier, test_acc


def read_judge_report(path: Path) -> dict:
    """classifier.json, checked: the judge's recipe, image shape, classes, test accuracy (and data fingerprint)."""
    return run_files.read_object(path, {
        "image_shape": lambda v: isinstance(v, list) and len(v) == 3 and all(run_files.is_count(d, 1) and d <= 4096
                                                                             for d in v),
        "num_classes": lambda v: run_files.is_count(v, 2) and v <= 65536,
        "test_accuracy": lambda v: run_files.is_number(v) and 0 <= v <= 1,
    }, f"delete it and {WEIGHTS} to retrain the judge")


def judge_conditional_samples(model, context) -> dict:
    """The judge's report on a model that draws classes: its accuracy on real test images, and the
    fraction of each class's samples it recognises as that class (context: models.EvalContext)."""
    if context.run is None:
        raise VaekitError("judging conditional samples needs the run folder, to cache the judge in")
    dataset = context.dataset()
    if dataset.train.y is None or dataset.num_classes != model.num_classes:  # nothing to train the judge on
        if context.log is not None:
            context.log(f"'{dataset.name}' has no labels of the model's {model.num_classes} classes to train the judge "
                        "of conditional samples on: conditional_accuracy is left out")
        return {}
    classifier, test_accuracy = cached_classifier(context.run, dataset, context.device, log=context.log)
    with torch.random.fork_rng(devices=[context.device] if context.device.type == "cuda" else []):
        torch.manual_seed(0)
        per_class = conditional_accuracy_per_class(model, classifier, context.samples_per_class)
    return {"classifier_accuracy": test_accuracy, "conditional_accuracy": sum(per_class) / len(per_class),
            "conditional_accuracy_per_class": per_class, "samples_per_class": context.samples_per_class}


@torch.no_grad()
def conditional_accuracy_per_class(
    model, classifier: Classifier, samples_per_class: int = 1000, batch_size: int = 2000
) -> list[float]:
    """For each class c, the fraction of samples E[x|z,c], z ~ p(z|c), that the classifier labels c."""
    k = model.num_classes
    device = next(model.parameters()).device
    correct = torch.zeros(k, dtype=torch.long, device=device)
    total = k * samples_per_class  # class c's samples are numbers c*spc .. (c+1)*spc - 1, in batches
    for start in range(0, total, batch_size):
        c = torch.arange(start, min(start + batch_size, total), device=device) // samples_per_class
        hit = predict(classifier, model.sample(len(c), labels=c)) == c
        correct += torch.bincount(c[hit], minlength=k)
    return (correct.double() / samples_per_class).tolist()
