"""The 2-D map of a latent space, shared by the report and the explorer.

A map places each latent point z: (D,) on a plane of latent space and can go back from the plane:
    D = 2:  the plane is the latent space itself (the raw two dimensions);
    D = 1:  the line, drawn at height 0;
    D > 2:  the plane of the first two principal components of the test codes (PCA):
            map(z) = (z - m) W^T,  latent(p) = m + p W   (W: (2, D) orthonormal rows, m the mean code).
latent(p) is an affine combination of codes, so for a categorical latent each variable's entries still
sum to one. t-SNE (`method="tsne"`) only places the test codes; going back uses the PCA plane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import VaekitError

METHODS = ("auto", "pca", "tsne")


@dataclass
class LatentMap:
    points: np.ndarray  # (N, 2): where the codes are drawn (t-SNE or the plane)
    plane: np.ndarray  # (N, 2): the codes' projections onto the plane
    mean: np.ndarray  # (D,): m, the origin of the plane
    axes: np.ndarray  # (2, D): W, the plane's directions
    method: str  # "raw", "pca" or "tsne"
    xlabel: str
    ylabel: str

    def to_latent(self, p: np.ndarray) -> np.ndarray:
        """Latent points (M, D) of map points p: (M, 2)."""
        return self.mean + np.asarray(p, dtype=np.float64) @ self.axes

    def to_map(self, z: np.ndarray) -> np.ndarray:
        """Map points (M, 2) of latent points z: (M, D) (their projection onto the plane)."""
        return (np.asarray(z, dtype=np.float64) - self.mean) @ self.axes.T

    def extent(self, low: float = 2.0, high: float = 98.0) -> np.ndarray:
        """(2, 2): [[u_lo, u_hi], [v_lo, v_hi]], percentiles of the codes' places (a sweep's range)."""
        lo, hi = np.percentile(self.plane, low, axis=0), np.percentile(self.plane, high, axis=0)
        hi = np.where(hi > lo, hi, lo + 1.0)  # a collapsed axis still gets a range
        return np.stack([lo, hi], axis=1)

    def sweep(self, steps: int) -> np.ndarray:
        """Latent points (steps * steps, D) of a steps x steps grid over the plane, row by row from
        the top (high v) down, left (low u) to right: the order image_grid tiles them in."""
        (u_lo, u_hi), (v_lo, v_hi) = self.extent()
        u, v = np.linspace(u_lo, u_hi, steps), np.linspace(v_hi, v_lo, steps)
        grid = np.stack(np.meshgrid(u, v), axis=-1).reshape(-1, 2)
        return self.to_latent(grid)


def latent_map(codes: np.ndarray, method: str = "auto", seed: int = 0) -> LatentMap:
    """The map of codes (N, D): raw dimensions when D <= 2, else PCA; method="tsne" places the codes
    with t-SNE instead (the plane to go back through stays the PCA one)."""
    if method not in METHODS:
        raise VaekitError(f"unknown map method {method!r}: use one of {', '.join(METHODS)}")
    codes = np.asarray(codes, dtype=np.float64)
    n, d = codes.shape
    if n < 2:
        raise VaekitError("a latent map needs at least 2 test images")
    if d <= 2:
        axes = np.eye(2, d)  # D = 1: the second row is zero, so the points lie at height 0
        mean = np.zeros(d)
        names = ("z1", "z2") if d == 2 else ("z", "")
        method_used = "raw"
    else:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed).fit(codes)
        axes, mean = pca.components_, pca.mean_
        names, method_used = ("PC 1 of E[z|x]", "PC 2 of E[z|x]"), "pca"
    plane = LatentMap(np.zeros((n, 2)), np.zeros((n, 2)), mean, axes, method_used, *names)
    plane.plane = plane.points = plane.to_map(codes)
    if method == "tsne":
        from sklearn.manifold import TSNE

        # t-SNE needs a perplexity below the number of points, and its PCA start two dimensions.
        perplexity = float(min(30.0, max(2.0, (n - 1) / 3), n - 1))
        init = "pca" if d >= 2 and n > 2 else "random"
        plane.points = TSNE(n_components=2, perplexity=perplexity, init=init, random_state=seed).fit_transform(codes)
        plane.method, plane.xlabel, plane.ylabel = "tsne", "t-SNE 1", "t-SNE 2"
    return plane
