"""Pictures of a run: sample grids, reconstructions, the latent space, training curves (PNG).

Every file is rendered in memory and written atomically, so a crash never leaves half a PNG.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: no global backend switch, no open-figure state
from PIL import Image

from . import checkpoint as ckpt


def image_grid(images: torch.Tensor, nrow: int, pad: int = 1, min_cell: int = 28) -> Image.Image:
    """Tile images (N, C, H, W) in [0, 1] into a grid with `nrow` images per row, upscaled to >= min_cell px."""
    images = images.detach().float().clamp(0, 1).cpu()
    n, c, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    canvas = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        canvas[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = img
    array = (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    picture = Image.fromarray(array[..., 0] if c == 1 else array)
    scale = max(1, -(-min_cell // h))
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


def save_png(path: str | Path, picture: Image.Image) -> Path:
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    ckpt.atomic_write(Path(path), buf.getvalue())
    return Path(path)


def _save_figure(path: Path, fig: Figure) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    ckpt.atomic_write(path, buf.getvalue())


def sample_grid(model, n: int = 64) -> Image.Image:
    """An 8-wide grid of samples; for a conditional model, one row per class."""
    if model.conditional:
        k = model.cfg.num_classes
        per_class = 10
        labels = torch.arange(k).repeat_interleave(per_class)
        return image_grid(model.sample(len(labels), labels=labels.tolist()), nrow=per_class)
    return image_grid(model.sample(n), nrow=8)


def reconstruction_grid(model, x: torch.Tensor, y: torch.Tensor | None, n: int = 16) -> Image.Image:
    """Pairs of rows: originals above their reconstructions."""
    x, y = x[:n], None if y is None else y[:n]
    recon = model.reconstruct(x, y if model.conditional else None)
    per_row = 8
    rows = []
    for start in range(0, len(x), per_row):
        rows += [x[start : start + per_row], recon[start : start + per_row]]
    return image_grid(torch.cat(rows), nrow=per_row)


def analogy_grid(model, x: torch.Tensor, y: torch.Tensor, n: int = 8) -> Image.Image:
    """Rows = source test images; column 0 the image itself, then its latent decoded as class 0..K-1."""
    x, y = x[:n], y[:n]
    redrawn = model.redraw_as_every_class(x, y)  # (n, K, C, H, W)
    rows = torch.cat([x.unsqueeze(1), redrawn], dim=1)  # (n, K+1, C, H, W)
    return image_grid(rows.flatten(0, 1), nrow=rows.shape[1])


def latent_figure(path: Path, model, x: torch.Tensor, y: torch.Tensor | None) -> None:
    """Posterior means of the images, in 2-D (the first two principal components if D > 2)."""
    with torch.no_grad():
        mu = model.posterior(x, y if model.conditional else None).mean.cpu().numpy()
    if mu.shape[1] > 2:
        from sklearn.decomposition import PCA

        mu = PCA(n_components=2).fit_transform(mu)
        xlabel, ylabel = "PC 1 of E[z|x]", "PC 2 of E[z|x]"
    elif mu.shape[1] == 2:
        xlabel, ylabel = "E[z1|x]", "E[z2|x]"
    else:
        mu = np.concatenate([mu, np.zeros_like(mu)], axis=1)
        xlabel, ylabel = "E[z|x]", ""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    points = ax.scatter(mu[:, 0], mu[:, 1], c=None if y is None else y.cpu().numpy(), cmap="tab10", s=6, alpha=0.8)
    if y is not None:
        fig.colorbar(points, ax=ax, label="class")
    ax.set(xlabel=xlabel, ylabel=ylabel, title="latent space (test images)")
    _save_figure(path, fig)


def curves_figure(path: Path, metrics: list[dict]) -> None:
    """-ELBO (train and validation) and its KL part per epoch."""
    epochs = [m["epoch"] for m in metrics]
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    left.plot(epochs, [m["train_neg_elbo"] for m in metrics], label="train")
    left.plot(epochs, [m["val_neg_elbo"] for m in metrics], label="validation")
    lo = min(m["val_neg_elbo"] for m in metrics)
    left.set_ylim(lo - 0.1 * abs(lo), np.percentile([m["val_neg_elbo"] for m in metrics], 95) + 0.05 * abs(lo))
    left.set(xlabel="epoch", ylabel="-ELBO (nats per image)", title="negative ELBO")
    left.legend()
    right.plot(epochs, [m["train_kl"] for m in metrics], label="KL (train)")
    right.plot(epochs, [m["val_kl"] for m in metrics], label="KL (validation)")
    right.set(xlabel="epoch", ylabel="nats per image", title="KL(q(z|x) || p(z))")
    right.legend()
    _save_figure(path, fig)


def picture_names(conditional: bool) -> tuple[str, ...]:
    """The files run_pictures writes."""
    return ("samples.png", "reconstructions.png", "latent.png") + (("analogy.png",) if conditional else ()) + ("curves.png",)


def run_pictures(out: Path, model, test, seed: int) -> None:
    """The picture_names() of a trained run; test: DeviceData."""
    device = test.x.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        save_png(out / "samples.png", sample_grid(model))
        save_png(out / "reconstructions.png", reconstruction_grid(model, test.x, test.y))
        latent_figure(out / "latent.png", model, test.x[:2000], None if test.y is None else test.y[:2000])
        if model.conditional:
            save_png(out / "analogy.png", analogy_grid(model, test.x, test.y))
    metrics = ckpt.read_metrics(out)
    if metrics:
        curves_figure(out / "curves.png", metrics)
