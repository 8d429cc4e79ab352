"""Figures of a run (matplotlib): the latent space, training curves and schedules, any panel as a vector
figure; and run_pictures, which writes a run's PNGs (the grids themselves are in grids.py).

Every file is rendered in memory and written atomically, so a crash never leaves half a PNG.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: no global backend switch, no open-figure state

from . import checkpoint as ckpt
from .errors import VaekitError
from .grids import analogy_grid, axis_kl, image_grid, png_bytes, reconstruction_grid, sample_grid, traversal_grid
from .latent_map import latent_map
from .models.base import names_of


def figure_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def latent_plot(points: np.ndarray, y: torch.Tensor | None, xlabel: str, ylabel: str,
                names: list[str] | None = None) -> Figure:
    """A scatter of map points (N, 2), coloured by label y (N,) where known, with a legend of the class
    names (names[k] for label k; default the numbers)."""
    fig = Figure(figsize=(6.4, 5), layout="constrained")
    ax = fig.subplots()
    if y is None or bool((y < 0).all()):  # no labels: one colour
        ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.8)
    else:
        labels = y.cpu().numpy()
        classes = sorted(set(labels.tolist()) - {-1})
        colours = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
        if (labels < 0).any():
            unknown = labels < 0
            ax.scatter(points[unknown, 0], points[unknown, 1], s=4, color="0.75", alpha=0.6, label="unknown")
        for i, c in enumerate(classes):
            here = labels == c
            name = names[c] if names and c < len(names) else str(c)
            ax.scatter(points[here, 0], points[here, 1], s=6, alpha=0.8, color=colours(i % colours.N), label=name)
        ax.legend(title="Class", loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=2.5, frameon=False,
                  ncols=1 if len(classes) <= 20 else 2)
    ax.set(xlabel=xlabel, ylabel=ylabel, title="Latent Space of the Test Images")
    return fig


def latent_png(model, x: torch.Tensor, y: torch.Tensor | None, names: list[str] | None = None) -> bytes:
    """Posterior means of the images on the latent map (raw if D <= 2, else the first two principal components)."""
    with torch.no_grad():
        plane = latent_map(model.encode(x, y).cpu().numpy())
    return figure_png(latent_plot(plane.points, y, plane.xlabel, plane.ylabel, names))


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
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")  # titles never print over axis labels
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
        ax.set(xlabel="Epoch", ylabel=term_unit(term), title=term_title(term))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if ax.lines:
            ax.legend()
    for ax in axes[len(terms):]:
        ax.axis("off")
    return fig


TIMING = {"epoch", "step", "seconds", "train_seconds", "images_per_second"}
TITLES = {"neg_elbo": "−ELBO", "neg_iwae": "−IWAE_K", "kl": "KL", "nll": "−log p(x)", "lr": "Learning Rate",
          "kl_weight": "KL Weight", "recon": "Reconstruction"}
UNITLESS = ("error", "accuracy", "signal")  # terms that are not in nats


def term_title(term: str) -> str:
    """A logged key as a Title Case title: neg_elbo -> −ELBO, label_error -> Label Error."""
    return TITLES.get(term) or " ".join(TITLES.get(w, w.capitalize()) for w in term.split("_"))


def term_unit(term: str) -> str:
    return "share of images" if term.endswith(UNITLESS[:2]) else "nats per image"


def schedules_plot(metrics: list[dict]) -> Figure | None:
    """One panel per other logged number that changed during the run (learning rate, KL weight, a model's
    knobs) against the epoch; a constant one (a KL weight of 1 throughout) gets no panel."""
    keys = sorted({k for m in metrics for k, v in m.items()
                   if not k.startswith(("train_", "val_")) and k not in TIMING and isinstance(v, (int, float))})
    keys = [k for k in keys if len({m[k] for m in metrics if isinstance(m.get(k), (int, float))}) > 1]
    if not keys:
        return None
    fig = Figure(figsize=(4.2 * len(keys), 3.2), layout="constrained")
    for ax, key in zip(np.atleast_1d(fig.subplots(1, len(keys))).ravel(), keys):
        points = [(m["epoch"], m[key]) for m in metrics if isinstance(m.get(key), (int, float))]
        ax.plot(*zip(*points))
        ax.set(xlabel="Epoch", title=term_title(key))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))  # 2e-3, not 0.0020 beside the next panel
    return fig


@torch.no_grad()
def run_pictures(out: Path, model, test, seed: int) -> dict[str, bytes]:
    """Write a trained run's pictures (test: DeviceData): samples, reconstructions, the latent map (2 or more test
    images), a traversal, an analogy (models with classes) and the curves; returns them by file name as PNG
    bytes."""
    device = test.x.device
    pictures = {}
    names = ckpt.class_names(out, model.num_classes)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        pictures["samples.png"] = png_bytes(sample_grid(model, names=names))
        pictures["reconstructions.png"] = png_bytes(reconstruction_grid(model, test.x, test.y))
        if len(test.x) >= 2:  # a map of one point is no map (report.py says so in its place)
            pictures["latent.png"] = latent_png(model, test.x[:2000], None if test.y is None else test.y[:2000], names)
        pictures["traversal.png"] = png_bytes(traversal_grid(model, test.x, test.y))
        if model.num_classes:
            pictures["analogy.png"] = png_bytes(analogy_grid(model, test.x, test.y))
    metrics = ckpt.read_metrics(out)
    if metrics:
        pictures["curves.png"] = figure_png(curves_plot(metrics))
    for name, data in pictures.items():
        ckpt.atomic_write(out / name, data)
    return pictures


# ---- one panel as a figure of its own, for a paper: `vaekit plot RUN PANEL --out FILE.svg|.pdf|.png`

PANELS = ("curves", "schedules", "latent", "samples", "reconstructions", "traversal")
VECTOR_FORMATS = {".svg": "svg", ".pdf": "pdf", ".eps": "eps", ".png": "png"}


def _grid_figure(images: torch.Tensor, nrow: int, row_labels: list[str], title: str) -> Figure:
    """Images (N, C, H, W) as a grid in a matplotlib figure: the pixels a raster inside, the labels text."""
    grid = image_grid(images, nrow=nrow, min_cell=1)
    rows = len(row_labels)
    fig = Figure(figsize=(0.45 * nrow + 1.6, 0.45 * rows + 0.6), layout="constrained")
    ax = fig.subplots()
    ax.imshow(np.asarray(grid), cmap="gray" if grid.mode == "L" else None, vmin=0, vmax=255, interpolation="nearest")
    step = grid.height / rows
    ax.set_yticks([(r + 0.5) * step for r in range(rows)], row_labels)
    ax.set_xticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title)
    return fig


@torch.no_grad()
def panel_figure(run: Path, panel: str, model=None, test=None) -> Figure:
    """One panel of a run's pictures as a matplotlib figure (test: DeviceData of its test images)."""
    if panel not in PANELS:
        raise VaekitError(f"unknown panel {panel!r}: use one of {', '.join(PANELS)}")
    metrics = ckpt.read_metrics(run)
    if panel in ("curves", "schedules"):
        if not metrics:
            raise VaekitError(f"{run} has no metrics.jsonl lines to draw")
        fig = curves_plot(metrics) if panel == "curves" else schedules_plot(metrics)
        if fig is None:
            raise VaekitError(f"{run} logged no schedule that changed (learning rate, KL weight, ...)")
        return fig
    names = ckpt.class_names(run, model.num_classes)
    if panel == "latent":
        x, y = test.x[:2000], None if test.y is None else test.y[:2000]
        plane = latent_map(model.encode(x, y).cpu().numpy())
        return latent_plot(plane.points, y, plane.xlabel, plane.ylabel, names)
    if panel == "samples":
        if model.num_classes:
            labels = torch.arange(model.num_classes).repeat_interleave(10)
            return _grid_figure(model.sample(len(labels), labels=labels.tolist()), 10,
                                [f"class {n}" for n in names], "Samples E[x|z,c], z ~ p(z|c)")
        return _grid_figure(model.sample(64), 8, [""] * 8, "Samples E[x|z], z ~ p(z)")
    if panel == "reconstructions":
        x, y = test.x[:16], None if test.y is None else test.y[:16]
        recon = model.reconstruct(x, y)
        rows = torch.cat([x[:8], recon[:8], x[8:], recon[8:]])
        return _grid_figure(rows, 8, ["test image", "reconstruction"] * 2, "Reconstructions E[x|z = E[z|x]]")
    # traversal
    z = model.encode(test.x[:1], None if test.y is None else test.y[:1])[0]
    walk = model.traversal(z, 9)
    kl = axis_kl(model, test.x, test.y, len(walk))
    order = np.argsort(-kl, kind="stable") if kl is not None else np.arange(len(walk))
    order = order[:16]
    label = (max(int(test.y[0]), 0) if test.y is not None else 0) if model.num_classes else None
    images = model.decode(walk[torch.as_tensor(order.copy(), device=walk.device)].flatten(0, 1), label)
    axis = names_of(model)["axis"]
    rows = [f"{axis} {a + 1}" + (f" (KL {kl[a]:.2f})" if kl is not None else "") for a in order]
    return _grid_figure(images, walk.shape[1], rows, "Latent Traversals, Most KL First")


def save_figure(path: Path, fig: Figure) -> Path:
    """Write a figure in the format its name says (.svg, .pdf, .eps: vector; .png), atomically."""
    path = Path(path)
    fmt = VECTOR_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise VaekitError(f"{path}: cannot tell the figure format from '{path.suffix}': use one of "
                          f"{', '.join(VECTOR_FORMATS)}")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=200, bbox_inches="tight")
    ckpt.atomic_write(path, buf.getvalue())
    return path
