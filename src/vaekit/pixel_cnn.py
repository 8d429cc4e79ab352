"""An autoregressive likelihood over pixels for the discretized likelihoods (PixelCNN's masked
convolutions, van den Oord et al. 2016, over the parameters of PixelCNN++'s likelihood):

    p(x | z) = prod_pixels p(x_ij | x_<ij, z),    theta_ij = decoder(z)_ij + a_ij(x_<ij, decoder(z))
    h        = B_n(... B_1(A(x)))                 A: a masked k x k conv that sees the pixels before (i, j)
                                                  in raster order (every channel); B: residual masked 3x3
                                                  convs that also see their own position, with dropout on
                                                  their input in training (--autoregressive-dropout)
    a        = W_out SiLU(h + W_theta decoder(z))  (1x1 convs)

where theta is the parameter tensor of the discretized likelihood (logistic mixture or Gaussian) and
x_<ij the pixels above and to the left. The channels of one pixel stay with the likelihood: the
logistic mixture's means of G and B are linear in R (and G), so p(x_ij | x_<ij, z) is PixelCNN++'s
factorization; the discretized Gaussian's channels are independent given the earlier pixels.

The masked stack h reads each image once, however many latent samples share it (the IWAE's K); only the
last two 1x1 convs run per sample. W_out starts at zero: a fresh model is the factorized decoder. A
pixel's parameters depend on the rows R = (k - 1) / 2 + n above it and R columns either side, so
drawing pixel (i, j) recomputes the stack on that (R + 1) x (2R + 1) window only (`draw`): H x W small
passes, exact, with no cache to keep in step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, constraints


class MaskedConv2d(nn.Conv2d):
    """A k x k conv (odd k, zero padding, H and W kept) whose output at (i, j) reads the input at the
    positions before (i, j) in raster order, and at (i, j) itself when `center`.

    The rows below the centre are all masked, so the forward pass convolves with the top (k + 1) / 2 rows
    of the kernel only, over the input padded above: the same output for (k + 1) / 2 of the work."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, center: bool):
        super().__init__(in_channels, out_channels, kernel, padding=kernel // 2)
        mask = torch.zeros(kernel, kernel)
        mask[: kernel // 2] = 1  # the rows above
        mask[kernel // 2, : kernel // 2 + int(center)] = 1  # the left of this row (and the centre)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reach = self.kernel_size[0] // 2
        weight = (self.weight * self.mask)[:, :, : reach + 1]  # (out, in, reach + 1, k): the rows that read
        return F.conv2d(F.pad(x, (reach, reach, reach, 0)), weight, self.bias)


class PixelCNNContext(nn.Module):
    """a(x_<ij, theta): images (B, C, H, W) and the decoder's parameters (..., B, P, H, W) -> corrections of
    theta, (..., B, P, H, W)."""

    def __init__(self, image_channels: int, param_channels: int, hidden: int, blocks: int = 4, kernel: int = 5,
                 dropout: float = 0.0):
        super().__init__()
        self.dropout = dropout  # on each block's input, in training (PixelCNN++ uses 0.5 on CIFAR-10)
        self.first = MaskedConv2d(image_channels, hidden, kernel, center=False)
        self.blocks = nn.ModuleList(MaskedConv2d(hidden, hidden, 3, center=True) for _ in range(blocks))
        self.condition = nn.Conv2d(param_channels, hidden, 1)
        self.out = nn.Conv2d(hidden, param_channels, 1)
        nn.init.zeros_(self.out.weight)  # a fresh model is the factorized decoder
        nn.init.zeros_(self.out.bias)
        self.reach = kernel // 2 + blocks  # rows above (and columns either side) a pixel's parameters read

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """h: (B, C, H, W) -> (B, hidden, H, W); h_ij depends on x_<ij only."""
        h = self.first(x * 2 - 1)  # values centred on 0
        for block in self.blocks:
            h = h + block(F.dropout(F.silu(h), self.dropout, self.training))  # elementwise: still causal
        return h

    def forward(self, h: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """theta + a: the parameters of p(x_ij | x_<ij, z), shaped like theta (..., B, P, H, W)."""
        flat = theta.reshape(-1, *theta.shape[-3:])  # the leading dimensions (K samples) into the batch
        g = self.condition(flat).view(*theta.shape[:-3], -1, *theta.shape[-2:])  # (..., B, hidden, H, W)
        s = F.silu(h + g)  # (..., B, hidden, H, W)
        a = self.out(s.reshape(-1, *s.shape[-3:])).view(*s.shape[:-3], -1, *s.shape[-2:])
        return theta + a


class AutoregressivePixels(Distribution):
    """p(x | z) = prod_ij p(x_ij | x_<ij, z) for a discretized likelihood `kind` (likelihoods.py): log_prob
    is one masked pass; mean and sample fill the image pixel by pixel."""

    arg_constraints: dict = {}
    support = constraints.real  # the likelihood's levels in [0, 1]

    def __init__(self, theta: torch.Tensor, net: PixelCNNContext, build):
        """theta: (..., B, P, H, W), the decoder's output; build(params) -> the factorized likelihood with
        those parameters (its event shape (C, H, W) for params (..., P, H, W))."""
        self.theta, self.net, self.build = theta, net, build
        channels = build(theta[..., :1, :1]).event_shape[0]
        super().__init__(theta.shape[:-3], torch.Size((channels, *theta.shape[-2:])), validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over the pixels, for images x (B, C, H, W): (..., B)."""
        return self.build(self.net(self.net.features(value), self.theta)).log_prob(value)

    def _draw(self, fill: str) -> torch.Tensor:
        theta = self.theta.reshape(-1, *self.theta.shape[-3:])  # (N, P, H, W): every leading dimension in N
        height, width = theta.shape[-2:]
        reach = self.net.reach
        x = torch.zeros(len(theta), self.event_shape[0], height, width, device=theta.device, dtype=theta.dtype)
        for i in range(height):
            top = max(0, i - reach)
            for j in range(width):
                left, right = max(0, j - reach), min(width, j + reach + 1)
                window = (slice(top, i + 1), slice(left, right))  # all that pixel (i, j)'s parameters read
                params = self.net(self.net.features(x[..., window[0], window[1]]), theta[..., window[0], window[1]])
                pixel = self.build(params[..., i - top: i - top + 1, j - left: j - left + 1])
                x[..., i: i + 1, j: j + 1] = pixel.sample() if fill == "sample" else pixel.mean.clamp(0, 1)
        return x.view(*self.theta.shape[:-3], *self.event_shape)

    @property
    def mean(self) -> torch.Tensor:
        """The mean-field image: each pixel's E[x_ij | x_<ij, z] with the earlier pixels set to their means
        (E[x|z] itself has no closed form; this is the deterministic picture of it)."""
        with torch.no_grad():
            return self._draw("mean")

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """One image per row, drawn pixel by pixel (ancestral sampling): values on the likelihood's levels."""
        if sample_shape != torch.Size():
            raise ValueError("AutoregressivePixels draws one image per latent code: call it without a sample shape")
        with torch.no_grad():
            return self._draw("sample")
