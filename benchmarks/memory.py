"""Peak memory (resident set size) of `vaekit train` on the CPU, against what Python + torch alone take.

    python benchmarks/memory.py                                  # Fashion-MNIST, default conv VAE, 1 epoch
    python benchmarks/memory.py --dataset fashion-mnist --epochs 1 -- --arch mlp --hidden 400 --latent-dim 20

Each row is a fresh subprocess; its peak RSS is read from the kernel (getrusage of the finished
child, ru_maxrss), so it covers everything the process touched: the interpreter, torch's libraries,
the dataset, the model, the optimizer, autograd buffers, validation and the pictures. Rows:

  python + torch + vaekit imported     the floor every run pays before it touches data
  dataset loaded (uint8)               + the training, validation and test images in memory
  vaekit train                         the whole run, end to end (train, validate, checkpoint, pictures)
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb(argv: list[str]) -> float:
    """Peak RSS in MB of a process running argv, measured by a fresh wrapper process whose only child
    it is (ru_maxrss of RUSAGE_CHILDREN is a maximum over all children ever waited for)."""
    wrapper = [sys.executable, "-c", "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)", *argv]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(wrapper, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return int(done.stdout.strip().splitlines()[-1]) / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("train_flags", nargs="*", help="more `vaekit train` flags, after --")
    args = parser.parse_args()

    load = ("from vaekit.config import DataConfig; from vaekit.data import load_dataset; "
            f"load_dataset(DataConfig(dataset={args.dataset!r}))")
    with tempfile.TemporaryDirectory() as tmp:
        train = [sys.executable, "-m", "vaekit", "train", "--dataset", args.dataset, "--epochs", str(args.epochs),
                 "--device", "cpu", "--out", str(Path(tmp) / "run"), *args.train_flags]
        rows = [("python + torch + vaekit imported", peak_rss_mb([sys.executable, "-c", "import torch, vaekit"])),
                ("dataset loaded (uint8)", peak_rss_mb([sys.executable, "-c", load])),
                (f"vaekit train, {args.epochs} epoch(s)", peak_rss_mb(train))]
    print(f"\npeak resident memory, {args.dataset}, flags: {' '.join(args.train_flags) or '(defaults)'}\n")
    print("| process | peak RSS (MB) |")
    print("|---|---:|")
    for name, mb in rows:
        print(f"| {name} | {mb:,.0f} |")


if __name__ == "__main__":
    main()
