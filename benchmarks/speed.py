"""Training throughput (images/s) of vaekit against the loops people write by hand, in one run.

    python benchmarks/speed.py --dataset fashion-mnist --epochs 1 --repeats 2
    python benchmarks/speed.py --dataset fashion-mnist --arch mlp --hidden 400 --latent-dim 20
    python benchmarks/speed.py --dataset fashion-mnist --device cuda --epochs 3   # on a GPU machine

Rows (same architecture, batch size, optimizer, device; dynamic binarization everywhere):
  hand-written, DataLoader   the pytorch/examples-style loop: DataLoader over a TensorDataset
  hand-written, tensors      the bare minimum: in-memory tensors, index gathers, no DataLoader
  vaekit                     `vaekit.train` end to end; throughput of its step loop from metrics.jsonl
  vaekit --compile bf16      the same with --compile --precision bf16 (on CUDA, or with --fast-row)
  pythae                     pythae's TrainingPipeline on the same encoder/decoder, in its own venv
                             (--pythae-python); skipped with a note when that is missing
Runs are interleaved and repeated; the table shows the median and the ratio to the DataLoader loop.
The networks are vaekit's own (nets.make_networks), so only the training machinery differs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import vaekit  # noqa: E402
from vaekit.config import DataConfig, ModelConfig  # noqa: E402
from vaekit.data import load_dataset  # noqa: E402
from vaekit.nets import make_networks  # noqa: E402
from vaekit.train import fit  # noqa: E402


def neg_elbo_by_hand(encoder, decoder, x):
    """The loss as written in pytorch/examples' vae/main.py: BCE summed + analytic KL, mean over images."""
    loc, scale = encoder(x)
    z = loc + scale * torch.randn_like(scale)
    logits = decoder(z)
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kl = -0.5 * torch.sum(1 + 2 * scale.log() - loc.pow(2) - scale.pow(2))
    return (bce + kl) / len(x)


def hand_written(model_cfg: ModelConfig, x_uint8: torch.Tensor, args, dataloader: bool) -> float:
    """Median images/s over the epochs of a minimal hand-written loop. The DataLoader loop keeps the
    float dataset in host memory and copies each batch to the device, as pytorch/examples does; the
    tensor loop keeps the uint8 images on the device."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    encoder, decoder = (m.to(device) for m in make_networks(model_cfg))
    params = list(encoder.parameters()) + list(decoder.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    n, speeds = len(x_uint8), []
    data = torch.utils.data.TensorDataset(x_uint8.float() / 255)
    x_device = x_uint8.to(device)
    for _ in range(args.epochs):
        sync(device)
        start = time.perf_counter()
        if dataloader:
            batches = (b[0].to(device) for b in torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True))
        else:
            order = torch.randperm(n, device=device)
            batches = (x_device[order[i : i + args.batch_size]].float() / 255 for i in range(0, n, args.batch_size))
        for xb in batches:
            loss = neg_elbo_by_hand(encoder, decoder, torch.bernoulli(xb))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        sync(device)
        speeds.append(n / (time.perf_counter() - start))
    return statistics.median(speeds)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def vaekit_run(args, workdir: Path, **fast) -> float:
    out = workdir / "vaekit-run"
    options = dict(dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size, arch=args.arch,
                   latent_dim=args.latent_dim, device=args.device, **fast)
    options.update({k: getattr(args, k) for k in ("width", "hidden") if getattr(args, k) is not None})
    fit(*vaekit.make_configs(**options), out, overwrite=True, progress=False)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if fast.get("compile") and len(metrics) > 1:
        metrics = metrics[1:]  # the first epoch includes compilation, reported apart
    return statistics.median(m["images_per_second"] for m in metrics)


PYTHAE_SCRIPT = r"""
import json, sys, time, torch
sys.path.insert(0, {src!r})
from vaekit.config import ModelConfig
from vaekit.data import load_dataset
from vaekit.config import DataConfig
from vaekit.nets import make_networks
from pythae.models import VAE, VAEConfig
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseEncoder, BaseDecoder
from pythae.trainers import BaseTrainerConfig
from pythae.pipelines import TrainingPipeline

cfg = ModelConfig(**json.loads({model_cfg!r}))
enc, dec = make_networks(cfg)

class Encoder(BaseEncoder):
    def __init__(self):
        super().__init__(); self.net = enc
    def forward(self, x):
        loc, scale = self.net(x)
        return ModelOutput(embedding=loc, log_covariance=2 * scale.log())

class Decoder(BaseDecoder):
    def __init__(self):
        super().__init__(); self.net = dec
    def forward(self, z):
        return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))

data = load_dataset(DataConfig(dataset={dataset!r}))
torch.manual_seed(0)
x = torch.bernoulli(data.train.to_float()).numpy()  # pythae has no dynamic binarization: a static sample
model = VAE(VAEConfig(input_dim=tuple(cfg.image_shape), latent_dim=cfg.latent_dim, reconstruction_loss="bce"),
            encoder=Encoder(), decoder=Decoder())
trainer = BaseTrainerConfig(output_dir={out!r}, num_epochs={epochs}, per_device_train_batch_size={bs},
                            learning_rate=1e-3, steps_saving=None, no_cuda={no_cuda})
