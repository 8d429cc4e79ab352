"""An autoregressive pixel likelihood: the decoder's Bernoulli logits plus a masked network over the
pixels before each one (MADE, Germain et al. 2015), conditioned on the latent code:

    p(x | z) = prod_i Bernoulli(x_i; sigmoid(l_i)),   l_i = decoder(z)_i + a_i(x_<i, z)
    a(x, z)  = (M_out * W_out) SiLU((M_in * W_in) x + W_z z + b) + (M_direct * W_direct) x    (M: 0/1 masks)

over the C*H*W pixels in raster order. Hidden unit k has a degree m_k in 1..D-1 and sees the pixels
1..m_k and all of z; pixel i's logit sees the hidden units with m_k < i and, through the direct map,
the pixels before i. So l_i depends on x_<i and z only, and log p(x|z) of a whole image is one pass
(the training and the IWAE cost a few more matrix products than the factorized decoder's). The
output and direct weights start at zero: a fresh model is the factorized decoder.

The factorized decoder must explain every pixel from z alone; here z carries the image's shape
and the masked network the dependence between neighbouring pixels that z leaves. Drawing an image
needs D steps, one pixel at a time; each step updates the hidden pre-activations by one column, so
a step is a few vector operations (`draw`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, constraints


class MaskedLinear(nn.Linear):
    """y = x (W * mask)^T + b, with a fixed 0/1 mask of W's shape (out, in)."""

    def __init__(self, mask: torch.Tensor, bias: bool = True):
        super().__init__(mask.shape[1], mask.shape[0], bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight(), self.bias)


class PixelContext(nn.Module):
    """a(x, z): (B, D) pixels and (..., B, Z) latent context -> (..., B, D) logit corrections, a_i from x_<i
    and z. The pixels' part is computed once per image, however many latent samples share it."""

    def __init__(self, pixels: int, context_dim: int, hidden: int):
        super().__init__()
        inputs = torch.arange(1, pixels + 1)  # pixel i has degree i
        degrees = 1 + torch.arange(hidden) * max(pixels - 1, 1) // hidden  # hidden degrees, spread over 1..D-1
        self.hidden_in = MaskedLinear(degrees[:, None] >= inputs[None, :])  # unit k sees pixels 1..m_k
        self.context = nn.Linear(context_dim, hidden, bias=False)
        self.hidden_out = MaskedLinear(inputs[:, None] > degrees[None, :], bias=False)  # pixel i: units m_k < i
        self.direct = MaskedLinear(inputs[:, None] > inputs[None, :], bias=False)  # pixel i: pixels j < i
        nn.init.zeros_(self.hidden_out.weight)  # a fresh model is the factorized decoder
        nn.init.zeros_(self.direct.weight)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.hidden_in(x) + self.context(context))  # (..., B, H)
        return self.hidden_out(h) + self.direct(x)

    def draw(self, base_logits: torch.Tensor, context: torch.Tensor, fill: str) -> torch.Tensor:
        """Pixels one at a time: base_logits (N, D), context (N, Z) -> the filled pixels x (N, D).

        fill = "sample": x_i ~ Bernoulli(p_i(x_<i, z)), which feeds the later pixels (ancestral sampling);
        fill = "mean": x_i := p_i (a deterministic mean-field image, the picture of E[x|z])."""
        w_in, w_out, w_direct = self.hidden_in.masked_weight(), self.hidden_out.masked_weight(), self.direct.masked_weight()
        pre = self.context(context) + self.hidden_in.bias  # (N, H): no pixel seen yet
        x = torch.zeros_like(base_logits)  # (N, D): the pixels filled so far
        for i in range(base_logits.shape[1]):
            p = torch.sigmoid(base_logits[:, i] + F.silu(pre) @ w_out[i] + x @ w_direct[i])  # (N,)
            x[:, i] = torch.bernoulli(p) if fill == "sample" else p
            pre = pre + x[:, i, None] * w_in[:, i]
        return x


class AutoregressiveBernoulli(Distribution):
    """p(x | z) over images (C, H, W): log_prob is one masked pass; mean and sample draw pixel by pixel."""

    arg_constraints: dict = {}
    support = constraints.independent(constraints.boolean, 3)

    def __init__(self, base_logits: torch.Tensor, net: PixelContext, context: torch.Tensor):
        """base_logits: (..., B, C, H, W), the factorized decoder's output; context: (..., B, Z), what the net
        is conditioned on. The leading dimensions may hold K latent samples of each of B images."""
        self.base_logits, self.net, self.context = base_logits, net, context
        super().__init__(base_logits.shape[:-3], base_logits.shape[-3:], validate_args=False)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """l = decoder(z) + a(x_<., z): (..., B, C, H, W), for images x (B, C, H, W) or shaped like base_logits."""
        flat = x.flatten(-3)  # (B, D): the masked network reads each image once
        return self.base_logits + self.net(flat, self.context).view_as(self.base_logits)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over the pixels: (..., B)."""
        logits = self.logits(value)
        value = value.expand_as(logits)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum((-3, -2, -1))

    def _draw(self, fill: str) -> torch.Tensor:
        base = self.base_logits.reshape(-1, self.event_shape.numel())  # (N, D), every leading dimension in N
        context = self.context.reshape(-1, self.context.shape[-1])
        return self.net.draw(base, context, fill).view_as(self.base_logits)

    @property
    def mean(self) -> torch.Tensor:
        """The mean-field image: each p(x_i = 1 | x_<i, z) with the earlier pixels set to their probabilities.
        (E[x|z] itself has no closed form; this is the deterministic picture of it.)"""
        with torch.no_grad():
            return self._draw("mean")

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """One binary image per row, drawn pixel by pixel (ancestral sampling)."""
        if sample_shape != torch.Size():
            raise ValueError("AutoregressiveBernoulli draws one image per latent code: call it without a sample shape")
        with torch.no_grad():
            return self._draw("sample")
