"""What makes a training step faster on this machine: each option against vaekit's default step, in one process.

    python benchmarks/step_options.py --dataset digits --batch-size 64
    python benchmarks/step_options.py --dataset fashion-mnist --batch-size 64 --steps 100

Every variant runs vaekit's own step (`train.train_step`: gather + binarize, forward, backward,
Adam) on the same networks and batches. Variants run in interleaved rounds, and
the table shows the median images/s over rounds and the ratio to the default, so machine noise
hits every row alike. torch.compile's one-off compile time is printed separately.

  default            eager, fp32, fused Adam, torch's default thread count
  1 thread           torch.set_num_threads(1)
  channels_last      model and batches in NHWC memory layout
  foreach Adam       the multi-tensor Adam instead of the fused kernel
  torch.compile      the model's forward compiled by inductor (backward by AOTAutograd)
  bf16 autocast      bfloat16 autocast (slow without bf16 units)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vaekit.config import DataConfig, ModelConfig  # noqa: E402
from vaekit.data import load_dataset, training_targets  # noqa: E402
from vaekit.models import VAE  # noqa: E402
from vaekit.train import train_step  # noqa: E402


class Variant:
    def __init__(self, name: str, model_cfg: ModelConfig, *, threads: int | None = None, channels_last: bool = False,
                 fused: bool = True, step=train_step, compile: bool = False, bf16: bool = False):
        torch.manual_seed(0)
        self.name, self.threads, self.channels_last, self.step = name, threads, channels_last, step
        self.model = VAE(model_cfg)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=fused, foreach=None if fused else True)
        self.forward = torch.compile(self.model, dynamic=False) if compile else self.model
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else None
        self.compile_seconds = 0.0

    def run(self, data, order: torch.Tensor, batch_size: int) -> float:
        """Images per second over the batches of `order`."""
        default_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        start = time.perf_counter()
        for idx in order.split(batch_size):
            x, _ = data.batch(idx)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            self.step(self.forward, self.optimizer, x, None, {"beta": 1.0, "free_bits": 0.0}, self.autocast)
        seconds = time.perf_counter() - start
        torch.set_num_threads(default_threads)
        return len(order) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--arch", default="conv", choices=("conv", "mlp"))
    parser.add_argument("--hidden", type=int, default=ModelConfig.hidden)
    parser.add_argument("--latent-dim", type=int, default=ModelConfig.latent_dim)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[], help="variants to leave out (by name)")
    args = parser.parse_args()

    dataset = load_dataset(DataConfig(dataset=args.dataset))
    model_cfg = VAE.Config(arch=args.arch, hidden=args.hidden, latent_dim=args.latent_dim, image_shape=dataset.image_shape)
    data = training_targets(dataset.train, "dynamic", 1, "cpu")
    variants = [
        Variant("default", model_cfg),
        Variant("1 thread", model_cfg, threads=1),
        Variant("channels_last", model_cfg, channels_last=True),
        Variant("foreach Adam", model_cfg, fused=False),
        Variant("torch.compile", model_cfg, compile=True),
        Variant("bf16 autocast", model_cfg, bf16=True),
    ]
    variants = [v for v in variants if v.name not in args.skip]
    generator = torch.Generator().manual_seed(0)
    n = args.steps * args.batch_size

    def order() -> torch.Tensor:  # whole shuffled epochs, cut to n examples
        return torch.cat([torch.randperm(len(data), generator=generator) for _ in range(-(-n // len(data)))])[:n]

    for v in variants:  # warm-up (and compilation) outside the timed rounds
        start = time.perf_counter()
        v.run(data, order()[: 3 * args.batch_size], args.batch_size)
        v.compile_seconds = time.perf_counter() - start
    speeds: dict[str, list[float]] = {v.name: [] for v in variants}
    for _ in range(args.rounds):
        batches = order()
        for v in variants:
            speeds[v.name].append(v.run(data, batches, args.batch_size))
    base = statistics.median(speeds["default"])
    params = sum(p.numel() for p in variants[0].model.parameters())
    print(f"\n{args.dataset}, {args.arch} VAE ({params:,} parameters), batch {args.batch_size}, {n // args.batch_size} "
          f"steps x {args.rounds} interleaved rounds, {torch.get_num_threads()} threads by default, torch {torch.__version__}\n")
    print("| variant | images/s (median) | vs default | first 3 steps (s) |")
    print("|---|---:|---:|---:|")
    for v in variants:
        s = statistics.median(speeds[v.name])
        print(f"| {v.name} | {s:,.0f} | {s / base:.2f}x | {v.compile_seconds:.1f} |")


if __name__ == "__main__":
    main()
