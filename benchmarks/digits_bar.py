"""Check the digits bar: default `vaekit train --dataset digits` in under 180 s and a test -log p(x)
(IWAE, K = 1000) of at most 22.0 nats.

    python benchmarks/digits_bar.py                # seed 0
    python benchmarks/digits_bar.py --seeds 0 1 2

Trains with the default flags (plus --seed) through the CLI, as a user would, times it, evaluates
with `vaekit evaluate --iw-samples 1000 --json`, and prints a markdown table. For the first seed it
also prints the IWAE estimate at K = 1, 10, 100, 1000, which should tighten (fall) as K grows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NLL_BAR = 22.0  # nats
TIME_BAR = 180.0  # seconds


def vaekit_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("vaekit")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "vaekit"]


def train_and_evaluate(out: Path, seed: int | None) -> dict:
    cmd = [*vaekit_cmd(), "train", "--dataset", "digits", "--out", str(out)]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t
    evaluated = subprocess.run(
        [*vaekit_cmd(), "evaluate", str(out), "--iw-samples", "1000", "--json"], check=True, capture_output=True, text=True
    )
    return {"seed": seed, "seconds": seconds, **json.loads(evaluated.stdout)}


def iwae_by_k(run: Path, ks: tuple[int, ...] = (1, 10, 100, 1000)) -> list[tuple[int, float, float]]:
    import vaekit

    return [(k, r["nll"], r["nll_se"]) for k in ks for r in [vaekit.evaluate(run, iw_samples=k, device="cpu")]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[None], help="training seeds (default: the default seed)")
    args = parser.parse_args()

    rows, first_run = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for i, seed in enumerate(args.seeds):
            out = Path(tmp) / f"run{i}"
            rows.append(train_and_evaluate(out, seed))
            first_run = first_run or out
        by_k = iwae_by_k(first_run)

    print(f"vaekit train --dataset digits (default flags), test split; bars: -log p(x) <= {NLL_BAR} nats, train <= {TIME_BAR:.0f} s\n")
    print("| seed | train s | -ELBO | -log p(x) IWAE K=1000 | IWAE <= -ELBO | nll bar | time bar |")
    print("|---:|---:|---:|---:|:---:|:---:|:---:|")
    for r in rows:
        seed = "default" if r["seed"] is None else r["seed"]
        print(
            f"| {seed} | {r['seconds']:.1f} | {r['neg_elbo']:.3f} ± {r['neg_elbo_se']:.3f} | {r['nll']:.3f} ± {r['nll_se']:.3f} "
            f"| {'yes' if r['nll'] <= r['neg_elbo'] else 'NO'} | {'pass' if r['nll'] <= NLL_BAR else 'FAIL'} "
            f"| {'pass' if r['seconds'] <= TIME_BAR else 'FAIL'} |"
        )
    if len(rows) > 1:
        mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
        print(f"| mean | {mean('seconds'):.1f} | {mean('neg_elbo'):.3f} | {mean('nll'):.3f} | | | |")

    seed = "default" if rows[0]["seed"] is None else rows[0]["seed"]
    print(f"\nIWAE estimate of -log p(x) vs K (seed {seed}); it should fall towards -log p(x) as K grows:\n")
    print("| K | -IWAE_K (nats) |")
    print("|---:|---:|")
    for k, nll, se in by_k:
        print(f"| {k} | {nll:.3f} ± {se:.3f} |")
    ok = all(r["nll"] <= NLL_BAR and r["seconds"] <= TIME_BAR for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
