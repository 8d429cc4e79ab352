"""-log p(x) against CPU minutes: which model to train for a given budget, on one machine.

    OMP_NUM_THREADS=1 python benchmarks/time_to_quality.py --out runs/ttq                  # Fashion-MNIST, 6 models
    python benchmarks/time_to_quality.py --out runs/ttq --models default conv --minutes 5 15   # a subset
    python benchmarks/time_to_quality.py --out runs/ttq --evaluate-only                   # re-read the snapshots

Each model trains with `vaekit train` in its own process (--parallel at a time). While it trains,
its process's CPU time (user + system, from /proc) is polled; at each of --minutes its best weights so
far (model.safetensors: what a user stopping there would have) are copied to OUT/<model>.cpu<M>. A
run that ends earlier (the default and the conv VAE stop at their epoch counts) counts with its final
weights at every later mark. Each snapshot is then evaluated on the first --limit test images with
K = --iw-samples (the IWAE estimate of -log p(x), in nats), and the table printed.

CPU minutes, not wall-clock: several jobs can share the machine without changing a row (beyond cache
effects). They depend on the CPU: name it beside the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import vaekit  # noqa: E402

FASHION_MLP = ["--arch", "mlp", "--hidden", "300", "--hidden-layers", "2", "--gated", "--latent-dim", "40",
               "--lr", "5e-4", "--lr-schedule", "constant", "--batch-size", "100", "--epochs", "2000", "--patience", "50"]
MODELS = {  # name -> vaekit train flags (the dataset is added)
    "default": [],  # `vaekit train --dataset DATASET` (on Fashion-MNIST: the gated MLP, 150 epochs, cosine)
    "conv": ["--arch", "conv"],  # the conv VAE, automatic epochs
    "autoregressive": ["--autoregressive"],  # the default with p(x_i | x_<i, z)
    "mlp": FASHION_MLP + ["--kl-warmup", "100"],
    "vamp": FASHION_MLP + ["--kl-warmup", "100", "--prior", "vamp", "--prior-components", "500"],
    "mixture": FASHION_MLP + ["--kl-warmup", "100", "--prior", "mixture", "--prior-components", "500"],
    "hvae": FASHION_MLP + ["--kl-warmup", "100", "--model", "hvae"],
}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def snapshot(run: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in run.glob("*.json"):
        shutil.copy2(f, tmp / f.name)
    shutil.copy2(run / "model.safetensors", tmp / "model.safetensors")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def train_with_snapshots(jobs: list[tuple[str, list[str]]], out: Path, minutes: list[float], parallel: int) -> None:
    """Run the jobs, `parallel` at a time, copying each one's best weights at each CPU-minute mark."""
    pending, running, stopping = list(jobs), {}, set()
    while pending or running:
        while pending and len(running) < parallel:
            name, flags = pending.pop(0)
            log = open(out / f"{name}.log", "w")
            proc = subprocess.Popen([sys.executable, "-m", "vaekit", "train", *flags, "--out", str(out / name),
                                     "--overwrite"], stdout=log, stderr=subprocess.STDOUT)
            running[name] = (proc, list(minutes), log)
        for name, (proc, marks, log) in list(running.items()):
            done = proc.poll() is not None
            used = None if done else cpu_seconds(proc.pid)
            while marks and (done or used >= 60 * marks[0]):
                if (out / name / "model.safetensors").exists():
                    snapshot(out / name, out / f"{name}.cpu{marks[0]:g}")
                marks.pop(0)
            if done:
                log.close()
                del running[name]
                if proc.returncode not in (0, 130):  # 130: stopped by us after the last mark
                    print(f"{name}: vaekit train exited {proc.returncode}; see {out / name}.log", file=sys.stderr)
            elif not marks and name not in stopping:  # past the last mark: stop it (SIGINT writes a checkpoint)
                proc.send_signal(2)
                stopping.add(name)
        time.sleep(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--minutes", nargs="+", type=float, default=[5, 10, 15, 30, 60])
    parser.add_argument("--parallel", type=int, default=1, help="trainings at once (give each OMP_NUM_THREADS=1)")
    parser.add_argument("--limit", type=int, default=1000, help="test images per evaluation")
    parser.add_argument("--iw-samples", type=int, default=1000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--evaluate-only", action="store_true", help="evaluate the snapshots already in --out")
    args = parser.parse_args()
    minutes = sorted(args.minutes)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.evaluate_only:
        jobs = [(m, ["--dataset", args.dataset, *MODELS[m]]) for m in args.models]
        train_with_snapshots(jobs, args.out, minutes, args.parallel)

    header = "| model | " + " | ".join(f"{m:g} CPU min" for m in minutes) + " |"
    print(f"\n{args.dataset}: -log p(x) in nats (IWAE, K = {args.iw_samples}, first {args.limit} test images) "
          f"of the best weights after each number of CPU minutes\n")
    print(header)
    print("|---|" + "---:|" * len(minutes))
    for name in args.models:
        cells = []
        for m in minutes:
            snap = args.out / f"{name}.cpu{m:g}"
            result = snap / f"eval{args.limit}-k{args.iw_samples}.json"
            if not snap.is_dir():
                cells.append("-")
                continue
            if not result.exists():
                r = vaekit.evaluate(snap, limit=args.limit, iw_samples=args.iw_samples, device="cpu")
                result.write_text(json.dumps(r))
            r = json.loads(result.read_text())
            cells.append(f"{r['nll']:.2f} ± {r['nll_se']:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
