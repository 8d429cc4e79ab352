"""M2's cost against the VAE's on one machine: training steps per second and evaluation seconds.

    python benchmarks/m2_speed.py                       # Fashion-MNIST's shape (1x28x28), conv and mlp
    python benchmarks/m2_speed.py --eval-images 10000 --iw-samples 1 100
    python benchmarks/m2_speed.py --compile             # also each step under `vaekit train --compile`
    python benchmarks/m2_speed.py --compile --masked    # and the masked step below, compiled

--masked: a design alternative, timed and not used by vaekit. M2's step splits the batch by a boolean
mask (labelled images decoded once, unlabelled ones once per class), which breaks torch.compile's graph
at each split (5 breaks). `masked_forward` computes the same objective without splitting: every image
decoded as every class, each image's terms weighted by one_hot(y) where y is known and by q(y|x) where
it is not: no graph break, and K decoder passes for every labelled image instead of one.

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
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

import torch._dynamo  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vaekit.config import TrainConfig  # noqa: E402
from vaekit.devices import speedups  # noqa: E402
from vaekit.evaluate import evaluate  # noqa: E402
from vaekit.models import build, model_class  # noqa: E402
from vaekit.models.m2 import label_kl  # noqa: E402


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else ():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def make(model: str, arch: str, shape: tuple[int, ...], k: int, **sizes) -> torch.nn.Module:
    extra = {"num_classes": k, "labelled_fraction": 0.01} if model == "m2" else {}
    cfg = model_class(model).Config(image_shape=shape, arch=arch, likelihood="bernoulli", **extra, **sizes)
    return build(cfg)


def masked_forward(m2: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """M2's training objective without splitting the batch (see --masked); per-example terms at full length."""
    k, b = m2.cfg.num_classes, len(x)
    log_qy = m2.label_posterior(x)  # (B, K)
    known, y_or_0 = y >= 0, y.clamp(min=0)
    features = m2.encoder.body(x).repeat(k, 1)
    recon_y, kl_y = (t.view(k, b).T for t in m2._neg_elbo_given_y(*m2._every_class(x), m2.prior(), features))
    weights = torch.where(known[:, None], F.one_hot(y_or_0, k).to(log_qy.dtype), log_qy.exp())  # (B, K)
    rest = torch.where(known, torch.full_like(log_qy[:, 0], math.log(k)), label_kl(log_qy))  # -log p(y) | KL of y
    neg_elbo = (weights * (recon_y + kl_y)).sum(-1) + rest
    classifier_nll = -log_qy.gather(1, y_or_0[:, None])[:, 0] * known
    return {"loss": (neg_elbo.sum() + m2.alpha * classifier_nll.sum()) / b, "neg_elbo": neg_elbo,
            "classifier_nll": classifier_nll}


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
    parser.add_argument("--masked", action="store_true", help="with --compile: also M2's masked step, compiled")
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
    masked = args.compile and args.masked
    compiled = " VAE compiled ms | M2 compiled ms | M2 compiled / eager |" if args.compile else ""
    compiled += " M2 masked compiled ms | masked / split, compiled | graph breaks, split / masked |" if masked else ""
    print("| body | VAE step ms | M2 step ms | M2 / VAE |" + compiled)
    print("|---|---:|---:|---:|" + "---:|" * (3 if args.compile else 0) + "---:|" * (3 if masked else 0))
    for arch in args.archs:
        models = {"vae": (make("vae", arch, shape, k), None), "m2": (make("m2", arch, shape, k), y)}
        runs = {name: (model, labels, None) for name, (model, labels) in models.items()}
        if args.compile:  # as `vaekit train --compile` wraps the model (devices.speedups)
            runs.update({f"{name} compiled": (model, labels, speedups(model, TrainConfig(compile=True),
                                                                       torch.device("cpu"))[0])
                         for name, (model, labels) in models.items()})
        if masked:
            m2 = models["m2"][0]
            runs["m2 masked compiled"] = (m2, y, torch.compile(lambda x, y: masked_forward(m2, x, y), dynamic=False))
            breaks = [torch._dynamo.explain(f)(x, y).graph_break_count
                      for f in (m2, lambda x, y: masked_forward(m2, x, y))]
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
        if masked:
            row += (f" {1e3 * t['m2 masked compiled']:.1f} | {t['m2 masked compiled'] / t['m2 compiled']:.2f}x |"
                    f" {breaks[0]} / {breaks[1]} |")
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
