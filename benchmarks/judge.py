"""How the judge of conditional samples reads blur: a judge trained on sharp images against
vaekit's judge (trained with a Gaussian blur of up to 1 pixel), on real test images, on the same
images blurred, and on a conditional VAE's reconstructions of the test images (E[x|z,c] at the
posterior mean, with their own labels) and its samples.

    python benchmarks/judge.py RUN [RUN ...]      # RUN: CVAE run folders of one dataset

A VAE's sample E[x|z,c] averages over the images z could have come from, so it is smooth. If a
judge calls a real sandal blurred by one pixel a sneaker, it measures sharpness, not the class.
Prints two markdown tables: accuracy per column, with the ratio of the samples' accuracy to the
judge's on real test images (the issue's bar is >= 0.95); then the accuracy per class.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

import vaekit  # noqa: E402
from vaekit import runs  # noqa: E402
from vaekit.classifier import (  # noqa: E402
    BLUR_SIGMA, accuracy, conditional_accuracy_per_class, gaussian_blur, predict, train_classifier)
from vaekit.data import load_dataset  # noqa: E402

BLURS = (0.5, 1.0, 1.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="CVAE run folders trained on the same data")
    parser.add_argument("--samples-per-class", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data_cfg, _, _ = runs.read_config(args.runs[0])
    dataset = load_dataset(data_cfg)
    x, y = dataset.test.to_float(), dataset.test.y
    scale = min(dataset.image_shape[1:]) / 28  # blurs are given in pixels of a 28x28 image, as the judge's
    models = [vaekit.load(run).eval() for run in args.runs]
    cpu = torch.device("cpu")

    rows, class_rows = [], []
    for name, sigma in [("sharp images only", 0.0), (f"blur up to {BLUR_SIGMA:g} (vaekit)", BLUR_SIGMA)]:
        t0 = time.perf_counter()
        judge, _ = train_classifier(dataset, cpu, seed=args.seed, blur_sigma=sigma)
        real, real_per_class = scores(judge, x, y, dataset.num_classes)
        blurred, blurred_per_class = zip(*(
            scores(judge, gaussian_blur(x, torch.full((len(x),), s * scale)), y, dataset.num_classes) for s in BLURS))
        class_rows += [(name, "real", real_per_class), (name, "real, blurred 1", blurred_per_class[BLURS.index(1.0)])]
        generated = []
        for run, model in zip(args.runs, models):
            recon = torch.cat([model.reconstruct(xb, yb) for xb, yb in zip(x.split(1000), y.split(1000))])
            torch.manual_seed(args.seed)
            per_class = conditional_accuracy_per_class(model, judge, args.samples_per_class)
            generated.append((accuracy(judge, recon, y), sum(per_class) / len(per_class)))
            class_rows.append((name, f"{run}: samples", per_class))
        rows.append((name, real, blurred, generated))
        print(f"{name}: trained in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    print(f"\n{data_cfg.dataset}: judge accuracy on the {len(x):,} test images (blur: Gaussian std in pixels of "
          f"a 28x28 image); CVAE samples: {args.samples_per_class:,} per class, ratio to the judge's accuracy on "
          "real images\n")
    head = ["judge trained on", "real"] + [f"real, blurred {s:g}" for s in BLURS]
    for run in args.runs:
        head += [f"{run}: reconstructions", f"{run}: samples (ratio)"]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for name, real, blurred, generated in rows:
        cells = [name, f"{real:.3f}"] + [f"{b:.3f}" for b in blurred]
        for recon, samples in generated:
            cells += [f"{recon:.3f}", f"{samples:.3f} ({samples / real:.3f})"]
        print("| " + " | ".join(cells) + " |")

    print("\nPer class:\n")
    print("| judge trained on | images | " + " | ".join(f"class {k}" for k in range(dataset.num_classes)) + " |")
    print("|---|---|" + "---:|" * dataset.num_classes)
    for name, images, accs in class_rows:
        print(f"| {name} | {images} | " + " | ".join(f"{a:.2f}" for a in accs) + " |")


def scores(judge, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[float, list[float]]:
    """The judge's accuracy on images x with labels y: overall, and on the images of each class."""
    hit = predict(judge, x) == y
    return float(hit.float().mean()), [float(hit[y == k].float().mean()) for k in range(num_classes)]


if __name__ == "__main__":
    main()
