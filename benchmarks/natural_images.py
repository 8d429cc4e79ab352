"""Bits/dim on natural-image tiles: lossless codecs against vaekit's discretized likelihood, offline.

Photographs that ship inside packages (scikit-image's sample data, scikit-learn's sample images) are
cut into 32x32 RGB tiles and split BY PHOTOGRAPH: the test tiles come from photos no training tile
comes from. The table gives -log2 p(x) / D (bits per value, D = 3 * 32 * 32) on the test tiles for

    PNG, WebP lossless      (Pillow) each tile compressed on its own, and the test photos' tiled areas
                            compressed whole ("mosaic": the codec sees each tile's neighbours)
    per-pixel logistic mix  the discretized logistic mixture with no latent: one set of parameters per
                            pixel position, fitted to the training tiles (the likelihood alone)
    vaekit VAE (HVAE)       `vaekit train` at its defaults on an .npz of the training tiles (the likelihood
                            is then the discretized logistic mixture, 10 components, 8 bits), --epochs set
                            to fit the CPU budget; -log p(x) is the IWAE estimate with K samples;
                            --also autoregressive=True adds the VAE with the masked-convolution likelihood

Each row's CPU minutes are the process's CPU time (time.process_time: all threads, not wall time).
With --device cuda, vaekit trains and evaluates on the GPU and its rows' budget and minutes are wall
time instead (benchmarks/gpu_check.py's natural stage).

    pip install -e '.[bench]'            # scikit-image (its sample photos)
    OMP_NUM_THREADS=1 python benchmarks/natural_images.py --out /tmp/natural
    python benchmarks/natural_images.py --out runs/natural-tiles --tiles-only      # the tiles alone, for
    python benchmarks/natural_images.py --tiles runs/natural-tiles --device cuda   # a machine without the photos
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

TILE = 32
TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "immunohistochemistry", "china")
MORE_PHOTOS = ("motorcycle", "grace_hopper")  # --more-photos: scikit-image's stereo left view, matplotlib's sample
TEST_PHOTOS = ("chelsea", "flower")


def photos() -> dict[str, np.ndarray]:
    """name -> (H, W, 3) uint8: scikit-image's colour photographs, scikit-learn's two and matplotlib's one."""
    import matplotlib.cbook
    import skimage.data
    from PIL import Image
    from sklearn.datasets import load_sample_images

    found = {name: getattr(skimage.data, name)() for name in ("astronaut", "coffee", "rocket", "immunohistochemistry",
                                                              "chelsea")}
    sample = load_sample_images()
    for path, image in zip(sample.filenames, sample.images):
        found[Path(path).stem] = image
    found["motorcycle"] = skimage.data.stereo_motorcycle()[0]
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        found["grace_hopper"] = np.asarray(Image.open(f).convert("RGB"))
    return {k: np.ascontiguousarray(v[..., :3]).astype(np.uint8) for k, v in found.items()}


def tiles(image: np.ndarray, stride: int) -> np.ndarray:
    """(N, 3, 32, 32) tiles at `stride` (stride 32: the non-overlapping grid), row by row."""
    h, w = image.shape[:2]
    out = [image[i:i + TILE, j:j + TILE] for i in range(0, h - TILE + 1, stride) for j in range(0, w - TILE + 1, stride)]
    return np.stack(out).transpose(0, 3, 1, 2)


def tiled_area(image: np.ndarray) -> np.ndarray:
    """The part of a photo its non-overlapping tiles cover."""
    h, w = image.shape[:2]
    return image[: h - h % TILE, : w - w % TILE]


def encoded_bytes(image: np.ndarray, codec: str) -> int:
    from PIL import Image

    buffer = io.BytesIO()
    if codec == "png":
        Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    else:
        Image.fromarray(image).save(buffer, format="WEBP", lossless=True, quality=100, method=6)
    return len(buffer.getvalue())


def codec_rows(test_tiles: np.ndarray, areas: list[np.ndarray]) -> list[tuple[str, float, float]]:
    values = test_tiles.size
    rows = []
    for codec, name in (("png", "PNG (optimize)"), ("webp", "WebP lossless")):
        start = time.process_time()
        per_tile = sum(encoded_bytes(t.transpose(1, 2, 0), codec) for t in test_tiles)
        rows.append((f"{name}, each tile alone", 8 * per_tile / values, (time.process_time() - start) / 60))
        if not areas:  # tiles without their photographs (--tiles)
            continue
        start = time.process_time()
        whole = sum(encoded_bytes(a, codec) for a in areas)
        rows.append((f"{name}, test photos whole", 8 * whole / values, (time.process_time() - start) / 60))
    return rows


