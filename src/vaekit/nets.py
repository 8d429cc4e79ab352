"""Encoder and decoder networks, sized from the image shape (C, H, W).

The encoder maps an image (and optionally a one-hot class) to the parameters (loc, scale) of the
diagonal-Gaussian q(z|x[,c]); the decoder maps z (and the class) to per-pixel parameters of
p(x|z[,c]): Bernoulli logits or Gaussian means. Distributions are built in the model, not here.

Conv body: a 3x3 conv, then stride-2 4x4 convs that halve H and W while both stay even and >= 8
(8x8 -> 4x4; 28x28 -> 14 -> 7; 32x32 -> 16 -> 8 -> 4), channels doubling each time. The decoder
mirrors it with transposed convs. MLP body: flatten, as in the classic 784-400-20 VAE.

Conditioning: the one-hot label is concatenated to the flattened image features (encoder) and to z
(decoder), and the conv decoder also adds a learned per-class bias to the input of each of its conv
stages. That bias is what concatenating K constant one-hot channels before each conv would give
(a constant channel through a conv is a constant, away from the border), at the cost of K x channels
weights per stage instead of K more input channels at every pixel. Without it the decoder can
learn to read the class from z alone, and samples z ~ p(z) drawn "as a trouser" come out as shirts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .errors import VaekitError
from .likelihoods import initial_bias, parameter_channels

Act = nn.SiLU


def num_downsamples(height: int, width: int, max_down: int = 3) -> int:
    n = 0
    while n < max_down and height % 2 == 0 and width % 2 == 0 and height >= 8 and width >= 8:
        height, width, n = height // 2, width // 2, n + 1
    return n


def conv_bodies(image_shape: tuple[int, int, int], width: int,
                out_channels: int | None = None) -> tuple[nn.Module, list[nn.Module], tuple[int, ...]]:
    """(encoder body: image -> features, decoder stages: features -> the likelihood's out_channels (default:
    the image's) per pixel, feature shape)."""
    c, h, w = image_shape
    n = num_downsamples(h, w)
    enc: list[nn.Module] = [nn.Conv2d(c, width, 3, padding=1), Act()]
    dec: list[nn.Module] = [nn.Conv2d(width, out_channels or c, 3, padding=1)]
    ch = width
    for _ in range(n):
        enc += [nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1), Act()]
        dec = [nn.Sequential(nn.ConvTranspose2d(2 * ch, ch, 4, stride=2, padding=1), Act()), *dec]
        ch *= 2
    feature_shape = (ch, h >> n, w >> n)
    return nn.Sequential(*enc, nn.Flatten()), dec, feature_shape


class ResidualBlock(nn.Module):
    """x + conv3x3(SiLU(conv3x3(SiLU(x)))), channels kept (pre-activation, He et al. 2016); the second conv
    starts at zero, so a fresh block is the identity and a deep stack trains like a shallow one."""

    def __init__(self, channels: int):
        super().__init__()
        self.in_channels = channels  # read by the decoder's per-class biases (stage_in_channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


def resnet_bodies(image_shape: tuple[int, int, int], width: int, out_channels: int,
                  blocks: int = 2) -> tuple[nn.Module, list[nn.Module], tuple[int, ...]]:
    """The residual body: a 3x3 conv, then per resolution `blocks` residual blocks and a stride-2 4x4 conv
    that halves H and W (while both stay even and >= 8, at most 4 times: 32x32 -> 4x4, 64x64 -> 4x4) and
    doubles the channels; the decoder mirrors it (transposed convs up, the same blocks) and ends in a
    3x3 conv to the likelihood's out_channels per pixel."""
    c, h, w = image_shape
    n = num_downsamples(h, w, max_down=4)
    enc: list[nn.Module] = [nn.Conv2d(c, width, 3, padding=1)]
    dec: list[nn.Module] = [nn.Sequential(*(ResidualBlock(width) for _ in range(blocks)), Act(),
                                          nn.Conv2d(width, out_channels, 3, padding=1))]
    ch = width
    for _ in range(n):
        enc += [*(ResidualBlock(ch) for _ in range(blocks)), nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1)]
        dec = [nn.Sequential(*(ResidualBlock(2 * ch) for _ in range(blocks)), Act(),
                             nn.ConvTranspose2d(2 * ch, ch, 4, stride=2, padding=1)), *dec]
        ch *= 2
    enc += [*(ResidualBlock(ch) for _ in range(blocks)), Act()]
    return nn.Sequential(*enc, nn.Flatten()), dec, (ch, h >> n, w >> n)


