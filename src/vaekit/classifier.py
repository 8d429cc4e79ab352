"""A judge for conditional samples: a small CNN classifier trained on the real training images.

conditional_accuracy = the fraction of samples x ~ p(x|z,c), z ~ p(z|c), that the classifier assigns
to the requested class c. Compared with the classifier's accuracy on real test images, it says how
recognisable the samples are. The classifier sees intensities in [0, 1]: real images as stored and
samples as their means E[x|z,c] (Bernoulli probabilities), the same kind of picture.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from .data import ImageDataset, batches
from .errors import VaekitError

WEIGHTS, REPORT = "classifier.safetensors", "classifier.json"


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


def train_classifier(
    dataset: ImageDataset, device: torch.device, *, epochs: int | None = None, seed: int = 0
) -> tuple[Classifier, float]:
    """Train on the training split (best epoch by validation accuracy); returns (classifier, test accuracy)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        classifier = Classifier(dataset.image_shape, dataset.num_classes).to(device)
    x, y = dataset.train.to_float().to(device), dataset.train.y.to(device)
    xv, yv = dataset.val.to_float().to(device), dataset.val.y.to(device)
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
            # Light augmentation: shift by up to one pixel, so samples that are slightly off-centre still count.
            shift = [int(s) for s in torch.randint(-1, 2, (2,), generator=gen)]
            xb = torch.roll(xb, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(classifier(xb), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        acc = accuracy(classifier, xv, yv)
        if acc > best_acc:
            best_acc, best = acc, {k: v.detach().clone() for k, v in classifier.state_dict().items()}
    classifier.load_state_dict(best)
    test_acc = accuracy(classifier, dataset.test.to_float().to(device), dataset.test.y.to(device))
    return classifier.eval(), test_acc


def cached_classifier(run: Path, dataset: ImageDataset, device: torch.device) -> tuple[Classifier, float]:
    """The run's classifier from classifier.safetensors, trained and cached there on first use."""
    run = Path(run)
    if (run / WEIGHTS).is_file() and (run / REPORT).is_file():
        try:
            report = json.loads((run / REPORT).read_text())
            classifier = Classifier(tuple(report["image_shape"]), report["num_classes"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
            raise VaekitError(f"{run / REPORT} is damaged ({e}): delete it and {WEIGHTS} to retrain the judge") from None
        tensors, _ = ckpt.load_tensors(run / WEIGHTS)
        ckpt.load_state_dict_into(classifier, tensors, run / WEIGHTS)
        return classifier.to(device).eval(), report["test_accuracy"]
    classifier, test_acc = train_classifier(dataset, device)
    ckpt.save_tensors(run / WEIGHTS, classifier.state_dict())
    report = {"image_shape": list(dataset.image_shape), "num_classes": dataset.num_classes, "test_accuracy": test_acc}
    ckpt.atomic_write(run / REPORT, (json.dumps(report, indent=2) + "\n").encode())
    return classifier, test_acc


@torch.no_grad()
def conditional_accuracy_per_class(
    model, classifier: Classifier, samples_per_class: int = 1000, batch_size: int = 2000
) -> list[float]:
    """For each class c, the fraction of samples E[x|z,c], z ~ p(z|c), that the classifier labels c."""
    k = model.cfg.num_classes
    labels = torch.arange(k, device=model.prior_loc.device).repeat_interleave(samples_per_class)
    correct = torch.zeros(k, dtype=torch.long, device=labels.device)
    for c in labels.split(batch_size):
        hit = predict(classifier, model.sample(len(c), labels=c)) == c
        correct += torch.bincount(c[hit], minlength=k)
    return (correct.double() / samples_per_class).tolist()


def conditional_accuracy(model, classifier: Classifier, samples_per_class: int = 1000, batch_size: int = 2000) -> float:
    """Fraction of all class-conditional samples (samples_per_class of each class) labelled as their class."""
    per_class = conditional_accuracy_per_class(model, classifier, samples_per_class, batch_size)
    return sum(per_class) / len(per_class)