def no_latent_row(train: np.ndarray, test: np.ndarray, steps: int, seed: int) -> tuple[str, float, float]:
    """The per-position discretized logistic mixture, no latent: parameters (P, 32, 32) fitted by Adam from
    the decoder's starting point (the likelihood's initial_bias)."""
    from vaekit.likelihoods import DiscretizedLogisticMixture
    from vaekit.models.vae import VAEConfig

    start = time.process_time()
    torch.manual_seed(seed)
    components = 10
    cfg = VAEConfig(image_shape=(3, TILE, TILE), likelihood="logistic-mixture", mixture_components=components)
    params = DiscretizedLogisticMixture.initial_bias(cfg)[None, :, None, None].repeat(1, 1, TILE, TILE)
    params[:, :components] += 0.01 * torch.randn(1, components, TILE, TILE)  # distinct components
    params.requires_grad_(True)
    opt = torch.optim.Adam([params], lr=0.02)
    x_train = torch.from_numpy(train).float() / 255
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = x_train[torch.randint(len(x_train), (128,), generator=generator)]
        loss = -DiscretizedLogisticMixture(params, 3, components, 8).log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        nll = -DiscretizedLogisticMixture(params, 3, components, 8).log_prob(torch.from_numpy(test).float() / 255)
    bits = float(nll.double().mean()) / (test[0].size * math.log(2))
    return f"per-pixel logistic mixture, no latent ({steps} steps)", bits, (time.process_time() - start) / 60


