"""report.html: one self-contained page about a run (images embedded as data URIs, nothing fetched).

It holds the config; the numbers (the test evaluations `vaekit evaluate` recorded, the best epoch's
validation terms); training curves of every logged term; samples (a row per class for a model that
draws classes); reconstructions beside their originals; the 2-D map of the test codes; a grid decoded
from a sweep over the map's plane; interpolations between pairs of test images; latent traversals,
one row per axis of model.traversal(), ordered by the axis' KL. It knows the model only through the
contract (models/base.py): encode, decode, sample, reconstruct, bounds' "kl_per_dim", traversal.
"""

from __future__ import annotations

import base64
import html
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import checkpoint as ckpt
from . import grids, plots, runs
from .data import test_targets
from .errors import VaekitError
from .evaluate import active_units_definition
from .health import check, training_numbers
from .latent_map import LatentMap, latent_map
from .models.base import NAMES, names_of
from .objectives import BOUND_NAMES, selected_bound

REPORT = "report.html"
MAP_IMAGES = 2000  # test images on the map (as latent.png)
SWEEP_STEPS, TRAVERSAL_STEPS, INTERPOLATION_STEPS, PAIRS = 10, 9, 10, 6
MAX_TRAVERSAL_ROWS = 32
UNUSED_KL = 0.01  # nats: a traversal row of an axis with less KL is not drawn (the decoder ignores that axis)

# The numbers of an evaluation shown first, in this order (named by what the model measures: its
# `names`, models/base.py); every other number follows by name.
HEADLINE = [("neg_elbo", "{neg_elbo}"), ("recon", "reconstruction {recon}"), ("kl", "{kl}"), ("nll", "{nll}, IWAE"),
            ("neg_elbo_bits_per_dim", "{neg_elbo}, bits/dim"), ("nll_bits_per_dim", "{nll}, bits/dim"),
            ("active_units", "active units ({axis}s)")]
