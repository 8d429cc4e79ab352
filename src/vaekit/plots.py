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
from .errors import VaekitError


def image_grid(images: torch.Tensor, nrow: int, pad: int = 1, min_cell: int = 28) -> Image.Image:
    """Tile images (N, C, H, W) in [0, 1] into a grid with `nrow` images per row, upscaled to >= min_cell px."""
    images = images.detach().float().clamp(0, 1).cpu()
    n, c, h, w = images.shape
    if c not in (1, 3):  # data.py accepts only these; anything else would not be a picture
        raise VaekitError(f"cannot draw images of {c} channels: 1 (grayscale) or 3 (RGB)")
    rows = (n + nrow - 1) // nrow
    canvas = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        canvas[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = img
    array = (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    picture = Image.fromarray(array[..., 0] if c == 1 else array)
    scale = max(1, -(-min_cell // h))
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


def png_bytes(picture: Image.Image) -> bytes:
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


def save_png(path: str | Path, picture: Image.Image) -> Path:
    ckpt.atomic_write(Path(path), png_bytes(picture))
    return Path(path)


def save_image(path: str | Path, picture: Image.Image) -> Path:
    """Write a picture in the format its name says (.png, .jpg, .webp, ...), atomically."""
    path = Path(path)
    formats = Image.registered_extensions()
    fmt = formats.get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        known = sorted(e for e, f in formats.items() if f in Image.SAVE and e in (".png", ".jpg", ".jpeg", ".webp", ".bmp",
                                                                                  ".gif", ".tif", ".tiff"))
        raise VaekitError(f"{path}: cannot tell the image format from '{path.suffix}': use one of {', '.join(known)}")
    buf = io.BytesIO()
    picture.convert("RGB" if fmt == "JPEG" and picture.mode not in ("L", "RGB") else picture.mode).save(buf, format=fmt)
    ckpt.atomic_write(path, buf.getvalue())
    return path


def figure_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


@torch.no_grad()
def sample_grid(model, n: int = 64) -> Image.Image:
    """An 8-wide grid of samples; for a model that draws classes, one row per class."""
    if model.num_classes:
        k = model.num_classes
        per_class = 10
        labels = torch.arange(k).repeat_interleave(per_class)
        return image_grid(model.sample(len(labels), labels=labels.tolist()), nrow=per_class)
    return image_grid(model.sample(n), nrow=8)


@torch.no_grad()
def reconstruction_grid(model, x: torch.Tensor, y: torch.Tensor | None, n: int = 16) -> Image.Image:
    """Pairs of rows: originals above their reconstructions."""
    x, y = x[:n], None if y is None else y[:n]
    recon = model.reconstruct(x, y)
    per_row = 8
    rows = []
    for start in range(0, len(x), per_row):
        rows += [x[start : start + per_row], recon[start : start + per_row]]
    return image_grid(torch.cat(rows), nrow=per_row)


@torch.no_grad()
def analogy_grid(model, x: torch.Tensor, y: torch.Tensor, n: int = 8) -> Image.Image:
    """Rows = source test images; column 0 the image itself, then its code E[z|x, y] decoded as class 0..K-1
    (style transfer: the image's style drawn as every class)."""
    x, y = x[:n], None if y is None else y[:n]
    k = model.num_classes
    z = model.encode(x, y)  # (n, D)
    redrawn = model.decode(z.repeat_interleave(k, 0), torch.arange(k, device=z.device).repeat(len(x)))
    rows = torch.cat([x.unsqueeze(1), redrawn.view(len(x), k, *x.shape[1:])], dim=1)  # (n, K+1, C, H, W)
    return image_grid(rows.flatten(0, 1), nrow=rows.shape[1])


def axis_kl(model, x: torch.Tensor, y: torch.Tensor | None, axes: int) -> np.ndarray | None:
    """The mean KL of each latent axis over test images (bounds' "kl_per_dim"), or None if the model has none."""
    n = min(len(x), 500)
    terms = model.bounds(x[:n], None if y is None else y[:n], num_samples=1, chunk=1)
    kl = terms.get("kl_per_dim")
    if kl is None or kl.dim() != 2 or kl.shape[1] != axes:
        return None
    return kl.double().mean(0).cpu().numpy()


@torch.no_grad()
def traversal_grid(model, x: torch.Tensor, y: torch.Tensor | None, steps: int = 9, max_rows: int = 16) -> Image.Image:
    """A test image's code walked along each latent axis (model.traversal), one row per axis, the axes
    with the most KL over the images x first (axis_kl; at most max_rows). A model that draws classes
    decodes every row as that image's class (the first image with a known label)."""
    known = [] if y is None else (y >= 0).nonzero()[:, 0].tolist()
    i = known[0] if known else 0
    z = model.encode(x[i : i + 1], None if y is None else y[i : i + 1])[0]
    walk = model.traversal(z, steps)  # (A, S, D)
    kl = axis_kl(model, x, y, len(walk))
    order = np.argsort(-kl, kind="stable") if kl is not None else np.arange(len(walk))
    walk = walk[torch.as_tensor(order[:max_rows].copy(), device=walk.device)]
    label = (int(y[i]) if known else 0) if model.num_classes else None
    return image_grid(model.decode(walk.flatten(0, 1), label), nrow=walk.shape[1])


def latent_plot(points: np.ndarray, y: torch.Tensor | None, xlabel: str, ylabel: str) -> Figure:
    """A scatter of map points (N, 2), coloured by label y (N,) where known."""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    if y is None or bool((y < 0).all()):  # no labels: one colour (and no colour map to warn about)
        ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.8)
    else:
        colours = ax.scatter(points[:, 0], points[:, 1], c=y.cpu().numpy(), cmap="tab10", s=6, alpha=0.8)
        fig.colorbar(colours, ax=ax, label="class (-1: unknown)" if bool((y < 0).any()) else "class")
    ax.set(xlabel=xlabel, ylabel=ylabel, title="latent space (test images)")
    return fig


def latent_png(model, x: torch.Tensor, y: torch.Tensor | None) -> bytes:
    """Posterior means of the images on the latent map (raw if D <= 2, else the first two principal components)."""
    from .latent_map import latent_map

    with torch.no_grad():
        plane = latent_map(model.encode(x, y).cpu().numpy())
    return figure_png(latent_plot(plane.points, y, plane.xlabel, plane.ylabel))


def latent_figure(path: Path, model, x: torch.Tensor, y: torch.Tensor | None) -> None:
    ckpt.atomic_write(path, latent_png(model, x, y))


def curves_figure(path: Path, metrics: list[dict]) -> None:
    ckpt.atomic_write(path, figure_png(curves_plot(metrics)))


def curves_plot(metrics: list[dict]) -> Figure:
    """One panel per logged term (train and validation) against the epoch; -ELBO first."""
    epochs = [m["epoch"] for m in metrics]
    terms = sorted({k.split("_", 1)[1] for m in metrics for k in m if k.startswith(("train_", "val_"))}
                   - {"seconds"}, key=lambda t: (t != "neg_elbo", t))
    cols = min(3, len(terms))
    rows = -(-len(terms) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, term in zip(axes, terms):
        for split in ("train", "val"):
            points = [(e, m.get(f"{split}_{term}")) for e, m in zip(epochs, metrics)]
            points = [(e, v) for e, v in points if isinstance(v, (int, float)) and np.isfinite(v)]
            if points:
                ax.plot(*zip(*points), label="train" if split == "train" else "validation")
        values = [m.get(f"val_{term}") for m in metrics if isinstance(m.get(f"val_{term}"), (int, float))]
        if term == "neg_elbo" and len(values) > 2:  # the first epochs would flatten the rest
            lo = min(values)
            ax.set_ylim(lo - 0.1 * abs(lo), np.percentile(values, 95) + 0.05 * abs(lo))
        ax.set(xlabel="epoch", title=term.replace("_", " "))
        if ax.lines:
            ax.legend()
    for ax in axes[len(terms):]:
        ax.axis("off")
    return fig


TIMING = {"epoch", "step", "seconds", "train_seconds", "images_per_second"}


def schedules_plot(metrics: list[dict]) -> Figure | None:
    """One panel per other logged number (learning rate, KL weight, a model's knobs) against the epoch."""
    keys = sorted({k for m in metrics for k, v in m.items()
                   if not k.startswith(("train_", "val_")) and k not in TIMING and isinstance(v, (int, float))})
    if not keys:
        return None
    fig = Figure(figsize=(4.2 * len(keys), 3.0))
    for ax, key in zip(np.atleast_1d(fig.subplots(1, len(keys))).ravel(), keys):
        points = [(m["epoch"], m[key]) for m in metrics if isinstance(m.get(key), (int, float))]
        ax.plot(*zip(*points))
        ax.set(xlabel="epoch", title=key.replace("_", " "))
    return fig


def picture_names(model) -> tuple[str, ...]:
    """The files run_pictures writes for this model."""
    return (("samples.png", "reconstructions.png", "latent.png", "traversal.png")
            + (("analogy.png",) if model.num_classes else ()) + ("curves.png",))


@torch.no_grad()
def run_pictures(out: Path, model, test, seed: int) -> dict[str, bytes]:
    """Write the picture_names() of a trained run (test: DeviceData); returns them as PNG bytes."""
    device = test.x.device
    pictures = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        pictures["samples.png"] = png_bytes(sample_grid(model))
        pictures["reconstructions.png"] = png_bytes(reconstruction_grid(model, test.x, test.y))
        pictures["latent.png"] = latent_png(model, test.x[:2000], None if test.y is None else test.y[:2000])
        pictures["traversal.png"] = png_bytes(traversal_grid(model, test.x, test.y))
        if model.num_classes:
            pictures["analogy.png"] = png_bytes(analogy_grid(model, test.x, test.y))
    metrics = ckpt.read_metrics(out)
    if metrics:
        pictures["curves.png"] = figure_png(curves_plot(metrics))
    for name, data in pictures.items():
        ckpt.atomic_write(out / name, data)
    return pictures
