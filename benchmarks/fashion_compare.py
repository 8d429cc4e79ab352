"""Fashion-MNIST (dynamically binarized): the default conv VAE against the classic MLP VAE.

    python benchmarks/fashion_compare.py --epochs 10 --iw-samples 1000 --limit 2000

Both are trained with the same epochs, batch size, optimizer and schedule (vaekit's defaults apart
from the architecture); the MLP is the classic 784-400-20 of Kingma & Welling. Both are evaluated
on the same test images with the same K. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import vaekit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iw-samples", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=2000, help="test images evaluated (0: all 10,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="keep the run folders here")
    args = parser.parse_args()
    models = {
        "conv VAE (vaekit default)": {},
        "MLP VAE 784-400-20": {"arch": "mlp", "hidden": 400, "latent_dim": 20},
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        for i, (name, options) in enumerate(models.items()):
            t0 = time.perf_counter()
            run = vaekit.train(root / f"model{i}", overwrite=True, progress=False, dataset="fashion-mnist",
                               epochs=args.epochs, seed=args.seed, **options)
            seconds = time.perf_counter() - t0
            r = vaekit.evaluate(run, iw_samples=args.iw_samples, limit=args.limit or None)
            params = sum(p.numel() for p in vaekit.load(run).parameters())
            rows.append((name, params, seconds, r))
            print(json.dumps({"model": name, "train_seconds": seconds, **r}), file=sys.stderr)
    n = rows[0][3]["n_images"]
    print(f"\nFashion-MNIST, dynamic binarization, {args.epochs} epochs, seed {args.seed}; "
          f"{n} test images, K = {args.iw_samples}; nats per image ± standard error\n")
    print("| model | parameters | train s | -ELBO | -log p(x) (IWAE) | active units |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, params, seconds, r in rows:
        print(f"| {name} | {params:,} | {seconds:.0f} | {r['neg_elbo']:.2f} ± {r['neg_elbo_se']:.2f} | "
              f"{r['nll']:.2f} ± {r['nll_se']:.2f} | {r['active_units']}/{r['latent_dim']} |")


if __name__ == "__main__":
    main()