LONG_LIST = 16  # a per-axis list longer than this is summarised, the values folded away

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1em 2em; color: #222; }
h1 { margin-bottom: 0.1em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0 1em; } td, th { padding: 0.2em 0.8em; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f6f6f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.pixels { image-rendering: pixelated; max-width: 100%; } img.plot { max-width: 100%; }
figure { margin: 0.6em 0 1.2em; } figcaption { color: #555; font-size: 0.92em; margin-top: 0.3em; }
.gallery { display: flex; flex-wrap: wrap; gap: 1em; } .gallery figure { margin: 0; }
details pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.note { background: #fff8e0; padding: 0.5em 0.8em; border-left: 3px solid #e0b000; }
.warning { background: #fdecea; padding: 0.6em 0.9em; border-left: 4px solid #c62828; margin: 0.8em 0; }
.warning b { color: #b71c1c; }
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str, cls: str = "pixels", scale: int = 1) -> str:
    width = ""
    if scale > 1:  # pixel pictures drawn larger by the browser, crisp (image-rendering: pixelated)
        width = f' width="{Image.open(io.BytesIO(png)).width * scale}"'
    return f'<img class="{cls}" src="{data_uri(png)}" alt="{html.escape(alt)}"{width}>'


def _figure(png: bytes, caption: str, cls: str = "pixels", scale: int | None = None) -> str:
    """A picture with its caption; pixel pictures narrower than 500 px are drawn twice their size."""
    if scale is None:
        scale = 2 if cls == "pixels" and Image.open(io.BytesIO(png)).width < 500 else 1
    return f"<figure>{_img(png, caption, cls, scale)}<figcaption>{caption}</figcaption></figure>"


def _number(value, se=None) -> str:
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    text = f"{value:.4f}" if abs(value) < 10 else f"{value:.3f}"
    return text + (f" ± {se:.3f}" if isinstance(se, (int, float)) else "")


def _cell(source: str, key: str, value, se=None) -> str:
    exact = "" if not isinstance(value, (int, float)) or isinstance(value, bool) else f' data-value="{value!r}"'
    return (f'<td class="num" data-source="{html.escape(source)}" data-key="{html.escape(key)}"{exact}>'
            f"{_number(value, se)}</td>")


# ---- the sections


def config_section(run: Path) -> str:
    doc = json.loads((run / ckpt.CONFIG).read_text())
    rows = []
    for part in ("data", "model", "train"):
        for key, value in doc.get(part, {}).items():
            rows.append(f"<tr><td>{part}</td><td>{html.escape(key)}</td><td>{html.escape(json.dumps(value))}</td></tr>")
    return ("<h2>Config</h2><details><summary>config.json (vaekit " + html.escape(str(doc.get("vaekit_version")))
            + ")</summary><table><tr><th></th><th>setting</th><th>value</th></tr>" + "".join(rows) + "</table></details>")


def _list_cell(value: list) -> str:
    """A per-axis or per-class list: its values, or for a long one a summary with the values folded away."""
    text = " ".join(f"{v:.3f}" if isinstance(v, float) else html.escape(str(v)) for v in value)
    numeric = [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(value) <= LONG_LIST or len(numeric) != len(value):
        return f"<td>{text}</td>"
    above = sum(v > 0.01 for v in numeric)
    return (f"<td><details><summary>{len(value)} values from {min(numeric):.3f} to {max(numeric):.3f}, "
            f"{above} above 0.01</summary>{text}</details></td>")


def evaluation_table(name: str, result: dict, names: dict | None = None) -> str:
    source = f"evaluation:{name}"
    names = {**NAMES, **result.get("names", {}), **(names or {})}
    rows = []
    keys = [k for k, _ in HEADLINE]
    for key, label in HEADLINE:
        if key in result:
            text = html.escape(label.format(**names)).replace("-", "−")
            rows.append(f"<tr><td>{text}</td>{_cell(source, key, result[key], result.get(key + '_se'))}</tr>")
    if "active_units" in result:
        rows.append(f'<tr><td colspan="2" class="sub">{html.escape(active_units_definition(result))}</td></tr>')
    lists = []
    for key, value in result.items():  # whatever else the model reported: conditional accuracy, label error, ...
        if key in keys or key.endswith("_se") or key in ("dataset", "n_images", "iw_samples", "latent_dim", "latent_axes",
                                                         "names", "warnings"):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append(f"<tr><td>{html.escape(key.replace('_', ' '))}</td>{_cell(source, key, value, result.get(key + '_se'))}</tr>")
        elif isinstance(value, list):
            label = key.replace("_", " ").replace("per dim", f"per {names['axis']}")
            lists.append(f"<tr><td>{html.escape(label)}</td>{_list_cell(value)}</tr>")
    title = (f"Test set of {html.escape(str(result.get('dataset', name)))}: {result.get('n_images')} images, "
             f"K = {result.get('iw_samples')} importance samples; nats per image, ± a standard error")
    return (f'<h3 data-k="{result.get("iw_samples")}">{title}</h3><table><tr><th>term</th><th>value</th></tr>'
            + "".join(rows) + "</table>"
            + (f"<table><tr><th>per {names['axis']} / class</th><th></th></tr>{''.join(lists)}</table>" if lists else ""))


def k_table(run: Path, names: dict) -> str:
    """The IWAE estimate at every K the run was evaluated with (evaluation-K<K>.json), one row per K."""
    by_k = ckpt.evaluations_by_k(run)
    keys = sorted({key for results in by_k.values() for key in results})
    if len(by_k) < 2:
        return ""
    nll = html.escape(names["nll"]).replace("-", "−")
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    rows = "".join(f"<tr><td>K = {k}</td>" + "".join(
        _cell(f"evaluation-K{k}:{key}", "nll", results[key].get("nll"), results[key].get("nll_se")) if key in results
        else "<td></td>" for key in keys) + "</tr>" for k, results in by_k.items())
    return (f"<h3>{nll} (IWAE) at each K the run was evaluated with</h3><table class=\"by-k\"><tr><th>K</th>{head}</tr>"
            f"{rows}</table>")


def validation_table(metrics: list[dict]) -> str:
    scored = [m for m in metrics if isinstance(m.get("val_neg_elbo"), (int, float))]
    if not scored:
        return ""
    bound = "val_" + selected_bound({k[4:]: v for k, v in scored[-1].items() if k.startswith("val_")})
    scored = [m for m in scored if isinstance(m.get(bound), (int, float))]
    best = min(scored, key=lambda m: m[bound])
    terms = sorted({k.split("_", 1)[1] for k in best if k.startswith(("train_", "val_"))} - {"seconds"},
                   key=lambda t: (t != "neg_elbo", t))
    rows = "".join(f"<tr><td>{html.escape(t.replace('_', ' '))}</td>{_cell('train', t, best.get('train_' + t))}"
                   f"{_cell('val', t, best.get('val_' + t))}</tr>" for t in terms)
    name = BOUND_NAMES[bound[4:]].replace("-", "−")
    samples = "K samples" if bound == "val_neg_iwae" else "one sample"
    return (f"<h3>Training: the best epoch by validation {name} (epoch {best['epoch']} of {metrics[-1]['epoch']})</h3>"
            f'<table data-epoch="{best["epoch"]}"><tr><th>term ({samples}, nats per image)</th><th>train</th>'
            f"<th>validation</th></tr>{rows}</table>")


def metrics_section(run: Path, metrics: list[dict], names: dict | None = None) -> str:
    evaluations = ckpt.read_evaluations(run)
    names = {**NAMES, **(names or {})}
    parts = ["<h2>Numbers</h2>"]
    if evaluations:
        parts += [evaluation_table(name, result, names) for name, result in evaluations.items()]
        parts.append(k_table(run, names))
    else:
        parts.append(f'<p class="note">No test-set numbers yet: <code>vaekit evaluate {html.escape(str(run))}</code> '
                     "adds the test −ELBO, the IWAE estimate of −log p(x) and the model's own numbers "
                     "(conditional accuracy, label error) to this report.</p>")
    parts.append(validation_table(metrics))
    return "".join(parts)


def curves_section(metrics: list[dict], curves: bytes | None = None) -> str:
    """curves: the curves.png plots.run_pictures drew already (drawn here otherwise)."""
    if not metrics:
        return ""
    curves = curves or plots.figure_png(plots.curves_plot(metrics))
    parts = ["<h2>Training curves</h2>", _figure(curves, "every logged term, train and validation, per epoch", "plot")]
    schedules = plots.schedules_plot(metrics)
    if schedules is not None:
        parts.append(_figure(plots.figure_png(schedules), "the schedules: learning rate, KL weight and the model's knobs",
                             "plot"))
    return "".join(parts)


def warnings_banner(run: Path, model, metrics: list[dict], x: torch.Tensor, y: torch.Tensor | None) -> str:
    """A banner at the top of the page when the run failed quietly (health.py): the warnings of its
    evaluations, or else those of its training numbers."""
    evaluations = ckpt.read_evaluations(run)
    lines = [w for r in evaluations.values() for w in r.get("warnings", []) if isinstance(w, str)]
    if not evaluations:
        lines = [f.line() for f in check(training_numbers(model, metrics, x, y), metrics, model.num_classes)]
    lines = list(dict.fromkeys(lines))
    if not lines:
        return ""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return (f'<div class="warning" id="warnings"><b>This run may have failed quietly.</b><ul>{items}</ul></div>')


def _labels_for(model, y: torch.Tensor | None, n: int, device) -> torch.Tensor | None:
    """The classes to decode n points with: y where known (class 0 where not); None for a model without classes."""
    if not model.num_classes:
        return None
    if y is None:
        return torch.zeros(n, dtype=torch.long, device=device)
    return y.clamp(min=0)


def map_section(model, plane: LatentMap, y: torch.Tensor | None, names: list[str] | None = None) -> str:
    how = {"raw": "the two latent dimensions themselves", "pca": "the first two principal components of the codes",
           "tsne": "t-SNE of the codes"}[plane.method]
    names = names or [str(c) for c in range(model.num_classes)]
    fig = plots.latent_plot(plane.points, y, plane.xlabel, plane.ylabel, names)
    parts = ["<h2>Latent space</h2>", _figure(plots.figure_png(fig), f"posterior means E[z|x] of {len(plane.points)} "
                                              f"test images, coloured by label: {how}", "plot")]
    device = model_device(model)
    z = torch.as_tensor(plane.sweep(SWEEP_STEPS), dtype=torch.float32, device=device)
    plane_name = "the latent plane" if plane.method == "raw" else "the plane of the first two principal components"
    caption = (f"decoded from a {SWEEP_STEPS}×{SWEEP_STEPS} sweep over {plane_name}, between the 2nd and 98th "
               "percentiles of the test codes (left to right: axis 1; top to bottom: axis 2, falling)")
    if model.num_classes:
        figures = []
        for c in range(model.num_classes):
            grid = grids.image_grid(model.decode(z, torch.full((len(z),), c, device=device)), nrow=SWEEP_STEPS, min_cell=16)
            figures.append(_figure(grids.png_bytes(grid), f"class {html.escape(names[c])}"))
        parts.append(f'<p>{caption}, drawn as each class:</p><div class="gallery">{"".join(figures)}</div>')
    else:
        parts.append(_figure(grids.png_bytes(grids.image_grid(model.decode(z), nrow=SWEEP_STEPS)), caption))
    return "".join(parts)


def model_device(model) -> torch.device:
    return next(iter(model.parameters())).device


def interpolation_pairs(y: torch.Tensor | None, n: int, count: int, same_class: bool) -> list[tuple[int, int]]:
    """Pairs of test images: of one known class each (for a model that draws classes), else of different
    labels where known; deterministic (the first images that fit)."""
    pairs: list[tuple[int, int]] = []
    used: set[int] = set()
    labels = [-1] * n if y is None else y.tolist()
    for i in range(n):
        if i in used or (same_class and labels[i] < 0):
            continue
        for j in range(i + 1, n):
            if j in used:
                continue
            fits = labels[j] == labels[i] if same_class else (labels[i] < 0 or labels[j] != labels[i])
            if fits:
                pairs.append((i, j))
                used |= {i, j}
                break
        if len(pairs) == count:
            break
    return pairs


def reconstruction_section(model, x: torch.Tensor, y: torch.Tensor | None, shown: torch.Tensor, n: int = 16) -> str:
    """Groups of rows: the test images, as the model sees them if that differs (binarized), reconstructions."""
    x, shown, y = x[:n], shown[:n], None if y is None else y[:n]
    recon = model.reconstruct(x, y)
    parts = [shown, x, recon] if not torch.equal(shown, x) else [shown, recon]
    per_row, rows = 8, []
    for start in range(0, len(x), per_row):
        rows += [p[start : start + per_row] for p in parts]
    names = ["test image", "binarized", "reconstruction"] if len(parts) == 3 else ["test image", "reconstruction"]
    grid = grids.png_bytes(grids.label_rows(grids.image_grid(torch.cat(rows), nrow=per_row),
                                            names * (len(rows) // len(parts))))
    what = ("test images, the same binarized (as the model sees them), and their reconstructions E[x|z = E[z|x]]"
            if len(parts) == 3 else "test images above their reconstructions E[x|z = E[z|x]]")
    return "<h2>Reconstructions</h2>" + _figure(grid, f"groups of {len(parts)} rows: {what}")


def interpolation_section(model, x: torch.Tensor, y: torch.Tensor | None, shown: torch.Tensor) -> str:
    pairs = interpolation_pairs(y, min(len(x), 200), PAIRS, same_class=bool(model.num_classes))
    if not pairs:
        return ""
    a, b = (torch.tensor(p, device=x.device) for p in zip(*pairs))
    ya, yb = (None if y is None else y[a]), (None if y is None else y[b])
    za, zb = model.encode(x[a], ya), model.encode(x[b], yb)
    t = torch.linspace(0, 1, INTERPOLATION_STEPS, device=x.device, dtype=za.dtype)
    z = za[:, None] + t[None, :, None] * (zb - za)[:, None]  # (P, S, D)
    labels = _labels_for(model, ya, len(pairs), x.device)
    images = model.decode(z.flatten(0, 1), None if labels is None else labels.repeat_interleave(INTERPOLATION_STEPS))
    rows = torch.cat([shown[a][:, None], images.view(len(pairs), INTERPOLATION_STEPS, *x.shape[1:]), shown[b][:, None]],
                     dim=1)
    grid = grids.image_grid(rows.flatten(0, 1), nrow=INTERPOLATION_STEPS + 2)
    how = " (pairs of one class, decoded as that class)" if model.num_classes else ""
    return ("<h2>Interpolations</h2>" + _figure(grids.png_bytes(grid), "each row: a test image, its code E[z|x] moved "
            f"in {INTERPOLATION_STEPS} even steps to another's, decoded, and the other image{how}"))


def traversal_section(model, x: torch.Tensor, y: torch.Tensor | None, shown: torch.Tensor) -> str:
    z0 = model.encode(x[:1], None if y is None else y[:1])[0]
    walk = model.traversal(z0, TRAVERSAL_STEPS)  # (A, S, D)
    kl = grids.axis_kl(model, x, y, walk.shape[0])
    order = np.argsort(-kl, kind="stable") if kl is not None else np.arange(walk.shape[0])
    rows = order[:MAX_TRAVERSAL_ROWS]
    labels = _labels_for(model, None if y is None else y[:1], 1, x.device)
    flat = walk[torch.as_tensor(rows.copy(), device=walk.device)].flatten(0, 1)
    images = model.decode(flat, None if labels is None else labels.expand(len(flat)))
    images = images.view(len(rows), walk.shape[1], *x.shape[1:])
    table, unused = [], []
    axis_name = names_of(model)["axis"]
    for row, axis in zip(images, rows):
        if kl is not None and kl[axis] < UNUSED_KL:  # rows that do not change: one line for all of them
            unused.append(axis + 1)
            continue
        strip = grids.png_bytes(grids.image_grid(row, nrow=walk.shape[1]))
        kl_text = f"{kl[axis]:.3f}" if kl is not None else "n/a"
        table.append(f'<tr><td>{axis_name} {axis + 1}</td><td class="num">{kl_text}</td><td>{_img(strip, f"axis {axis + 1}", scale=2)}</td></tr>')
    if unused:
        listed = ", ".join(map(str, unused))
        table.append(f'<tr class="unused"><td>{len(unused)} {axis_name}s</td><td class="num">&lt; {UNUSED_KL:g}</td>'
                     f"<td>{axis_name}s {listed}: KL near 0, unused by the model (their rows would not change)</td></tr>")
    original = grids.png_bytes(grids.image_grid(shown[:1], nrow=1))
    more = f" (the {MAX_TRAVERSAL_ROWS} of most KL)" if walk.shape[0] > MAX_TRAVERSAL_ROWS else ""
    return ("<h2>Latent traversals</h2><p>Starting from the code of the test image "
            f"{_img(original, 'the first test image')}, each row walks one latent axis{more} over its range "
            "(a Gaussian dimension over quantiles of its prior, a categorical variable over its categories), "
            "the others kept; rows ordered by the axis' mean KL on test images (nats).</p>"
            f"<table><tr><th>axis</th><th>KL</th><th>decoded</th></tr>{''.join(table)}</table>")


# ---- the page


def build_report(run: Path, model, test, method: str = "auto", pictures: dict[str, bytes] | None = None,
                 seed: int = 0, shown: torch.Tensor | None = None) -> str:
    """The HTML of a run's report; test: DeviceData (the test images as the model sees them); shown: the
    same images as people see them (grey levels; default test.x); pictures: PNGs already drawn by
    plots.run_pictures (reused, not drawn again)."""
    run = Path(run)
    pictures = pictures or {}
    metrics = ckpt.read_metrics(run)
    data_cfg, model_cfg, _ = runs.read_config(run)
    x, y = test.x[:MAP_IMAGES], None if test.y is None else test.y[:MAP_IMAGES]
    shown = x if shown is None else shown[:MAP_IMAGES].to(x.device)
    sections = [warnings_banner(run, model, metrics, x, y), config_section(run),
                metrics_section(run, metrics, names_of(model))]
    with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        torch.manual_seed(seed)
        sections.append(curves_section(metrics, pictures.get("curves.png")))
        names = ckpt.class_names(run, model.num_classes)
        samples = pictures.get("samples.png") or grids.png_bytes(grids.sample_grid(model, names=names))
        sections.append("<h2>Samples</h2>" + _figure(samples, "E[x|z], z drawn from the prior" + (
            " (of the class), one row per class" if model.num_classes else "")))
        sections.append(reconstruction_section(model, x, y, shown))
        if len(x) >= 2:
            sections.append(map_section(model, latent_map(model.encode(x, y).cpu().numpy(), method, seed), y, names))
        else:
            sections.append(f"<h2>Latent space</h2><p>No map: it needs at least 2 test images, and this run has "
                            f"{len(x)} (<code>--test-fraction</code> sets how many of the images are held out).</p>")
        sections.append(interpolation_section(model, x, y, shown))
        sections.append(traversal_section(model, x, y, shown))
    title = f"vaekit run {run.resolve().name}"
    trained = f"{metrics[-1]['epoch']} epochs" if metrics else "not trained"
    subtitle = (f"--model {html.escape(model_cfg.model)} on {html.escape(data_cfg.dataset)}, latent dimension "
                f"{model_cfg.latent_dim}, {trained}; written {time.strftime('%Y-%m-%d %H:%M')} by "
                f"<code>vaekit report</code>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<link rel="icon" href="data:,"><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>'
            f'<p class="sub">{subtitle}</p>{"".join(sections)}</body></html>\n')


def write_report(run: str | Path, *, method: str = "auto", model=None, test=None, shown: torch.Tensor | None = None,
                 pictures: dict[str, bytes] | None = None) -> Path:
    """Write RUN/report.html (atomically); the model and test images are loaded from the run unless given
    (test: DeviceData as the model sees them, shown: as people do; see build_report)."""
    run = Path(run)
    data_cfg, _, _ = runs.read_config(run)
    if model is None:
        model = runs.load_model(run, "cpu")
    if test is None:
        split, data_cfg, mode = runs.evaluation_data(run)
        test = test_targets(split, data_cfg.split_seed, mode, model_device(model))
        shown = split.to_float()
    page = build_report(run, model, test, method, pictures, seed=data_cfg.split_seed, shown=shown)
    ckpt.atomic_write(run / REPORT, page.encode())
    return run / REPORT


def render_run(run: str | Path, device: str | torch.device = "cpu") -> None:
    """Draw a trained run's pictures (plots.run_pictures) from its best weights and its own test images, and
    write report.html: what `vaekit train` does once the loop has written the run."""
    run = Path(run)
    model = runs.load_model(run, device)
    split, data_cfg, mode = runs.evaluation_data(run)
    test = test_targets(split, data_cfg.split_seed, mode, model_device(model))
    drawn = plots.run_pictures(run, model, test, data_cfg.split_seed)
    try:
        write_report(run, model=model, test=test, shown=split.to_float(), pictures=drawn)
    except VaekitError as e:  # the trained run is saved whole; the report can be written later
        print(f"vaekit: warning: {e}; the run is complete: `vaekit report {run}` writes the report", file=sys.stderr)
