"""Honest numbers for a trained model, in nats per image (and bits per dimension).

    neg_elbo = recon + kl      recon = -E_q[log p(x|z)] averaged over the K samples,
                               kl = KL(q(z|x) || p(z)) (closed form where it exists)
    nll      = -IWAE_K(x)      the importance-weighted estimate of -log p(x) (Burda et al. 2016);
                               its expectation is an upper bound on -log p(x) that tightens as K grows
Each is a mean over images with its standard error (std / sqrt(n)). Any other per-example number a
model reports (e.g. a classifier's label_error) is averaged the same way over the examples it is defined on.
Also: the KL of each latent dimension and the number of active units, dimensions whose posterior
mean varies across the data (Cov_x(E_q[z_d]) > 0.01, Burda et al. 2016): few means posterior collapse.
The evaluation works through the model contract (models/base.py): bounds() and encode().
"""

from __future__ import annotations

import math
import sys
import time

import torch
from tqdm import tqdm

from .allocator import keep_freed_memory
from .data import batches
from .errors import VaekitError
from .health import ACTIVITY, axis_activity
from .likelihoods import likelihood_kind
from .limits import check_fits, pair_bytes
from .models.base import NAMES, axis_size, names_of

LONG_EVALUATION_S = 60.0  # estimates above this are announced


def mean_and_se(values: torch.Tensor) -> tuple[float | None, float | None]:
    """Mean and standard error; None where undefined (no values, or one value for the error)."""
    values = values.double()
    if len(values) == 0:
        return None, None
    se = float(values.std(unbiased=True) / math.sqrt(len(values))) if len(values) > 1 else None
    return float(values.mean()), se


