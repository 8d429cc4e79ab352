"""Semi-supervised classification: test error against labels per class, for one dataset.

    OMP_NUM_THREADS=1 python benchmarks/semi_supervised.py --dataset digits --labels 10 100 --seeds 0 1 2
    python benchmarks/semi_supervised.py --dataset fashion-mnist --labels 10 100 --seeds 0 --train-limit 10000

Rows (each "mean ± standard deviation over seeds" of the TEST error, plus training time):

  supervised  a classifier with the architecture of M2's q(y|x) (vaekit.nets.make_classifier with the
              same arch, width, hidden and image shape) trained with AdamW on the labelled training
              images alone: the same seeded subset as vaekit keeps (keep_labels_per_class(train, N,
              split_seed)). Inputs as M2 sees them: a fresh Bernoulli sample of the [0, 1] intensities
              each step; validation and test on vaekit's fixed binarizations (split_seed + 2 for the
              validation split, test_targets for the test split). Early stopping: the weights of the
              evaluation (every 25 steps) with the lowest validation error, ties broken by validation
              log-loss, within a fixed budget of steps.
              Recipe (--recipe, default "dropout"): AdamW lr 1e-3, weight decay 1e-2, dropout 0.5
              before the logits layer, batch min(64, labelled images), 3000 steps. Chosen among the
              RECIPES below on digits, seed 0, 10 and 100 labels per class, by VALIDATION error (the
              test errors of all five were within noise of each other; see the note at RECIPES).
  M1          a plain VAE (vaekit.train with the same arch), trained once per seed and reused for every
              label count and classifier, then fit_m1(run, labels_per_class=N, classifier=...) on the
              code of each image averaged over 20 binarizations: "m1" label spreading over a kNN graph
              of the codes of all training images (vaekit m1's default, transductive), "m1-logistic" a
              logistic regression on the labelled codes alone. Time: the VAE's training plus that fit.
  M2          vaekit.train(model="m2", labels_per_class=N); its q(y|x).

Test error: the label_error of vaekit.evaluate.evaluate(model, test images, iw_samples=1) for M2 (q(y|x)
on the fixed binarization of the test images; the label error does not depend on K), and
vaekit.latent_classifier.label_error for M1 (vaekit evaluate reports both; calling them directly skips
the judge of conditional samples, minutes on Fashion-MNIST). A second table averages each classifier's
class probabilities over the 20 binarizations that M1's feature averages over. The test split is vaekit's: the official test set of the MNIST
family, or a seeded 20% of digits / of a .npz file (split_seed 0). The labelled subset depends on
split_seed only, not on the training seed: the spread over seeds is that of training (initialisation,
batches, binarization), not of which images happen to be labelled.

--train-limit N: train on only the first N images of the dataset's training split (as vaekit splits
it, so none of them is in its test split), written as float intensities in [0, 1] to an .npz in
--work. vaekit re-splits an .npz (20% held out as its own test split, unused here; 5% of the rest
for validation), so about 0.76 N images train; the test error is measured on the dataset's own test
split: vaekit.evaluate(run, dataset=NAME). The supervised baseline uses the same .npz splits for
its labelled images and validation, and the same test split.

Times: CPU seconds (time.process_time of the training, this process, all threads) and wall seconds.
Evaluation is not timed. Run with OMP_NUM_THREADS=1 for comparable CPU numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import vaekit  # noqa: E402
from vaekit.config import DataConfig, ModelConfig  # noqa: E402
from vaekit.data import (  # noqa: E402
    VAL_SEED_OFFSET, binarization, fixed_targets, keep_labels_per_class, load_dataset, test_targets,
)
from vaekit.augment import random_shift  # noqa: E402
from vaekit.evaluate import evaluate as evaluate_terms  # noqa: E402
from vaekit.latent_classifier import BINARIZATIONS, fit_m1, label_error  # noqa: E402
from vaekit.nets import make_classifier  # noqa: E402

# Supervised-only recipes, compared on digits, seed 0 (validation error on 72 images / test error on 359),
# 10 labels per class | 100 labels per class:
#   plain         0.208 / 0.148 | 0.056 / 0.097
#   wd            0.208 / 0.150 | 0.056 / 0.097
#   dropout       0.167 / 0.164 | 0.069 / 0.086   <- lowest mean validation error: the default
#   dropout-long  0.167 / 0.164 | 0.069 / 0.084
#   wd-strong     0.194 / 0.164 | 0.083 / 0.081
# (a test error's standard error is about 0.02 at 15%: the recipes are within noise on the test set).
RECIPES = {
    "plain": {"lr": 1e-3, "weight_decay": 0.0, "dropout": 0.0, "steps": 3000},
    "wd": {"lr": 1e-3, "weight_decay": 1e-2, "dropout": 0.0, "steps": 3000},
    "dropout": {"lr": 1e-3, "weight_decay": 1e-2, "dropout": 0.5, "steps": 3000},
    "dropout-long": {"lr": 1e-3, "weight_decay": 1e-2, "dropout": 0.5, "steps": 6000},
    "wd-strong": {"lr": 1e-3, "weight_decay": 1e-1, "dropout": 0.0, "steps": 3000},
}
EVAL_EVERY = 25
METHODS = ("logistic-pixels", "supervised", "m1", "m1-logistic", "m2", "m1+m2")
M1_CLASSIFIERS = {"m1": "spreading", "m1-logistic": "logistic"}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Timer:
    def __enter__(self):
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cpu, self.wall = time.process_time() - self.cpu0, time.perf_counter() - self.wall0


@torch.no_grad()
def averaged_error(predict_proba, split) -> float:
    """Test error when the class probabilities are averaged over the same BINARIZATIONS seeded
    Bernoulli draws of the intensities that M1's feature averages over (vaekit.latent_classifier)."""
    x = split.to_float()
    probs = sum(predict_proba(torch.bernoulli(x, generator=torch.Generator().manual_seed(i)))
                for i in range(BINARIZATIONS))
    return float((probs.argmax(-1) != split.y).float().mean())


