"""The autoregressive VAE's training step with its masked convolutions computed two ways, in one run.

    OMP_NUM_THREADS=1 python benchmarks/masked_conv.py
    OMP_NUM_THREADS=1 python benchmarks/masked_conv.py --image-shape 1 28 28 --batch-size 128

Rows (the same model, weights and batch; the outputs agree to float32 rounding, tests/test_pixel_cnn.py):
  k x k, masked         the whole k x k kernel times its mask: the rows below the centre are zeros it multiplies
  top rows (vaekit)     MaskedConv2d: the top (k + 1) / 2 rows of the kernel over the input padded above
The two are interleaved and repeated; the table gives the fastest repeat's CPU seconds per step (this process).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from vaekit import models
from vaekit.models.vae import VAEConfig
from vaekit.pixel_cnn import MaskedConv2d


def full_kernel(self: MaskedConv2d, x: torch.Tensor) -> torch.Tensor:
    """The reference: every tap of the k x k kernel, the masked ones multiplied by zero."""
    return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.kernel_size[0] // 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-shape", type=int, nargs=3, default=(3, 32, 32), metavar=("C", "H", "W"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = VAEConfig(image_shape=tuple(args.image_shape), likelihood="logistic-mixture", autoregressive=True)
    model = models.build(cfg)
    optimizer = torch.optim.Adam(model.parameters())
    x = torch.randint(0, 256, (args.batch_size, *args.image_shape)).float() / 255

    def step() -> None:
        loss = model(x)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    variants = {"k x k, masked": full_kernel, "top rows (vaekit)": MaskedConv2d.forward}
    seconds = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, forward in variants.items():
            MaskedConv2d.forward = forward
            step()  # warm-up
            start = time.process_time()
            for _ in range(args.steps):
                step()
            seconds[name].append((time.process_time() - start) / args.steps)
    MaskedConv2d.forward = variants["top rows (vaekit)"]

    best = {name: min(s) for name, s in seconds.items()}
    reference = best["k x k, masked"]
    print(f"VAE --autoregressive, {'x'.join(map(str, args.image_shape))}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} thread(s); fastest of {args.repeats} repeats of {args.steps} steps")
    print("| masked convolution | CPU s per step | speed-up |\n|---|---:|---:|")
    for name, s in best.items():
        print(f"| {name} | {s:.3f} | {reference / s:.2f}x |")


if __name__ == "__main__":
    main()