pipeline = TrainingPipeline(training_config=trainer, model=model)
start = time.perf_counter()
pipeline(train_data=x)
print(json.dumps({{"images_per_second": {epochs} * len(x) / (time.perf_counter() - start)}}))
"""


def pythae_python(venv: Path) -> tuple[Path | None, str]:
    """pythae in a virtual environment of its own (created on first use), beside this torch."""
    python = venv / "bin" / "python"
    if not python.exists():
        steps = [[sys.executable, "-m", "venv", str(venv)],
                 [str(python), "-m", "pip", "install", "--quiet", f"torch=={torch.__version__.split('+')[0]}"],
                 [str(python), "-m", "pip", "install", "--quiet", "pythae", "safetensors", "scikit-learn", "tqdm"]]
        for step in steps:
            if subprocess.run(step, capture_output=True).returncode != 0:
                return None, f"skipped: `{' '.join(step[2:5])}` failed"
    return python, ""


def pythae_run(args, model_cfg: ModelConfig, workdir: Path) -> float | str:
    if args.no_pythae:
        return "skipped (--no-pythae)"
    python, note = pythae_python(Path(args.pythae_venv))
    if python is None:
        return note
    from dataclasses import asdict

    script = PYTHAE_SCRIPT.format(src=str(ROOT / "src"), model_cfg=json.dumps(asdict(model_cfg)), dataset=args.dataset,
                                  out=str(workdir / "pythae"), epochs=args.epochs, bs=args.batch_size,
                                  no_cuda=args.device != "cuda")
    done = subprocess.run([str(python), "-c", script], capture_output=True, text=True)
    if done.returncode != 0:
        return "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1][:100]
    return json.loads(done.stdout.strip().splitlines()[-1])["images_per_second"]


def iwae_speed(model_cfg: ModelConfig, data, k: int, images: int, device: torch.device) -> tuple[float, float]:
    """(images/s, nll) of vaekit's chunked IWAE evaluation with K samples on the first test images."""
    from vaekit.data import fixed_targets
    from vaekit.evaluate import evaluate
    from vaekit.models import VAE

    torch.manual_seed(0)
    model = VAE(model_cfg).to(device).eval()
    x = fixed_targets(data.test, "dynamic", 3, device).x[:images]
    sync(device)
    start = time.perf_counter()
    r = evaluate(model, x, iw_samples=k)  # returns Python floats: synchronised
    return images / (time.perf_counter() - start), r["nll"]


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--arch", default="conv", choices=("conv", "mlp"))
    parser.add_argument("--width", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--latent-dim", type=int, default=ModelConfig.latent_dim)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--fast-row", action="store_true",
                        help="add the --compile --precision bf16 row off CUDA too (on CUDA it is always there)")
    parser.add_argument("--iw-samples", type=int, default=1000, help="K of the evaluation row")
    parser.add_argument("--eval-images", type=int, default=200, help="test images of the evaluation row")
    parser.add_argument("--pythae-venv", default=str(ROOT / "benchmarks" / ".pythae-venv"),
                        help="virtual environment for pythae, created on first use")
    parser.add_argument("--no-pythae", action="store_true", help="leave the pythae row out (e.g. offline)")
    args = parser.parse_args()

    data = load_dataset(DataConfig(dataset=args.dataset))
    sizes = {k: getattr(args, k) for k in ("width", "hidden") if getattr(args, k) is not None}
    model_cfg = vaekit.models.VAE.Config(arch=args.arch, latent_dim=args.latent_dim, image_shape=data.image_shape, **sizes)
    x = data.train.x if data.train.max_value == 255 else (data.train.to_float() * 255).round().to(torch.uint8)
    params = sum(p.numel() for m in make_networks(model_cfg) for p in m.parameters())
    rows: dict[str, list] = {"hand-written, DataLoader": [], "hand-written, tensors": [], "vaekit": [], "pythae": []}
    if args.device == "cuda" or args.fast_row:
        rows["vaekit --compile --precision bf16"] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            rows["hand-written, DataLoader"].append(hand_written(model_cfg, x, args, dataloader=True))
            rows["hand-written, tensors"].append(hand_written(model_cfg, x, args, dataloader=False))
            rows["vaekit"].append(vaekit_run(args, Path(tmp)))
            rows["pythae"].append(pythae_run(args, model_cfg, Path(tmp)))
            if "vaekit --compile --precision bf16" in rows:
                rows["vaekit --compile --precision bf16"].append(vaekit_run(args, Path(tmp), compile=True, precision="bf16"))
    base = statistics.median(rows["hand-written, DataLoader"])
    tensors = statistics.median(rows["hand-written, tensors"])
    print(f"\n{args.dataset}, {args.arch} VAE ({params:,} parameters), batch {args.batch_size}, "
          f"{len(x):,} training images, {device_name(args.device)}, torch {torch.__version__}, "
          f"median of {args.repeats}\n")
    print("| trainer | images/s | vs DataLoader loop | vs tensor loop |")
    print("|---|---:|---:|---:|")
    for name, values in rows.items():
        numbers = [v for v in values if isinstance(v, float)]
        if not numbers:
            print(f"| {name} | {values[0]} | | |")
            continue
        speed = statistics.median(numbers)
        print(f"| {name} | {speed:,.0f} | {speed / base:.2f}x | {speed / tensors:.2f}x |")
    per_s, _ = iwae_speed(model_cfg, data, args.iw_samples, args.eval_images, torch.device(args.device))
    print(f"\nIWAE evaluation (vaekit.evaluate, K = {args.iw_samples}, {args.eval_images} test images, "
          f"default memory cap): {per_s:,.1f} images/s = {per_s * args.iw_samples:,.0f} "
          f"image-samples/s")


if __name__ == "__main__":
    main()
