"""Gradient variance (and bias) of the categorical VAE's estimators, on one fixed model and batch.

    OMP_NUM_THREADS=1 python benchmarks/gradient_variance.py                 # trains a 20x10 digits model first
    python benchmarks/gradient_variance.py --run RUN --draws 500 --plot gv.png

For each estimator, `--draws` independent draws of the gradient of the training loss (-ELBO of the
batch, beta = 1) with respect to the ENCODER's parameters (q(z|x): the ones the estimators differ on;
the decoder's gradient is pathwise in all of them), on the same weights and the same batch:

    variance  E ||g - E g||^2                   the trace of the estimator's covariance
    bias      ||E g - g_ref||                   against g_ref, a many-sample REINFORCE estimate of the
                                                exact gradient (--reference-samples codes per image,
                                                each with the leave-one-out baseline: unbiased)
    floor     sqrt(var/draws + noise_ref)       the bias that sampling noise alone would show

Estimators: Gumbel-softmax at several temperatures, straight-through Gumbel at tau = 0.5 and 1, and
REINFORCE with its moving-average baseline (set to the mean reconstruction term of the batch, where a
moving average settles) and without. The model is a vaekit run (--run), or a 20x10 categorical VAE
trained with Gumbel-softmax on digits for --epochs epochs into a temporary folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import vaekit  # noqa: E402
from vaekit.gradient_variance import bias, gradient_draws, variance  # noqa: E402
from vaekit.models import build  # noqa: E402


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def variant(model, **changes):
    """The same weights under another estimator setting."""
    other = build(dataclasses.replace(model.cfg, **changes))
    other.load_state_dict(model.state_dict())
    return other


def reference_gradient(model, x: torch.Tensor, samples: int, chunk: int = 250) -> tuple[torch.Tensor, float]:
    """The exact gradient's estimate from `samples` true codes per image, REINFORCE with the
    leave-one-out baseline (each sample's baseline is the mean reconstruction term of the image's
    other samples: unbiased, and far less noisy than one scalar baseline):

        grad E_q[recon] ~ 1/(S B) sum_{s,b} (recon_sb - mean_{s' != s} recon_s'b) grad log q(z_sb|x_b)

    plus the exact gradient of the KL. Returns the mean of two independent halves and the squared
    norm of their difference / 4 (the reference's own noise, E||g_ref - g||^2 estimated)."""
    model.eval()
    params = list(model.encoder.parameters())
    log_q = model.posterior_logits(x)  # (B, G, K)
    kl = model.kl(log_q).sum(-1).mean()
    halves = []
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(12345)
    for _ in range(2):
        index, recon = [], []
        with torch.no_grad():
            for start in range(0, samples // 2, chunk):
                k = min(chunk, samples // 2 - start)
                i = torch.distributions.Categorical(logits=log_q).sample((k,))  # (k, B, G)
                xs = x.expand(k, *x.shape).reshape(-1, *x.shape[1:])
                recon.append(-model.likelihood(model._onehot(i).flatten(0, 1)).log_prob(xs).view(k, -1))
                index.append(i)
        index, recon = torch.cat(index), torch.cat(recon)  # (S, B, G), (S, B)
        s = len(recon)
        signal = recon - (recon.sum(0) - recon) / (s - 1)  # (S, B)
        weights = torch.zeros_like(log_q)  # sum over samples of signal * one_hot(z): (B, G, K)
        weights.scatter_add_(-1, index.permute(1, 2, 0), signal.T[:, None, :].expand(-1, index.shape[2], -1).contiguous())
        surrogate = (weights.detach() * log_q).sum() / (s * len(x))
        grads = torch.autograd.grad(surrogate + kl, params, retain_graph=True)
        halves.append(torch.cat([g.reshape(-1) for g in grads]).double())
    torch.random.set_rng_state(generator_state)
    return (halves[0] + halves[1]) / 2, float((halves[0] - halves[1]).norm() ** 2 / 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a trained --model categorical run (default: train one on digits)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the model trained when --run is not given")
    parser.add_argument("--batch", type=int, default=64, help="images in the fixed batch")
    parser.add_argument("--draws", type=int, default=400, help="gradient draws per estimator")
    parser.add_argument("--reference-samples", type=int, default=20000,
                        help="codes per image of the reference gradient (REINFORCE, leave-one-out baseline)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0, 2.0])
    parser.add_argument("--plot", default="gradient_variance.png", help="PNG to draw (empty: none)")
    args = parser.parse_args()

    if args.run:
        run = Path(args.run)
    else:
        run = Path(tempfile.mkdtemp(prefix="gradvar-")) / "run"
        print(f"training a 20x10 categorical VAE on digits for {args.epochs} epochs into {run}", file=sys.stderr)
        vaekit.train(run, dataset="digits", model="categorical", epochs=args.epochs, progress=False)
    model = vaekit.load(run)
    if not hasattr(model, "relaxed_sample"):
        sys.exit(f"{run} is not a --model categorical run")
    from vaekit.data import binarization, fixed_targets, load_dataset
    from vaekit.runs import read_config

    data_cfg, model_cfg, _ = read_config(run)
    dataset = load_dataset(data_cfg)
    train = fixed_targets(dataset.train, binarization(data_cfg.binarize, model_cfg.likelihood, dataset), 0, torch.device("cpu"))
    x = train.x[: args.batch]

    start = time.perf_counter()
    reference = variant(model, estimator="reinforce", baseline=True)
    with torch.no_grad():
        baseline = float(reference.eval()(x)["recon"].mean())  # what the moving average settles to
    reference.baseline_mean.fill_(baseline)
    reference.baseline_updates.fill_(10**6)
    g_ref, ref_noise = reference_gradient(model, x, args.reference_samples)

    rows = []
    settings = [("gumbel", dict(estimator="gumbel"), t) for t in args.temperatures]
    settings += [("straight-through", dict(estimator="straight-through"), t) for t in (0.5, 1.0)]
    settings += [("reinforce + baseline", dict(estimator="reinforce", baseline=True), None),
                 ("reinforce", dict(estimator="reinforce", baseline=False), None)]
    for name, changes, tau in settings:
        m = variant(model, **changes)
        if changes.get("baseline"):
            m.baseline_mean.fill_(baseline)
            m.baseline_updates.fill_(10**6)
        knobs = {} if tau is None else {"temperature": tau}
        g = gradient_draws(m, list(m.encoder.parameters()), x, args.draws, seed=1, **knobs)
        v = variance(g)
        floor = math.sqrt(v / args.draws + ref_noise)
        rows.append((name, tau, v, bias(g, g_ref), floor))

    ref_norm2 = float(g_ref.norm() ** 2)
    print(f"CPU: {cpu_name()}; torch {torch.__version__}; run {run} ({model.cfg.groups}x{model.cfg.categories}, "
          f"{model.cfg.arch}); batch {len(x)}; {args.draws} draws per estimator; reference: "
          f"{args.reference_samples} codes per image, leave-one-out REINFORCE; {time.perf_counter() - start:.0f} s\n")
    print("| estimator | tau | variance E‖g−Eg‖² | variance / ‖g_ref‖² | bias ‖Eg−g_ref‖ | noise floor of the bias |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, tau, v, b, floor in rows:
        print(f"| {name} | {'' if tau is None else f'{tau:g}'} | {v:.4g} | {v / ref_norm2:.4g} | {b:.4g} | {floor:.3g} |")
    print(f"\n‖g_ref‖² = {ref_norm2:.4g}; the reference's own noise E‖g_ref − g‖² ≈ {ref_noise:.3g}")

    if args.plot:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10, 4))
        left, right = fig.subplots(1, 2)
        gumbel = [r for r in rows if r[0] == "gumbel"]
        for ax, column, title in ((left, 2, "variance E‖g − E g‖²"), (right, 3, "bias ‖E g − g_ref‖")):
            ax.plot([r[1] for r in gumbel], [r[column] for r in gumbel], "o-", label="Gumbel-softmax")
            others = [r for r in rows if r[0] != "gumbel"]
            for color, (name, tau, *values) in enumerate(others, start=1):
                label = name + ("" if tau is None else f" (τ={tau:g})")
                ax.axhline(values[column - 2], linestyle="--", color=f"C{color}", label=label)
            if column == 3:
                ax.plot([r[1] for r in gumbel], [r[4] for r in gumbel], ":", color="grey", label="noise floor")
            ax.set(xscale="log", yscale="log", xlabel="temperature τ", title=title)
        left.legend(fontsize=7)
        fig.suptitle(f"encoder-gradient estimators, {model.cfg.groups}x{model.cfg.categories} categorical VAE, one batch")
        fig.savefig(args.plot, dpi=110, bbox_inches="tight")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
