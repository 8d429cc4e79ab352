"""One table per dataset: vaekit's models trained with default settings, evaluated the same way.

    python benchmarks/models.py --dataset fashion-mnist --models conv mlp cvae --limit 2000
    python benchmarks/models.py --dataset digits --models conv cvae

  conv   the default convolutional VAE
  mlp    the classic MLP VAE 784-400-20 (Kingma & Welling), same epochs, batch and optimizer
  cvae   the conditional VAE of the same size as `conv`; its nll is -log p(x|c), and
         conditional_accuracy is judged by a CNN classifier trained on the real images

Every model is evaluated on the same test images with the same K. Prints a markdown table.
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

MODELS = {
    "conv": ("conv VAE (the built-in default)", {"arch": "conv"}),
    "mlp": ("MLP VAE 784-400-20", {"arch": "mlp", "hidden": 400, "latent_dim": 20}),
    "cvae": ("conditional VAE (default size)", {"model": "cvae"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--models", nargs="+", default=["conv", "mlp", "cvae"], choices=list(MODELS))
    parser.add_argument("--epochs", type=int, default=0, help="0: vaekit's automatic default")
    parser.add_argument("--iw-samples", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=0, help="test images evaluated (0: all)")
    parser.add_argument("--samples-per-class", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="keep the run folders here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        for key in args.models:
            name, options = MODELS[key]
            t0 = time.perf_counter()
            run = vaekit.train(root / key, overwrite=True, progress=False, dataset=args.dataset, epochs=args.epochs,
                               seed=args.seed, **options)
            seconds = time.perf_counter() - t0
            r = vaekit.evaluate(run, iw_samples=args.iw_samples, limit=args.limit or None,
                                samples_per_class=args.samples_per_class)
            r["epochs"] = json.loads((Path(run) / "config.json").read_text())["train"]["epochs"]
            r["parameters"] = sum(p.numel() for p in vaekit.load(run).parameters())
            rows.append((name, seconds, r))
            print(json.dumps({"model": name, "train_seconds": seconds, **r}), file=sys.stderr, flush=True)
    r0 = rows[0][2]
    print(f"\n{args.dataset}, default settings ({r0['epochs']} epochs), seed {args.seed}; {r0['n_images']} test "
          f"images, K = {args.iw_samples}; nats per image ± standard error over images\n")
    print("| model | parameters | train s | -ELBO | -log p(x) (IWAE) | active units | conditional acc. "
          "| classifier acc. | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, seconds, r in rows:
        cond = r.get("conditional_accuracy")
        extra = (f"{cond:.3f} | {r['classifier_accuracy']:.3f} | {cond / r['classifier_accuracy']:.3f}"
                 if cond is not None else " | | ")
        print(f"| {name} | {r['parameters']:,} | {seconds:.0f} | {r['neg_elbo']:.2f} ± {r['neg_elbo_se']:.2f} | "
              f"{r['nll']:.2f} ± {r['nll_se']:.2f} | {r['active_units']}/{r['latent_dim']} | {extra} |")


if __name__ == "__main__":
    main()
