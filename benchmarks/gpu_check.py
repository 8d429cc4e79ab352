"""The prepared GPU check: one command, at most --deadline seconds (default 560) on an H100/H200, one results file.

    pip install -e '.[bench]'    # here, first: scikit-image's photographs, cut into the natural stage's tiles
    python benchmarks/natural_images.py --out runs/natural-tiles --tiles-only --more-photos --flips
    PYTHONPATH=src python3 benchmarks/gpu_check.py --out gpu_check.json          # on the GPU machine (carry
                                                                                   # runs/natural-tiles there)
    python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check.json              # the CPU smoke mode (tests)

Stages, each in its own process with its own time limit, so one failure or hang leaves the others'
numbers; the results file is rewritten (atomically) after every stage:

  tests      pytest -m cuda (tests/test_cuda.py: training, resume, evaluation and the compile/bf16
             paths on the GPU against the CPU)
  natural    benchmarks/natural_images.py --device cuda on the tiles in --tiles (the GPU machine may not
             have the photographs): the autoregressive VAE trained for --natural-minutes of wall time,
             then bits/dim by IWAE on the held-out photographs' tiles, beside PNG and WebP on them
  iwae       a default conv VAE trained for --epochs on the dataset, then vaekit.evaluate with
             K = 5000 importance samples over all 10,000 test images: seconds, image-samples/s, nll
  speed      benchmarks/speed.py --device cuda --no-pythae: training images/s of the hand-written
             loops, vaekit, and vaekit --compile --precision bf16
  fast       --compile --precision bf16 training of the same model: images/s and a finite loss

Each stage runs under its own limit and within what is left of --deadline; a stage that would start
with under 20 seconds left is recorded as skipped.

--smoke runs every stage on the CPU at toy size (digits, K = 20, 50 images, random tiles, no compile) to
check the script itself; the numbers of a smoke run mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STAGE_CODE = r"""
import json, math, sys, time
sys.path.insert(0, {src!r})
import torch, vaekit
from vaekit.evaluate import evaluate
from vaekit.data import fixed_targets, load_dataset, binarization
from vaekit.runs import read_config
opts = json.loads({opts!r})
device = torch.device(opts["device"])
out = opts["run"] + ("-fast" if opts["stage"] == "fast" else "")
extra = dict(compile=True, precision="bf16") if opts["stage"] == "fast" else {{}}
start = time.perf_counter()
vaekit.train(out, dataset=opts["dataset"], arch="conv", epochs=opts["epochs"], device=opts["device"], overwrite=True,
             progress=False, **extra)
train_s = time.perf_counter() - start
rows = [json.loads(l) for l in open(out + "/metrics.jsonl")]
result = {{"train_seconds": train_s, "images_per_second": rows[-1]["images_per_second"],
          "val_neg_elbo": rows[-1]["val_neg_elbo"], "finite": all(math.isfinite(r["train_neg_elbo"]) for r in rows)}}
if opts["stage"] == "iwae":
    model = vaekit.load(out, device=opts["device"])
    data_cfg, model_cfg, _ = read_config(__import__("pathlib").Path(out))
    data = load_dataset(data_cfg)
    x = fixed_targets(data.test, binarization(data_cfg.binarize, model_cfg.likelihood, data), 3, device).x[: opts["images"]]
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    r = evaluate(model, x, iw_samples=opts["k"])
    seconds = time.perf_counter() - start
    result.update(iwae_seconds=seconds, images=len(x), k=opts["k"], nll=r["nll"], nll_se=r["nll_se"],
                  neg_elbo=r["neg_elbo"], image_samples_per_second=len(x) * opts["k"] / seconds)