class GatedLinear(nn.Module):
    """h = (W x + b) * sigmoid(V x + c): a gated dense layer (Dauphin et al. 2017)."""

    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.linear = nn.Linear(inputs, 2 * outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.linear(x).chunk(2, dim=-1)
        return value * torch.sigmoid(gate)


def hidden_layers(inputs: int, hidden: int, layers: int, gated: bool) -> tuple[nn.Module, nn.ModuleList]:
    """The fully connected hidden layers: the first (`fc`, the name vaekit 0.1's checkpoints use) and
    `layers - 1` more of `hidden` units; each plain (SiLU applied by `dense`) or gated."""
    layer = GatedLinear if gated else nn.Linear
    return layer(inputs, hidden), nn.ModuleList(layer(hidden, hidden) for _ in range(layers - 1))


def dense(h: torch.Tensor, fc: nn.Module, deeper: nn.ModuleList) -> torch.Tensor:
    for layer in (fc, *deeper):
        h = layer(h) if isinstance(layer, GatedLinear) else F.silu(layer(h))
    return h


class Encoder(nn.Module):
    """x: (B, C, H, W), onehot: (B, K) or None -> loc, scale: (B, D)."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int, hidden: int, latent_dim: int,
                 layers: int = 1, gated: bool = False):
        super().__init__()
        self.body = body
        self.fc, self.deeper = hidden_layers(feature_dim + num_classes, hidden, layers, gated)
        self.out = nn.Linear(hidden, 2 * latent_dim)

    def forward(self, x: torch.Tensor, onehot: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.body(x), onehot)

    def head(self, h: torch.Tensor, onehot: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """From the body's features h: (..., F) and the extra input (..., K) to loc, scale: (..., D)."""
        if onehot is not None:
            h = torch.cat([h, onehot], dim=-1)
        loc, raw_scale = self.out(dense(h, self.fc, self.deeper)).chunk(2, dim=-1)
        return loc, F.softplus(raw_scale) + 1e-5


class Decoder(nn.Module):
    """z: (..., D), onehot: (..., K) or None -> per-pixel parameters (..., C, H, W).

    stages: modules applied in turn to the (B, ch, h, w) features; with classes, each stage's input
    gets a per-class bias (the conv decoder's stages; an MLP has none: its features are the image)."""

    def __init__(self, stages: list[nn.Module], feature_shape: tuple[int, ...], num_classes: int, hidden: int,
                 latent_dim: int, conv: bool, layers: int = 1, gated: bool = False):
        super().__init__()
        feature_dim = math.prod(feature_shape)
        self.fc, self.deeper = hidden_layers(latent_dim + num_classes, hidden, layers, gated)
        self.to_features = nn.Sequential(nn.Linear(hidden, feature_dim), *([Act()] if conv else []))
        self.unflatten = nn.Unflatten(1, feature_shape)
        self.stages = nn.ModuleList(stages)
        channels = [stage_in_channels(s) for s in stages] if num_classes else []
        self.class_bias = nn.ModuleList(nn.Linear(num_classes, ch, bias=False) for ch in channels)

    def forward(self, z: torch.Tensor, onehot: torch.Tensor | None = None) -> torch.Tensor:
        lead = z.shape[:-1]  # (B,), or (K, B) for K latent samples of each of B images
        z = z.reshape(-1, z.shape[-1])
        if onehot is not None:
            onehot = onehot.reshape(-1, onehot.shape[-1])
            z = torch.cat([z, onehot], dim=-1)
        h = self.unflatten(self.to_features(dense(z, self.fc, self.deeper)))
        for i, stage in enumerate(self.stages):
            if onehot is not None and self.class_bias:
                h = h + self.class_bias[i](onehot)[:, :, None, None]
            h = stage(h)
        return h.reshape(*lead, *h.shape[1:])


def stage_in_channels(stage: nn.Module) -> int:
    first = stage[0] if isinstance(stage, nn.Sequential) else stage
    return first.in_channels


def make_networks(cfg: ModelConfig, k: int = 0) -> tuple[Encoder, Decoder]:
    """Encoder and decoder for cfg.image_shape, cfg.arch, cfg.latent_dim, both conditioned on a one-hot
    class of k classes (k = 0: unconditional); the decoder outputs cfg.likelihood's parameters per pixel."""
    out_channels = parameter_channels(cfg)
    enc_body, dec_stages, feature_shape = _bodies(cfg, out_channels)
    encoder = Encoder(enc_body, math.prod(feature_shape), k, cfg.hidden, cfg.latent_dim, cfg.hidden_layers, cfg.gated)
    decoder = Decoder(dec_stages, _decoder_features(cfg, feature_shape, out_channels), k, cfg.hidden, cfg.latent_dim,
                      cfg.arch != "mlp", cfg.hidden_layers, cfg.gated)
    return encoder, start_likelihood(decoder, cfg)


def make_encoder(cfg: ModelConfig, latent_dim: int, k: int = 0) -> Encoder:
    """The encoder alone, to latent vectors of `latent_dim`, with an extra input of k numbers."""
    enc_body, _, feature_shape = _bodies(cfg, parameter_channels(cfg))
    return Encoder(enc_body, math.prod(feature_shape), k, cfg.hidden, latent_dim, cfg.hidden_layers, cfg.gated)


def make_decoder(cfg: ModelConfig, latent_dim: int, k: int = 0) -> Decoder:
    """The decoder alone, from latent vectors of `latent_dim` and an extra input of k numbers (a one-hot class)."""
    out_channels = parameter_channels(cfg)
    _, dec_stages, feature_shape = _bodies(cfg, out_channels)
    decoder = Decoder(dec_stages, _decoder_features(cfg, feature_shape, out_channels), k, cfg.hidden, latent_dim,
                      cfg.arch != "mlp", cfg.hidden_layers, cfg.gated)
    return start_likelihood(decoder, cfg)


@torch.no_grad()
def start_likelihood(decoder: Decoder, cfg: ModelConfig) -> Decoder:
    """Adds the likelihood's initial_bias (P,) to the decoder's last layer, at every pixel: a fresh model's
    p(x|z) starts there (the discretized likelihoods: near uniform over the levels) instead of at zeros."""
    bias = initial_bias(cfg)
    if bias is not None:
        last = decoder.stages[-1] if decoder.stages else decoder.to_features[0]
        last = last[-1] if isinstance(last, nn.Sequential) else last  # conv: (P,); MLP: (P * H * W,)
        last.bias.view(len(bias), -1).add_(bias.to(last.bias.dtype)[:, None])
    return decoder


def _decoder_features(cfg: ModelConfig, feature_shape: tuple[int, ...], out_channels: int) -> tuple[int, ...]:
    """The decoder's feature shape: the body's; an MLP's are the likelihood's parameters of each pixel."""
    return (out_channels, *cfg.image_shape[1:]) if cfg.arch == "mlp" else feature_shape


def _bodies(cfg: ModelConfig, out_channels: int | None = None) -> tuple[nn.Module, list[nn.Module], tuple[int, ...]]:
    c, h, w = cfg.image_shape
    if min(h, w) < 4 or c < 1:
        raise VaekitError(f"images of shape {cfg.image_shape} are too small: need at least 1x4x4")
    if cfg.arch == "conv":
        return conv_bodies(cfg.image_shape, cfg.width, out_channels)
    if cfg.arch == "resnet":
        return resnet_bodies(cfg.image_shape, cfg.width, out_channels or c)
    if cfg.arch == "mlp":
        return nn.Flatten(), [], cfg.image_shape
    raise VaekitError(f"unknown architecture '{cfg.arch}': use conv, resnet or mlp")


def make_classifier(cfg: ModelConfig, k: int) -> nn.Module:
    """x: (B, C, H, W) -> logits (B, k): the encoder's body (conv or MLP), a hidden layer, k outputs."""
    body, _, feature_shape = _bodies(cfg)
    return nn.Sequential(body, nn.Linear(math.prod(feature_shape), cfg.hidden), Act(), nn.Linear(cfg.hidden, k))