def default_max_batch(image_shape: tuple[int, ...], device: torch.device | str = "cpu") -> int:
    """(image, sample) pairs per decoder pass: on the CPU 2**18 / pixels, between 256 and 4096 (334 at 28x28).

    On a GPU 2**23 / pixels, between 4096 and 65536 (10,699 at 28x28: 0.5 GB for the default conv
    decoder's 16-channel 28x28 layer): there 334 pairs left an H200 idle, and this pass evaluated
    12-22x faster (BENCHMARKS.md, "GPU numbers"). On the CPU:

    Small enough that the decoder's largest activation (a few MB) stays below glibc's mmap threshold:
    larger passes (2**21 / pixels before) got fresh pages from the kernel for every chunk and gave
    them back after it, and the page faults took half of the CPU time (system time 50 % on Fashion-
    MNIST, 38 % on digits, one thread; BENCHMARKS.md, "How fast is evaluation?")."""
    if torch.device(device).type != "cpu":
        return min(65536, max(4096, 2**23 // math.prod(image_shape)))
    return min(4096, max(256, 2**18 // math.prod(image_shape)))


@torch.no_grad()
def evaluate(
    model,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    iw_samples: int = 1000,
    max_batch: int | None = None,
    seed: int = 0,
    progress: bool | None = False,
) -> dict:
    """Evaluate on images x: (N, C, H, W) already binarized / scaled, labels y: (N,) (-1: unknown).

    At most `max_batch` (image, sample) pairs go through the decoder at once, so memory stays
    bounded for any K. Returns a JSON-ready dict. progress: a bar on stderr (None: when a terminal).
    """
    model.eval()
    keep_freed_memory()
    if max_batch is None:
        max_batch = default_max_batch(tuple(x.shape[1:]), x.device)
    if max_batch < 1:
        raise VaekitError(f"--max-batch must be at least 1, got {max_batch}")
    images_per_batch = max(1, min(len(x), max_batch // iw_samples))
    sample_chunk = max(1, min(iw_samples, max_batch // images_per_batch))
    check_fits(images_per_batch * sample_chunk * pair_bytes(tuple(x.shape[1:]), getattr(getattr(model, "cfg", None), "width", 16)),
               f"a decoder pass over {images_per_batch * sample_chunk} (image, sample) pairs (--max-batch "
               f"{max_batch}, --iw-samples {iw_samples})", x.device)
    values: dict[str, list[torch.Tensor]] = {}
    codes = []
    bar = tqdm(total=len(x), unit="image", disable=None if progress is None else not progress, leave=False,
               desc=f"IWAE, K = {iw_samples}", file=sys.stderr)
    start, done = time.perf_counter(), 0
    with bar, torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        torch.manual_seed(seed)
        for xb, yb in batches(x, y, images_per_batch, shuffle=False):
            for key, v in model.bounds(xb, yb, num_samples=iw_samples, chunk=sample_chunk).items():
                values.setdefault(key, []).append(v)
            codes.append(model.encode(xb, yb))
            bar.update(len(xb))
            if done == 0:  # after the first batch: say so when the whole evaluation will take long
                _announce_if_long(time.perf_counter() - start, len(xb), len(x), iw_samples)
            done += len(xb)
    return _report(model, x, {k: torch.cat(v) for k, v in values.items()}, torch.cat(codes), iw_samples)


def _announce_if_long(seconds: float, done: int, total: int, iw_samples: int) -> None:
    """One stderr line with the estimated time, when it is long (the progress bar may be off)."""
    estimate = seconds * total / done
    if estimate > LONG_EVALUATION_S and done < total:
        minutes = f"{estimate / 60:.0f} min" if estimate >= 60 else f"{estimate:.0f} s"
        print(f"vaekit: evaluating {total} images with K = {iw_samples} will take about {minutes} "
              "(fewer with --iw-samples or --limit)", file=sys.stderr, flush=True)


def _report(model, x: torch.Tensor, terms: dict[str, torch.Tensor], mu: torch.Tensor, iw_samples: int) -> dict:
    # Per-image values in float64 from here on, and neg_elbo is recon + kl by construction: the identity
    # holds to the last digit whatever order float32 kernels summed the pixels in.
    for key, v in terms.items():
        if not torch.isfinite(v).all():
            raise VaekitError(f"the model's {key} is not finite on some test images: its weights are damaged "
                              "or it diverged (check model.safetensors)")
    result: dict = {"n_images": len(x), "iw_samples": iw_samples}
    for key, v in terms.items():
        if v.dim() == 1:
            result[key], result[f"{key}_se"] = mean_and_se(v)
    result["neg_elbo"], result["neg_elbo_se"] = mean_and_se(terms["recon"].double() + terms["kl"].double())
    result["neg_elbo"] = result["recon"] + result["kl"]
    num_dims = math.prod(x.shape[1:])
    cfg = getattr(model, "cfg", None)
    kind = likelihood_kind(cfg) if cfg is not None else None
    density = getattr(model, "density", None)  # a model whose bound is not on the pixels says what it is on
    if kind is not None and not density:
        result["likelihood"] = kind.describe(cfg)
    if density:
        result["density"] = density
    elif kind is None or kind.discrete:  # -log2 P(x) / D of the discrete values (for Bernoulli: the binary ones)
        result["neg_elbo_bits_per_dim"] = result["neg_elbo"] / (num_dims * math.log(2))
        result["nll_bits_per_dim"] = result["nll"] / (num_dims * math.log(2))
    else:  # a density of continuous values has no bits/dim: it is not a probability of the pixels' values
        result["density"] = "-log p(x) is a density of continuous values, in nats: not a probability of pixel values"
    size = axis_size(model)
    activity = axis_activity(mu, size)  # per latent axis: a dimension, or a categorical variable
    result["active_units"] = int((activity > ACTIVITY).sum())
    result["latent_dim"] = mu.shape[1]
    result["latent_axes"] = len(activity)
    for key, v in terms.items():
        if v.dim() == 2:  # per latent axis
            result[key] = [round(float(c), 4) for c in v.double().mean(0)]
    result["posterior_mean_variance"] = [round(float(v), 4) for v in activity]
    result["names"] = names_of(model)
    return result


def active_units_definition(r: dict) -> str:
    axis = r.get("names", {}).get("axis", "dimension")
    what = "Var_x E[z|x]" if axis == "dimension" else f"the summed Var_x E[z|x] of its {axis}'s one-hot dimensions"
    return f"a {axis} is active when {what} > {ACTIVITY:g}, as Burda et al. 2016"



def format_report(r: dict) -> str:
    """A human-readable table of an evaluate() result, each term named for what the model measures."""
    def se(key: str) -> str:
        return "n/a" if r.get(f"{key}_se") is None else f"{r[f'{key}_se']:.3f}"

    def bits(key: str) -> str:
        return f"   ({r[key]:.4f})" if key in r else ""

    name = {**NAMES, **r.get("names", {})}
    width = max(len(name["nll"]) + 6, len(name["kl"]) + 2, len(name["recon"]) + 2, 17)
    axis = name["axis"]
    axes = r.get("latent_axes", r["latent_dim"])
    unit = "nats per image (bits/dim)" if "nll_bits_per_dim" in r else \
        "nats per image: densities of continuous values, not probabilities of pixel values"
    lines = [f"{r['n_images']} images, K = {r['iw_samples']} importance samples; {unit}"]
    if r.get("likelihood"):
        lines.append(f"  likelihood: {r['likelihood']}")
    lines.append(f"  {name['neg_elbo']:{width}s}{r['neg_elbo']:10.3f} ± {se('neg_elbo')}{bits('neg_elbo_bits_per_dim')}")
    lines.append(f"    {name['recon']:{width - 2}s}{r['recon']:10.3f} ± {se('recon')}")
    lines.append(f"    {name['kl']:{width - 2}s}{r['kl']:10.3f} ± {se('kl')}")
    lines.append(f"  {name['nll'] + ' IWAE':{width}s}{r['nll']:10.3f} ± {se('nll')}{bits('nll_bits_per_dim')}")
    lines.append(f"  {'active units':{width}s}{r['active_units']:>6d} of {axes} {axis}s ({active_units_definition(r)})")
    if "kl_per_dim" in r:
        lines.append(f"  {'KL per ' + axis:{width}s}" + " ".join(f"{v:.2f}" for v in r["kl_per_dim"]))
    shown = {"n_images", "iw_samples", "neg_elbo", "recon", "kl", "nll", "neg_elbo_bits_per_dim", "nll_bits_per_dim",
             "active_units", "latent_dim", "latent_axes", "kl_per_dim", "posterior_mean_variance", "dataset", "likelihood",
             "density", "names", "warnings"}
    for key, value in r.items():  # whatever else the model reported (its metrics(), per-example terms)
        if key in shown or key.endswith("_se") or value is None:
            continue
        label = key.replace("_", " ")
        label = f"{label:{width}s}" + (" " if len(label) >= width else "")  # a long name keeps a space
        if isinstance(value, float):
            se = f" ± {r[key + '_se']:.4f}" if r.get(key + "_se") is not None else ""
            draws = r.get(f"{key}_binarizations")
            how = f"   (q(y|x) averaged over {draws} binarizations of each test image)" if draws else ""
            lines.append(f"  {label}{value:.4f}{se}{how}")
        elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
            lines.append(f"  {label}" + " ".join(f"{v:.2f}" for v in value))
    return "\n".join(lines)