print(json.dumps(result))
"""


def write(path: Path, results: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, path)


def run_stage(name: str, argv: list[str], timeout: float, env: dict) -> dict:
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        tail = (e.stdout or b"")[-2000:]
        return {"status": "timeout", "seconds": timeout, "output_tail": tail.decode() if isinstance(tail, bytes) else tail}
    result: dict = {"status": "ok" if done.returncode == 0 else f"failed ({done.returncode})",
                    "seconds": round(time.perf_counter() - start, 1)}
    lines = done.stdout.strip().splitlines()
    if name in ("iwae", "fast", "natural") and done.returncode == 0:
        result.update(json.loads(lines[-1]))
        if name == "natural":
            result["output_tail"] = "\n".join(lines[-30:-1])
    else:
        result["output_tail"] = "\n".join(lines[-60:])
    if done.returncode != 0:
        result["stderr_tail"] = done.stderr[-2000:]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json", help="the results file (JSON)")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: checks the script, not the GPU")
    parser.add_argument("--dataset", default="fashion-mnist", help="falls back to digits where it is not installed")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the model the IWAE stage evaluates")
    parser.add_argument("--stages", nargs="+", default=["tests", "natural", "iwae", "speed", "fast"])
    parser.add_argument("--tiles", default=str(ROOT / "runs" / "natural-tiles"),
                        help="train.npz and test.npz of benchmarks/natural_images.py --tiles-only (the natural stage)")
    parser.add_argument("--natural-minutes", type=float, default=2.5, help="the natural stage's training, wall minutes")
    parser.add_argument("--deadline", type=float, default=560, help="seconds for all the stages together")
    args = parser.parse_args()
    begun = time.perf_counter()

    import torch

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here (use --smoke to check the script on the CPU)")
    dataset = "digits" if args.smoke else args.dataset
    if dataset == "fashion-mnist":
        sys.path.insert(0, str(ROOT / "src"))
        from vaekit.data import load_dataset
        from vaekit.config import DataConfig

        try:
            load_dataset(DataConfig(dataset=dataset))
        except Exception as e:  # noqa: BLE001 - any reason it cannot load: say it and use digits
            print(f"gpu_check: {dataset} not available ({e}); using digits", file=sys.stderr)
            dataset = "digits"
    out = Path(args.out).resolve()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results: dict = {
        "mode": "smoke (CPU, toy sizes)" if args.smoke else "gpu",
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "python": platform.python_version(), "dataset": dataset,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "stages": {},
    }
    write(out, results)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    k, images = (20, 50) if args.smoke else (5000, 10000)
    # On an H200 tests, iwae, speed and fast took 57, 58, 53 and 39 s (BENCHMARKS.md); --deadline bounds the sum.
    limits = {"tests": 120, "natural": 60 * args.natural_minutes + 120, "iwae": 150, "speed": 120, "fast": 90}
    if args.smoke:
        limits = dict.fromkeys(limits, 300)
    for stage in args.stages:
        left = args.deadline - (time.perf_counter() - begun)
        if left < 20:
            results["stages"][stage] = {"status": f"skipped: {left:.0f} s of the --deadline left"}
            write(out, results)
            continue
        if stage == "natural":
            tiles = Path(args.tiles)
            if args.smoke:  # random tiles: the script's path, not a measurement
                tiles = work / "tiles"
                tiles.mkdir()
                noise = np.random.default_rng(0).integers(0, 256, (80, 3, 32, 32), dtype=np.uint8)
                np.savez(tiles / "train.npz", x=noise[:64])
                np.savez(tiles / "test.npz", x=noise[64:])
            if not (tiles / "train.npz").is_file():
                results["stages"][stage] = {"status": f"skipped: no {tiles / 'train.npz'} (run benchmarks/natural_images.py "
                                                      f"--out {tiles} --tiles-only first, and carry it)"}
                write(out, results)
                continue
            argv = [sys.executable, "benchmarks/natural_images.py", "--device", device, "--tiles", str(tiles),
                    "--out", str(work / "natural"), "--models", "", "--also", "autoregressive=True",
                    "--budget-minutes", str(0.2 if args.smoke else args.natural_minutes),
                    "--iw-samples", str(5 if args.smoke else 100), "--no-latent-steps", "0", "--no-pictures", "--json"]
        elif stage == "speed":
            # two epochs: the compiled row's median leaves out its first epoch, which includes compilation
            argv = [sys.executable, "benchmarks/speed.py", "--dataset", dataset, "--device", device, "--repeats", "1",
                    "--epochs", "2", "--iw-samples", str(k), "--eval-images", str(min(images, 200)), "--no-pythae"]
        elif stage in ("iwae", "fast"):
            if stage == "fast" and args.smoke:
                results["stages"][stage] = {"status": "skipped in smoke mode (inductor on this CPU is tested elsewhere)"}
                continue
            opts = {"stage": stage, "device": device, "dataset": dataset, "epochs": 1 if args.smoke else args.epochs,
                    "run": str(work / "run"), "k": k, "images": images}
            argv = [sys.executable, "-c", STAGE_CODE.format(src=str(ROOT / "src"), opts=json.dumps(opts))]
        elif stage == "tests":
            # -W default: the GPU machine's own torch and numpy may warn where the CI's do not; the
            # warnings are listed in the output rather than failing the CUDA checks
            argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "default", "-m", "cuda",
                    "tests/test_cuda.py"]
        else:
            sys.exit(f"gpu_check: unknown stage {stage!r}")
        print(f"gpu_check: {stage} ...", file=sys.stderr, flush=True)
        results["stages"][stage] = run_stage(stage, argv, min(limits[stage], left), env)
        print(f"gpu_check: {stage}: {results['stages'][stage]['status']}", file=sys.stderr, flush=True)
        write(out, results)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write(out, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