def train_supervised(dataset, per_class: int, arch: str, seed: int, recipe: dict, split_seed: int = 0,
                     label_seed: int = 0, shift: int = 0, **sizes):
    """The supervised-only baseline; returns (test error, info dict). shift: each training input moved by up
    to that many pixels (vaekit.augment.random_shift, as M2's --classifier-shift)."""
    mode = binarization("auto", "bernoulli", dataset)
    cfg = ModelConfig(arch=arch, image_shape=tuple(dataset.image_shape), **sizes)
    train = keep_labels_per_class(dataset.train, per_class, label_seed)
    known = train.y >= 0
    x, y = train.to_float()[known], train.y[known]
    val = fixed_targets(dataset.val, mode, split_seed + VAL_SEED_OFFSET, "cpu")
    test = test_targets(dataset.test, split_seed, mode, "cpu")
    torch.manual_seed(seed)
    net = make_classifier(cfg, dataset.num_classes)
    if recipe["dropout"]:  # before the last layer (the k logits)
        net = torch.nn.Sequential(*net[:-1], torch.nn.Dropout(recipe["dropout"]), net[-1])
    optimizer = torch.optim.AdamW(net.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    batch = min(64, len(x))
    gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def score(d):
        net.eval()
        logits = net(d.x)
        net.train()
        return float((logits.argmax(-1) != d.y).float().mean()), float(F.cross_entropy(logits, d.y))

    best, best_state, best_step = (math.inf, math.inf), None, 0
    order, pos = torch.randperm(len(x), generator=gen), 0
    with Timer() as t:
        for step in range(1, recipe["steps"] + 1):
            if pos + batch > len(x):
                order, pos = torch.randperm(len(x), generator=gen), 0
            idx = order[pos : pos + batch]
            pos += batch
            xb = random_shift(torch.bernoulli(x[idx], generator=gen), shift, gen)
            loss = F.cross_entropy(net(xb), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % EVAL_EVERY == 0:
                s = score(val)
                if s < best:
                    best, best_step = s, step
                    best_state = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    error, _ = score(test)
    net.eval()
    error_avg = averaged_error(lambda xb: F.softmax(net(xb), -1), dataset.test)
    return error, {"error_avg": error_avg, "cpu": t.cpu, "wall": t.wall, "best_step": best_step, "val_error": best[0],
                   "labelled": int(known.sum()), "test_images": len(test.y)}


def logistic_pixels(dataset, per_class: int, label_seed: int) -> tuple[float, dict]:
    """Logistic regression (scikit-learn's defaults, L2, C = 1) on the intensities of the labelled training
    images alone; tested on the intensities of the test images."""
    from sklearn.linear_model import LogisticRegression

    train = keep_labels_per_class(dataset.train, per_class, label_seed)
    known = train.y >= 0
    flat = lambda t: t.reshape(len(t), -1).numpy()  # noqa: E731
    with Timer() as t:
        fitted = LogisticRegression(max_iter=5000).fit(flat(train.to_float()[known]), train.y[known].numpy())
    error = float(np.mean(fitted.predict(flat(dataset.test.to_float())) != dataset.test.y.numpy()))
    return error, {"error_avg": error, "cpu": t.cpu, "wall": t.wall, "labelled": int(known.sum())}


def m2_val_label_error(run: Path) -> dict:
    """M2's validation label error at the epoch kept (lowest validation -ELBO) and its minimum."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not rows or "val_label_error" not in rows[0]:
        return {}
    kept = min(rows, key=lambda r: r["val_neg_elbo"])
    best = min(rows, key=lambda r: r["val_label_error"])
    return {"val_error_kept": kept["val_label_error"], "kept_epoch": kept["epoch"],
            "val_error_min": best["val_label_error"], "min_epoch": best["epoch"], "epochs": rows[-1]["epoch"]}


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits", help="digits | fashion-mnist | FILE.npz (any vaekit dataset)")
    parser.add_argument("--labels", type=int, nargs="+", default=[10, 100], help="labels per class")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds")
    parser.add_argument("--label-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="draws of the labelled images (vaekit's --label-seed)")
    parser.add_argument("--epochs", type=int, default=None, help="M2 and VAE epochs (default: vaekit's automatic)")
    parser.add_argument("--alpha", type=float, default=None, help="M2's alpha (default: M2's own)")
    parser.add_argument("--labelled-share", type=float, default=None,
                        help="M2's share of each batch drawn from the labelled images (default: vaekit's)")
    parser.add_argument("--classifier-dropout", type=float, default=None, help="M2's (default: M2's own)")
    parser.add_argument("--classifier-shift", type=int, default=None,
                        help="M2's (default: M2's own); the supervised baseline's input gets the same translations")
    parser.add_argument("--weight-decay", type=float, default=None, help="M2's AdamW weight decay (default: vaekit's)")
    parser.add_argument("--ema", type=float, default=None,
                        help="M2's average of the weights (--ema decay; default: vaekit's, off)")
    parser.add_argument("--arch", default="conv", choices=("conv", "mlp"))
    parser.add_argument("--hidden", type=int, default=None, help="units of the hidden layer (default: vaekit's)")
    parser.add_argument("--latent-dim", type=int, default=None, help="dimension of z (default: vaekit's)")
    parser.add_argument("--reuse", action="store_true", help="reuse finished run folders found in --work (no retraining)")
    parser.add_argument("--train-limit", type=int, default=None, help="train on the first N training images")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--recipe", default="dropout", choices=list(RECIPES), help="the supervised baseline's recipe")
    parser.add_argument("--samples-per-class", type=int, default=10, help="M2's judge of conditional samples")
    parser.add_argument("--work", help="folder for run folders (default: a fresh temporary folder)")
    args = parser.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="vaekit-semi-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"command: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')} "
          f"{shlex.join([sys.executable, *sys.argv])}")
    print(f"work folder: {work}", flush=True)

    source = load_dataset(DataConfig(dataset=args.dataset))
    train_name, eval_kw = args.dataset, {}
    if args.train_limit:
        n = min(args.train_limit, len(source.train))
        train_name = str(work / f"train-first-{n}.npz")
        np.savez(train_name, x=source.train.to_float()[:n].numpy(), y=source.train.y[:n].numpy())
        eval_kw = {"dataset": args.dataset}
    dataset = load_dataset(DataConfig(dataset=train_name))  # what training sees (labels_per_class 0)
    test_split = source.test
    if args.train_limit:  # the baseline is tested on the named dataset's test split, as the runs are
        dataset = dataclasses.replace(dataset, test=test_split)

    sizes = {k: v for k, v in (("hidden", args.hidden), ("latent_dim", args.latent_dim)) if v is not None}
    common = {"dataset": train_name, "arch": args.arch, **sizes}
    if args.epochs is not None:
        common["epochs"] = args.epochs
    m2_extra = {k: v for k, v in (("alpha", args.alpha), ("labelled_share", args.labelled_share),
                                  ("classifier_dropout", args.classifier_dropout),
                                  ("classifier_shift", args.classifier_shift),
                                  ("weight_decay", args.weight_decay), ("ema", args.ema)) if v is not None}

    test_mode = binarization("auto", "bernoulli", source)

    def evaluate(run: Path) -> float:
        """The test label error through the model contract (no judge of samples: minutes on Fashion)."""
        model = vaekit.load(run)
        if (run / "m1.safetensors").is_file():
            return label_error(run, model, test_split, test_mode)[0]
        targets = test_targets(test_split, 0, test_mode, "cpu")
        return float(evaluate_terms(model, targets.x, targets.y, iw_samples=1)["label_error"])

    def train(out: Path, **options) -> tuple[Path, float, float]:
        """(run, CPU s, wall s); with --reuse a finished run is kept and its training seconds summed."""
        if args.reuse and (out / "model.safetensors").is_file() and (out / "last.safetensors").is_file():
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            seconds = sum(r["train_seconds"] for r in rows)
            return out, seconds, seconds
        with Timer() as t:
            run = vaekit.train(out, overwrite=True, progress=False, **options)
        return run, t.cpu, t.wall

    results: dict[tuple[str, int], dict[tuple[int, int], dict]] = {}  # (method, N) -> (seed, draw) -> info

    def record(method: str, n: int, seed: int, draw: int, info: dict) -> None:
        results.setdefault((method, n), {})[(seed, draw)] = info
        print(f"{method} N={n} seed={seed} draw={draw}: {json.dumps(info)}", file=sys.stderr, flush=True)

    for seed in args.seeds:
        vae = None  # one VAE per model seed (it sees no labels), shared by M1 and M1+M2 on every draw
        if {"m1", "m1-logistic", "m1+m2"} & set(args.methods):
            vae, vae_cpu, vae_wall = train(work / f"vae-s{seed}", seed=seed, **common)
        for draw in args.label_seeds:
            for n in args.labels:
                if "logistic-pixels" in args.methods and seed == args.seeds[0]:  # no training seed
                    error, info = logistic_pixels(dataset, n, draw)
                    record("logistic-pixels", n, seed, draw, {"error": error, **info})
                if "supervised" in args.methods:
                    error, info = train_supervised(dataset, n, args.arch, seed, RECIPES[args.recipe],
                                                   label_seed=draw, shift=args.classifier_shift or 0, **sizes)
                    record("supervised", n, seed, draw, {"error": error, **info})
                for method in [m for m in M1_CLASSIFIERS if m in args.methods]:
                    with Timer() as t_m1:
                        fitted = fit_m1(vae, labels_per_class=n, classifier=M1_CLASSIFIERS[method], label_seed=draw)
                    error = evaluate(vae)
                    record(method, n, seed, draw, {
                        "error": error, "error_avg": error, "cpu": vae_cpu + t_m1.cpu, "wall": vae_wall + t_m1.wall,
                        "vae_cpu": vae_cpu, "m1_fit_cpu": t_m1.cpu, "val_error": fitted["val_error"],
                        "labelled": fitted["labelled"]})
                for method in [m for m in ("m2", "m1+m2") if m in args.methods]:
                    stacked = {"init_latents": str(vae)} if method == "m1+m2" else {}
                    name = f"{method.replace('+', '')}-n{n}-s{seed}-d{draw}"
                    run, cpu, wall = train(work / name, model="m2", labels_per_class=n, label_seed=draw, seed=seed,
                                           **common, **m2_extra, **stacked)
                    error = evaluate(run)
                    error_avg = averaged_error(vaekit.load(run).predict_proba, test_split)
                    cfg = json.loads((run / "config.json").read_text())
                    extra = {"vae_cpu": vae_cpu, "m2_cpu": cpu} if stacked else {}
                    record(method, n, seed, draw, {
                        "error": error, "error_avg": error_avg, "cpu": cpu + (vae_cpu if stacked else 0),
                        "wall": wall + (vae_wall if stacked else 0), "epochs": cfg["train"]["epochs"],
                        "alpha": cfg["model"]["alpha"], "labelled_fraction": cfg["model"]["labelled_fraction"],
                        **extra, **m2_val_label_error(run)})

    m2_options = ", ".join(f"{k} {v:g}" for k, v in m2_extra.items()) or "defaults"
    names = {"logistic-pixels": "logistic regression on pixels", "supervised": f"supervised only (q(y|x) net, recipe {args.recipe}"
             + (f", shift {args.classifier_shift}" if args.classifier_shift else "") + ")",
             "m1": "M1 (VAE + label spreading)", "m1-logistic": "M1 (VAE + logistic regression)",
             "m2": f"M2 ({m2_options})", "m1+m2": f"M1+M2 (M2 on the VAE's codes, {m2_options})"}
    epochs = "vaekit's automatic epochs" if args.epochs is None else f"{args.epochs} epochs"
    limit = f", first {args.train_limit} training images" if args.train_limit else ""
    print(f"\nCPU: {cpu_model()} ({os.cpu_count()} logical cores visible, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}); torch {torch.__version__}; vaekit {vaekit.__version__}")
    print(f"{args.dataset}{limit}, arch {args.arch}, {epochs}; {len(test_split)} test images; model seeds "
          f"{' '.join(map(str, args.seeds))}; label draws (--label-seed) {' '.join(map(str, args.label_seeds))}; "
          "test classification error over every (seed, draw): mean ± standard deviation, and the worst\n")
    print("| method | " + " | ".join(f"{n} labels/class: error | worst | CPU s" for n in args.labels) + " |")
    print("|---|" + "---:|---:|---:|" * len(args.labels))
    for method in args.methods:
        cells = []
        for n in args.labels:
            runs = results[(method, n)].values()
            cells.append(f"{mean_sd([v['error'] for v in runs])} | {max(v['error'] for v in runs):.4f} | "
                         f"{statistics.mean(v['cpu'] for v in runs):.0f}")
        print(f"| {names[method]} | " + " | ".join(cells) + " |")
    baselines = [m for m in ("supervised", "logistic-pixels") if m in args.methods]
    for method in [m for m in ("m2", "m1+m2", "m1") if m in args.methods and baselines]:
        for n in args.labels:
            wins = []
            for (seed, draw), v in results[(method, n)].items():
                rivals = [results[(b, n)].get((seed, draw)) or results[(b, n)][(args.seeds[0], draw)] for b in baselines]
                wins.append(all(v["error"] < r["error"] for r in rivals))
            print(f"\n{names[method]}, {n} labels/class: below {' and '.join(names[b] for b in baselines)} on "
                  f"{sum(wins)} of {len(wins)} (seed, draw) pairs")
    print(f"\nThe same classifiers with their class probabilities averaged over {BINARIZATIONS} seeded binarizations of "
          "each test image (the table above classifies one fixed binarization):\n")
    print("| method | " + " | ".join(f"{n} labels/class: error" for n in args.labels) + " |")
    print("|---|" + "---:|" * len(args.labels))
    for method in args.methods:
        print(f"| {names[method]} | " + " | ".join(mean_sd([v["error_avg"] for v in results[(method, n)].values()])
                                                 for n in args.labels) + " |")
    print("\nTimes: mean of the training (M1 and M1+M2: with the VAE's training; evaluation excluded;"
          " with --reuse, the training seconds logged in metrics.jsonl).\n\nPer (seed, draw), test error:\n")
    for method in args.methods:
        for n in args.labels:
            parts = [f"s{seed} d{draw} {v['error']:.4f}" for (seed, draw), v in results[(method, n)].items()]
            print(f"- {names[method]}, {n} labels/class: " + "; ".join(parts))
    print(f"\nrun folders: {work}")


if __name__ == "__main__":
    main()
