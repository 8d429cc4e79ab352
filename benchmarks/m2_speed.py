"""M2's cost against the VAE's on one machine: training steps per second and evaluation seconds.

    python benchmarks/m2_speed.py                       # Fashion-MNIST's shape (1x28x28), conv and mlp
    python benchmarks/m2_speed.py --eval-images 10000 --iw-samples 1 100
    python benchmarks/m2_speed.py --compile             # also each step under `vaekit train --compile`

Training: the optimizer step (forward, backward, Adam) of `vaekit.models.build` on random binary images
of the dataset's shape, batch 64; M2's batch holds --labelled-share labelled images (one decoder pass
each) and the rest unlabelled (one pass per class, y summed out exactly). Each row is the median of
--repeats timings of --steps steps, interleaved, after a warm-up. The ratio is M2's step time over the
VAE's: enumerating K classes costs at most about K decoder passes.

Evaluation: `vaekit.evaluate.evaluate` on --eval-images images (label_error and -log p(x) by IWAE with
each K of --iw-samples), the VAE and M2 of the same body, wall seconds.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from vaekit.config import TrainConfig  # noqa: E402
from vaekit.devices import speedups  # noqa: E402
from vaekit.evaluate import evaluate  # noqa: E402
from vaekit.models import build, model_class  # noqa: E402


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else ():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def make(model: str, arch: str, shape: tuple[int, ...], k: int, **sizes) -> torch.nn.Module:
    extra = {"num_classes": k, "labelled_fraction": 0.01} if model == "m2" else {}
    cfg = model_class(model).Config(image_shape=shape, arch=arch, likelihood="bernoulli", **extra, **sizes)
    return build(cfg)


def step_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None, steps: int,
                 forward: torch.nn.Module | None = None) -> float:
    """Seconds per optimizer step; `forward`: the model as --compile wraps it."""
    forward = model if forward is None else forward
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        loss = forward(x, y)["loss"] if y is not None else forward(x)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[1, 28, 28])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--archs", nargs="+", default=["conv", "mlp"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--labelled-share", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time each model's step under --compile")
    parser.add_argument("--eval-images", type=int, default=0, help="images of the evaluation rows (0: none)")
    parser.add_argument("--iw-samples", type=int, nargs="+", default=[1, 100])
    args = parser.parse_args()
    torch.manual_seed(0)
    shape, k, b = tuple(args.shape), args.classes, args.batch_size
    x = torch.bernoulli(torch.full((b, *shape), 0.3))
    y = torch.full((b,), -1)
    y[: round(args.labelled_share * b)] = torch.arange(round(args.labelled_share * b)) % k
    print(f"CPU: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); images {shape}, {k} classes, batch {b}, "
          f"labelled share {args.labelled_share}\n")
    compiled = " VAE compiled ms | M2 compiled ms | M2 compiled / eager |" if args.compile else ""
    print("| body | VAE step ms | M2 step ms | M2 / VAE |" + compiled)
    print("|---|---:|---:|---:|" + "---:|" * (3 if args.compile else 0))
    for arch in args.archs:
        models = {"vae": (make("vae", arch, shape, k), None), "m2": (make("m2", arch, shape, k), y)}
        runs = {name: (model, labels, None) for name, (model, labels) in models.items()}
        if args.compile:  # as `vaekit train --compile` wraps the model (devices.speedups)
            runs.update({f"{name} compiled": (model, labels, speedups(model, TrainConfig(compile=True),
                                                                       torch.device("cpu"))[0])
                         for name, (model, labels) in models.items()})
        for model, labels, forward in runs.values():  # warm-up (and compilation)
            step_seconds(model, x, labels, 3, forward)
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, (model, labels, forward) in runs.items():
                times[name].append(step_seconds(model, x, labels, args.steps, forward))
        t = {name: statistics.median(v) for name, v in times.items()}
        row = f"| {arch} | {1e3 * t['vae']:.1f} | {1e3 * t['m2']:.1f} | {t['m2'] / t['vae']:.1f}x |"
        if args.compile:
            row += f" {1e3 * t['vae compiled']:.1f} | {1e3 * t['m2 compiled']:.1f} | {t['m2 compiled'] / t['m2']:.2f}x |"
        print(row, flush=True)
    if not args.eval_images:
        return
    n = args.eval_images
    xe = torch.bernoulli(torch.full((n, *shape), 0.3))
    ye = torch.arange(n) % k
    print(f"\nEvaluation of {n} images: wall seconds of label_error and -log p(x) by IWAE-K\n")
    print("| body | K | VAE s | M2 s | M2 / VAE |")
    print("|---|---:|---:|---:|---:|")
    for arch in args.archs:
        vae, m2 = make("vae", arch, shape, k), make("m2", arch, shape, k)
        for iw in args.iw_samples:
            seconds = []
            for model, labels in ((vae, None), (m2, ye)):
                start = time.perf_counter()
                evaluate(model, xe, labels, iw_samples=iw)
                seconds.append(time.perf_counter() - start)
            print(f"| {arch} | {iw} | {seconds[0]:.1f} | {seconds[1]:.1f} | {seconds[1] / seconds[0]:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
