"""Pictures as pixels: image grids with labelled rows, and the grids of a model's samples, reconstructions,
analogies and traversals (Pillow only: no matplotlib, so training, the explorer and TensorBoard load fast).
Written atomically, so a crash never leaves half a picture.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

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


def label_rows(picture: Image.Image, labels: list[str], rows: int | None = None, title: str | None = None) -> Image.Image:
    """The picture with a text label left of each of its `rows` (default: len(labels)) equal-height rows of
    images (a label per row; "" leaves one blank) and an optional title above, black on white."""
    rows = rows or len(labels)
    font = ImageFont.load_default(size=12)
    draw = ImageDraw.Draw(picture)
    width = max([int(draw.textlength(t, font=font)) for t in labels] + [0]) + 8
    top = 18 if title else 0
    mode = picture.mode
    canvas = Image.new(mode, (picture.width + width, picture.height + top), 255 if mode == "L" else (255, 255, 255))
    canvas.paste(picture, (width, top))
    draw = ImageDraw.Draw(canvas)
    ink = 0 if mode == "L" else (0, 0, 0)
    height = picture.height / rows
    for r, text in enumerate(labels):
        draw.text((width - 4, top + (r + 0.5) * height), text, fill=ink, font=font, anchor="rm")
    if title:
        draw.text((width, 2), title, fill=ink, font=font)
    return canvas


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


@torch.no_grad()
def sample_grid(model, n: int = 64, names: list[str] | None = None) -> Image.Image:
    """An 8-wide grid of samples; for a model that draws classes, one row per class, labelled with its
    name (names: the class names, default their numbers)."""
    if model.num_classes:
        k = model.num_classes
        per_class = 10
        labels = torch.arange(k).repeat_interleave(per_class)
        grid = image_grid(model.sample(len(labels), labels=labels.tolist()), nrow=per_class)
        names = names or [str(c) for c in range(k)]
        return label_rows(grid, [f"class {c}" for c in names], title="Samples E[x|z,c], z ~ p(z|c): a row per class")
    rows = -(-n // 8)
    return label_rows(image_grid(model.sample(n), nrow=8), [f"{8 * r + 1}-{min(n, 8 * r + 8)}" for r in range(rows)],
                      title=f"{n} samples E[x|z], z ~ p(z)")


@torch.no_grad()
def reconstruction_grid(model, x: torch.Tensor, y: torch.Tensor | None, n: int = 16) -> Image.Image:
    """Pairs of rows: originals above their reconstructions."""
    x, y = x[:n], None if y is None else y[:n]
    recon = model.reconstruct(x, y)
    per_row = 8
    rows = []
    for start in range(0, len(x), per_row):
        rows += [x[start : start + per_row], recon[start : start + per_row]]
    labels = ["test image", "reconstruction"] * (len(rows) // 2)
    return label_rows(image_grid(torch.cat(rows), nrow=per_row), labels)


@torch.no_grad()
def analogy_grid(model, x: torch.Tensor, y: torch.Tensor, n: int = 8) -> Image.Image:
    """Rows = source test images; column 0 the image itself, then its code E[z|x, y] decoded as class 0..K-1
    (style transfer: the image's style drawn as every class)."""
    x, y = x[:n], None if y is None else y[:n]
    k = model.num_classes
    z = model.encode(x, y)  # (n, D)
    redrawn = model.decode(z.repeat_interleave(k, 0), torch.arange(k, device=z.device).repeat(len(x)))
    rows = torch.cat([x.unsqueeze(1), redrawn.view(len(x), k, *x.shape[1:])], dim=1)  # (n, K+1, C, H, W)
    labels = [f"test image {i + 1}" + ("" if y is None or y[i] < 0 else f" (class {int(y[i])})") for i in range(len(x))]
    return label_rows(image_grid(rows.flatten(0, 1), nrow=rows.shape[1]), labels,
                      title=f"Each row: a test image, then its z decoded as class 0, 1, ..., {k - 1}")


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