def clock(device: str) -> float:
    """Seconds: this process's CPU time on the CPU; on a GPU, wall time once its queued work is done."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def vaekit_row(model: str, train_npz: Path, test_npz: Path, out: Path, budget_minutes: float, iw_samples: int,
               seed: int, extra: dict, device: str = "cpu", pictures: bool = True) -> tuple[str, float, float, dict]:
    """`vaekit train` at its defaults (plus `extra`) with --epochs fitted to the budget, then the IWAE."""
    import vaekit
    from vaekit import models
    from vaekit.api import make_configs
    from vaekit.config import to_dict
    from vaekit.data import load_dataset

    start = clock(device)
    options = dict(dataset=str(train_npz), model=model, seed=seed, test_fraction=0.01, device=device, **extra)
    data_cfg, model_cfg, train_cfg = make_configs(**options)
    dataset = load_dataset(data_cfg)
    # The CPU time of a step, measured on a throwaway copy of the model (counted in the budget).
    probe = models.build(type(model_cfg)(**{**to_dict(model_cfg), "likelihood": "logistic-mixture",
                                            "image_shape": dataset.image_shape})).to(device)
    opt = torch.optim.Adam(probe.parameters(), lr=train_cfg.lr)
    x = dataset.train.x[: train_cfg.batch_size].float().to(device) / 255
    for i in range(6):
        if i == 1:
            t0 = clock(device)
        loss = probe(x)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    step_seconds = (clock(device) - t0) / 5
    steps_per_epoch = math.ceil(len(dataset.train) / train_cfg.batch_size)
    left = budget_minutes * 60 - (clock(device) - start)
    epochs = max(1, int(left / (1.1 * step_seconds * steps_per_epoch)))  # 10 %: validation, pictures
    tag = "-".join(f"{k}{v}" for k, v in extra.items())
    run = vaekit.train(out / f"run-{model}{'-' + tag if tag else ''}", overwrite=True, progress=False, epochs=epochs,
                       pictures=pictures, **options)
    train_minutes = (clock(device) - start) / 60
    start = clock(device)
    result = vaekit.evaluate(run, data=str(test_npz), iw_samples=iw_samples, device=device)
    eval_minutes = (clock(device) - start) / 60
    info = {"epochs": epochs, "train_minutes": train_minutes, "eval_minutes": eval_minutes, "result": result}
    name = f"vaekit {model} ({', '.join(f'{k} {v}' for k, v in extra.items()) or 'defaults'}), {epochs} epochs, " \
           f"IWAE K={iw_samples}"
    return name, result["nll_bits_per_dim"], train_minutes + eval_minutes, info


def _value(text: str):
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/vaekit-natural", help="folder for the tiles and the run folders")
    parser.add_argument("--stride", type=int, default=16, help="training tiles' stride (test tiles never overlap)")
    parser.add_argument("--budget-minutes", type=float, default=20.0,
                        help="CPU minutes for each vaekit model's training (the IWAE evaluation comes on top)")
    parser.add_argument("--iw-samples", type=int, default=1000)
    parser.add_argument("--models", default="vae", help="comma-separated vaekit models (vae, hvae)")
    parser.add_argument("--also", action="append", default=[], metavar="'KEY=VALUE ...'",
                        help="another vaekit VAE row with these `vaekit train` options over the defaults (repeatable), "
                             "e.g. --also 'arch=resnet latent_dim=64' or --also autoregressive=True")
    parser.add_argument("--no-latent-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--more-photos", action="store_true",
                        help=f"train also on {' and '.join(MORE_PHOTOS)} (the test photographs stay the same)")
    parser.add_argument("--flips", action="store_true", help="add each training tile mirrored left to right")
    parser.add_argument("--device", default="cpu", help="where vaekit trains and evaluates (cuda: budget and minutes "
                        "of its rows are wall time)")
    parser.add_argument("--tiles", help="a folder with the train.npz and test.npz an earlier run wrote (its --out): no "
                        "photographs needed; the codecs' whole-photo rows are left out")
    parser.add_argument("--tiles-only", action="store_true", help="write train.npz and test.npz into --out and stop")
    parser.add_argument("--no-pictures", action="store_true", help="no pictures or report.html in the run folders "
                        "(an autoregressive model draws its samples pixel by pixel)")
    parser.add_argument("--json", action="store_true", help="end with one line of JSON: the rows and their unit")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.tiles:
        train, test = (np.load(Path(args.tiles) / f"{part}.npz")["x"] for part in ("train", "test"))
        described = f"{len(train)} training tiles and {len(test)} test tiles from {args.tiles}"
        areas = []
    else:
        images = photos()
        names = TRAIN_PHOTOS + (MORE_PHOTOS if args.more_photos else ())
        train = np.concatenate([tiles(images[n], args.stride) for n in names])
        if args.flips:
            train = np.concatenate([train, train[..., ::-1]])
        test = np.concatenate([tiles(images[n], TILE) for n in TEST_PHOTOS])
        described = (f"{len(train)} training tiles (stride {args.stride}{', and mirrored' if args.flips else ''}) of "
                     f"{', '.join(names)}; {len(test)} test tiles of {', '.join(TEST_PHOTOS)} (no photo in both); "
                     f"D = 3 x {TILE} x {TILE} = {test[0].size}")
        areas = [tiled_area(images[n]) for n in TEST_PHOTOS]
    np.savez_compressed(out / "train.npz", x=train)
    np.savez_compressed(out / "test.npz", x=test)
    print(described, flush=True)
    if args.tiles_only:
        return

    rows = codec_rows(test, areas)
    if args.no_latent_steps:
        rows.append(no_latent_row(train, test, args.no_latent_steps, args.seed))
    for line in rows:
        print(f"  {line[0]:60s} {line[1]:7.4f} bits/dim  {line[2]:6.2f} CPU min", flush=True)
    runs = [(model, {}) for model in filter(None, args.models.split(","))]
    runs += [("vae", {k: _value(v) for k, v in (item.split("=", 1) for item in also.split())}) for also in args.also]
    for model, extra in runs:
        name, bits, minutes, info = vaekit_row(model, out / "train.npz", out / "test.npz", out, args.budget_minutes,
                                               args.iw_samples, args.seed, extra, args.device,
                                               not args.no_pictures)
        rows.append((name, bits, minutes))
        r = info["result"]
        print(f"  {name:60s} {bits:7.4f} bits/dim  {minutes:6.2f} min (train {info['train_minutes']:.2f}, "
              f"IWAE {info['eval_minutes']:.2f}); -ELBO {r['neg_elbo_bits_per_dim']:.4f} bits/dim", flush=True)

    unit = "CPU minutes of this process" + ("" if args.device == "cpu" else f"; vaekit's rows: wall minutes on {args.device}")
    print(f"\nbits/dim on {len(test)} test tiles (32x32 RGB) of photos not trained on; {unit}")
    print(f"| {'method':60s} | bits/dim | minutes |\n|{'-' * 62}|---------:|--------:|")
    for name, bits, minutes in rows:
        print(f"| {name:60s} | {bits:8.4f} | {minutes:7.2f} |")
    if args.json:
        print(json.dumps({"unit": unit, "test_tiles": len(test), "train_tiles": len(train),
                          "rows": [{"method": n, "bits_per_dim": b, "minutes": m} for n, b, m in rows]}))


if __name__ == "__main__":
    main()
