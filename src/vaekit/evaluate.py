"""Honest numbers for a trained model, in nats per image (and bits per dimension).

    neg_elbo = recon + kl      recon = -E_q[log p(x|z)] averaged over the K samples,
                               kl = KL(q(z|x) || p(z)) in closed form
    nll      = -IWAE_K(x)      the importance-weighted estimate of -log p(x) (Burda et al. 2016);
                               an upper bound on -log p(x) that tightens as K grows
Each is a mean over images with its standard error (std / sqrt(n)). Also: the KL of each latent
dimension and the number of active units, dimensions whose posterior mean varies across the data
(Cov_x(E_q[z_d]) > 0.01, Burda et al. 2016): few active units means posterior collapse.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import kl_divergence

from .data import batches
from .models import VAE
from .objectives import importance_samples, iwae_bound


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    values = values.double()
    se = values.std(unbiased=True) / math.sqrt(len(values)) if len(values) > 1 else torch.tensor(float("nan"))
    return float(values.mean()), float(se)


@torch.no_grad()
def evaluate(
    model: VAE,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    iw_samples: int = 1000,
    max_batch: int | None = None,
    seed: int = 0,
) -> dict:
    """Evaluate on images x: (N, C, H, W) already binarized / scaled, labels y: (N,) for a CVAE.

    At most `max_batch` (image, sample) pairs go through the decoder at once, so memory stays
    bounded for any K; by default 2**21 / pixels of them, at most 8192 (2,674 at 28x28: a few
    hundred MB on the CPU). Returns a JSON-ready dict.
    """
    model.eval()
    if model.conditional and y is None:
        from .errors import VaekitError

        raise VaekitError("a conditional VAE is evaluated on labelled images: this data has no labels")
    if max_batch is None:
        max_batch = min(8192, max(256, 2**21 // math.prod(x.shape[1:])))
    images_per_batch = max(1, min(len(x), max_batch // iw_samples))
    sample_chunk = max(1, min(iw_samples, max_batch // images_per_batch))
    recon, kl, nll, kl_dims, means = [], [], [], [], []
    gen_state = torch.random.fork_rng(devices=[x.device] if x.is_cuda else [])
    with gen_state:
        torch.manual_seed(seed)
        for xb, yb in batches(x, y, images_per_batch, shuffle=False):
            c = yb if model.conditional else None
            posterior = model.posterior(xb, c)
            s = importance_samples(model, xb, c, num_samples=iw_samples, chunk=sample_chunk)
            kl_d = kl_divergence(posterior.base_dist, model.prior(c).base_dist)  # (B, D)
            recon.append(-s["log_likelihood"].mean(0))
            kl.append(kl_d.sum(-1))
            kl_dims.append(kl_d)
            nll.append(-iwae_bound(s["log_weights"]))
            means.append(posterior.mean)
    # Per-image values in float64 from here on: neg_elbo is then exactly recon + kl on any CPU, whatever
    # order float32 kernels summed the pixels in.
    recon_t, kl_t, nll_t = torch.cat(recon).double(), torch.cat(kl).double(), torch.cat(nll).double()
    mu = torch.cat(means)  # (N, D)
    activity = mu.var(0, unbiased=True) if len(mu) > 1 else torch.zeros(mu.shape[1])
    num_dims = math.prod(x.shape[1:])
    result: dict = {"n_images": len(x), "iw_samples": iw_samples}
    for name, values in (("neg_elbo", recon_t + kl_t), ("recon", recon_t), ("kl", kl_t), ("nll", nll_t)):
        result[name], result[f"{name}_se"] = _mean_se(values)
    result["neg_elbo"] = result["recon"] + result["kl"]  # the identity the report states, by construction
    result["neg_elbo_bits_per_dim"] = result["neg_elbo"] / (num_dims * math.log(2))
    result["nll_bits_per_dim"] = result["nll"] / (num_dims * math.log(2))
    result["active_units"] = int((activity > 0.01).sum())
    result["latent_dim"] = mu.shape[1]
    result["kl_per_dim"] = [round(float(v), 4) for v in torch.cat(kl_dims).mean(0)]
    result["posterior_mean_variance"] = [round(float(v), 4) for v in activity]
    return result


def format_report(r: dict) -> str:
    """A human-readable table of an evaluate() result."""
    lines = [f"{r['n_images']} images, K = {r['iw_samples']} importance samples; nats per image (bits/dim)"]
    lines.append(f"  -ELBO           {r['neg_elbo']:10.3f} ± {r['neg_elbo_se']:.3f}   ({r['neg_elbo_bits_per_dim']:.4f})")
    lines.append(f"    reconstruction {r['recon']:9.3f} ± {r['recon_se']:.3f}")
    lines.append(f"    KL             {r['kl']:9.3f} ± {r['kl_se']:.3f}")
    lines.append(f"  -log p(x) IWAE  {r['nll']:10.3f} ± {r['nll_se']:.3f}   ({r['nll_bits_per_dim']:.4f})")
    lines.append(f"  active units    {r['active_units']} of {r['latent_dim']}")
    lines.append("  KL per dim      " + " ".join(f"{v:.2f}" for v in r["kl_per_dim"]))
    for key in ("conditional_accuracy", "classifier_accuracy"):
        if key in r:
            lines.append(f"  {key.replace('_', ' '):15s} {r[key]:.4f}")
    if "conditional_accuracy_per_class" in r:
        lines.append("    per class      " + " ".join(f"{v:.2f}" for v in r["conditional_accuracy_per_class"]))
    return "\n".join(lines)
