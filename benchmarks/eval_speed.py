"""IWAE evaluation speed against training speed, per image-sample, with the system time, in one run.

    OMP_NUM_THREADS=1 python benchmarks/eval_speed.py                       # Fashion-MNIST: conv and MLP
    OMP_NUM_THREADS=1 python benchmarks/eval_speed.py --models conv mlp paper-mlp vamp mixture hvae
    python benchmarks/eval_speed.py --dataset digits --models conv --max-batch 8192 4096
    python benchmarks/eval_speed.py --device cuda --models conv mlp autoregressive --max-batch 334 0 65536
    OMP_NUM_THREADS=1 python benchmarks/eval_speed.py --models paper-mlp autoregressive --train-samples 20

For each model (vaekit's default conv VAE, the MLP 784-400-20; and BENCHMARKS.md's paper MLP 784-300-300-40
gated, with the VampPrior or a mixture of 500 components, as the two-layer hierarchy, or with the
autoregressive likelihood) on the same process and data:

  train   optimisation steps of vaekit.train.train_step (batch --batch-size, Adam, dynamic
          binarization): images/s; on the ELBO, or with --train-samples K on the IWAE_K bound (the
          models that have it; then the eval / train ratio is not the bar's)
  eval    vaekit.evaluate.evaluate with K = --iw-samples on the first --images test images, at each
          --max-batch (0: vaekit's default): image-samples/s (images x K / seconds)

The ratio eval / train is the bar's number (an evaluated image-sample costs one decoder pass, a
trained image a forward and a backward pass of both networks: the ratio should be >= 3). System time
and minor page faults come from getrusage around each measurement. Runs alternate and repeat
(--repeats); the table shows medians. Weights are freshly initialised: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vaekit import models  # noqa: E402
from vaekit.config import DataConfig  # noqa: E402
from vaekit.data import fixed_targets, load_dataset  # noqa: E402
from vaekit.evaluate import default_max_batch, evaluate  # noqa: E402
from vaekit.train import train_step  # noqa: E402

PAPER_MLP = dict(arch="mlp", hidden=300, hidden_layers=2, gated=True, latent_dim=40)  # the papers' set-up
MODELS = {
    "conv": {},  # vaekit's default
    "mlp": dict(arch="mlp", hidden=400, latent_dim=20),  # the classic 784-400-20
    "paper-mlp": PAPER_MLP,
    "vamp": dict(PAPER_MLP, prior="vamp", prior_components=500),
    "mixture": dict(PAPER_MLP, prior="mixture", prior_components=500),
    "hvae": dict(PAPER_MLP, model="hvae"),
    "autoregressive": dict(PAPER_MLP, autoregressive=True),  # p(x_i | x_<i, z): a masked network beside the decoder
}
DEFAULT_MODELS = ["conv", "mlp"]


def measured(work) -> tuple[float, float, float, int]:
    """(wall s, user s, system s, minor page faults) of work()."""
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    work()
    r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
    return wall, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200, help="training steps per measurement")
    parser.add_argument("--iw-samples", type=int, default=1000)
    parser.add_argument("--images", type=int, default=30, help="test images per evaluation")
    parser.add_argument("--max-batch", type=int, nargs="+", default=[0], help="0: vaekit's default")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-samples", type=int, default=1, help="train on IWAE_K (1: the ELBO)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    device = torch.device(args.device)

    data = load_dataset(DataConfig(dataset=args.dataset))
    train_x = data.train.to_float().to(device)
    test_x = fixed_targets(data.test, "dynamic", 3, device).x[: args.images]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "unknown CPU"
    gpu = f"GPU: {torch.cuda.get_device_name(device)}; " if device.type == "cuda" else ""
    print(f"{args.dataset}; {gpu}CPU: {cpu}, {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"K = {args.iw_samples}, {args.images} test images; median of {args.repeats}; "
          f"training on {'the ELBO' if args.train_samples == 1 else f'IWAE_{args.train_samples}'}\n")
    print("| model | decoder pass (pairs) | train images/s | eval image-samples/s | eval / train | "
          "eval system time | eval page faults |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        torch.manual_seed(0)
        options = dict(MODELS[name])
        config = models.model_class(options.pop("model", "vae")).Config
        label = name
        if args.train_samples > 1:
            if "train_samples" in config.__dataclass_fields__:
                options["train_samples"] = args.train_samples
            else:
                label = f"{name} (no IWAE training: the ELBO)"
        model = models.build(config(image_shape=data.image_shape, **options)).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
        generator = torch.Generator(device).manual_seed(0)

        def train() -> None:
            model.train()
            for _ in range(args.steps):
                index = torch.randint(len(train_x), (args.batch_size,), generator=generator, device=device)
                train_step(model, optimizer, torch.bernoulli(train_x[index], generator=generator), None, {})
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # evaluate() returns Python floats: it synchronises itself

        passes = [m or default_max_batch(data.image_shape, device) for m in args.max_batch]
        train_speed, results = [], {p: [] for p in passes}
        for _ in range(args.repeats):
            wall, *_ = measured(train)
            train_speed.append(args.steps * args.batch_size / wall)
            for p in passes:
                wall, user, system, faults = measured(lambda: evaluate(model, test_x, iw_samples=args.iw_samples, max_batch=p))
                results[p].append((args.images * args.iw_samples / wall, system / (user + system), faults))
        train_median = statistics.median(train_speed)
        for p in passes:
            speed = statistics.median(r[0] for r in results[p])
            system = statistics.median(r[1] for r in results[p])
            faults = statistics.median(r[2] for r in results[p])
            default = " (default)" if p == default_max_batch(data.image_shape, device) else ""
            print(f"| {label} | {p}{default} | {train_median:,.0f} | {speed:,.0f} | {speed / train_median:.1f}x | "
                  f"{100 * system:.0f} % | {faults:,.0f} |")


if __name__ == "__main__":
    main()
