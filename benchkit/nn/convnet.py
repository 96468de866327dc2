"""The one convolutional encoder/decoder that every benchkit tokenizer uses.

Method: the taming-transformers / latent-diffusion autoencoder (Esser et al. 2021, arXiv 2012.09841; Rombach et
al. 2022, arXiv 2112.10752), as used by RQ-VAE, LlamaGen's VQ tokenizer and MAR's KL-16: per resolution level a
stack of pre-activation ResBlocks (GroupNorm + SiLU + 3x3 conv), a stride-2 conv between levels, a middle block
res / attention / res at the lowest resolution, and a GroupNorm + SiLU + 3x3 conv head. The decoder mirrors it with
nearest-neighbour x2 upsampling followed by a 3x3 conv. ``channel_mult`` has one entry per level, so the spatial
downsampling factor is ``2 ** (len(channel_mult) - 1)``: ``(1, 2, 2)`` -> 4, ``(1, 2, 2, 2)`` -> 8,
``(1, 1, 2, 2, 4)`` -> 16. Widths are ``ch * channel_mult[level]``. What the three conv tokenizers share around
it (options, latent grid, scale calibration, reconstruction loss) is in ``benchkit.tokenizers.common``.

Deviations:
- Downsampling uses a symmetric zero padding of 1 (taming pads (0, 1, 0, 1)); the output grid is the same.
- Optional attention only in the middle block (the lowest resolution); the paper-sized models also place
  attention blocks inside the lowest level (LlamaGen, MAR's KL-16 encoder), which the tiny sizes do not need.
- ``norm`` picks the normalisation: ``group`` (GroupNorm, the papers' choice) or ``none``. The tiny tokenizers
  use ``none``: on shapes, with GroupNorm, the tiny-width autoencoders sat for hundreds of steps on a plateau where
  they reconstruct grey images (each image's colour lost) and left it at a seed-dependent step; without
  normalisation all three learned colour within 300 steps (measured, 400 steps at lr 2e-3: reconstruction MSE KL
  0.018, VQ 0.050, RQ 0.037 vs 0.080, 0.095, 0.095 with the old one-channel groups; data colour std 0.26).
- The GroupNorm group count is the largest of 32, 16, 8, 4, 2, 1 that divides the width AND leaves at least 8
  channels per group (taming: 32 groups of 4 at width 128; here 16 groups of 8). A group normalises away its own
  per-image mean, so one channel per group (what a plain "largest divisor" rule gives at widths 16-32) is an
  instance norm that erases each image's colour. eps 1e-6 as in taming.
- No gradient checkpointing and no timestep embedding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AttnBlock",
    "ConvDecoder",
    "ConvEncoder",
    "ResBlock",
    "conv_kwargs",
    "downsample_factor",
    "group_norm",
    "make_norm",
]


def downsample_factor(channel_mult: tuple[int, ...]) -> int:
    """Spatial downsampling factor of an encoder with these levels: ``2 ** (len(channel_mult) - 1)``."""
    return 2 ** (len(channel_mult) - 1)


MIN_GROUP_CHANNELS = 8  # see the module docstring: fewer channels per group erase per-image colour at tiny widths


NORMS = ("group", "none")


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count in (32, 16, ..., 1) that divides ``channels`` and leaves at least
    MIN_GROUP_CHANNELS channels in each group (one group when ``channels`` is smaller)."""
    groups = next(
        g for g in (32, 16, 8, 4, 2, 1) if (channels % g == 0 and channels // g >= MIN_GROUP_CHANNELS) or g == 1
    )
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


def make_norm(norm: str, channels: int) -> nn.Module:
    """The normalisation layer of the conv net: ``group`` (group_norm) or ``none`` (identity)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    return group_norm(channels) if norm == "group" else nn.Identity()


class ResBlock(nn.Module):
    """Pre-activation residual block: (GN, SiLU, conv3x3) x 2 plus a 1x1 skip when the width changes."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "group") -> None:
        super().__init__()
        self.norm1 = make_norm(norm, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = make_norm(norm, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_ch, H, W] -> [B, out_ch, H, W]."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv projections and a residual connection."""

    def __init__(self, ch: int, norm: str = "group") -> None:
        super().__init__()
        self.norm = make_norm(norm, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, C, H, W]."""
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2).unbind(1)  # each [B, HW, C]
        h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # [B, HW, C]
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


def _mid_block(ch: int, attention: bool, norm: str) -> nn.Sequential:
    attn = AttnBlock(ch, norm) if attention else nn.Identity()
    return nn.Sequential(ResBlock(ch, ch, norm), attn, ResBlock(ch, ch, norm))


def _check_args(ch: int, channel_mult: tuple[int, ...], num_res_blocks: int) -> None:
    if ch < 1 or not channel_mult or min(channel_mult) < 1 or num_res_blocks < 1:
        raise ValueError(
            f"need ch >= 1, a non-empty channel_mult of positive ints and num_res_blocks >= 1; "
            f"got ch={ch}, channel_mult={channel_mult}, num_res_blocks={num_res_blocks}"
        )


class ConvEncoder(nn.Module):
    """Images [B, in_ch, H, W] -> latents [B, out_ch, H/f, W/f] with f = 2 ** (len(channel_mult) - 1)."""

    def __init__(
        self,
        *,
        out_ch: int,
        ch: int = 32,
        channel_mult: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention: bool = True,
        norm: str = "group",
        in_ch: int = 3,
    ) -> None:
        super().__init__()
        _check_args(ch, channel_mult, num_res_blocks)
        self.factor = downsample_factor(channel_mult)
        self.conv_in = nn.Conv2d(in_ch, ch * channel_mult[0], 3, padding=1)
        layers: list[nn.Module] = []
        width = ch * channel_mult[0]
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(width, ch * mult, norm))
                width = ch * mult
            if level < len(channel_mult) - 1:  # stride-2 conv between levels
                layers.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.down = nn.Sequential(*layers)
        self.mid = _mid_block(width, attention, norm)
        self.norm_out = make_norm(norm, width)
        self.conv_out = nn.Conv2d(width, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_ch, H, W] -> [B, out_ch, H/f, W/f]."""
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class ConvDecoder(nn.Module):
    """Latents [B, in_ch, h, w] -> images [B, out_ch, h*f, w*f] (no output activation; callers clamp)."""

    def __init__(
        self,
        *,
        in_ch: int,
        ch: int = 32,
        channel_mult: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention: bool = True,
        norm: str = "group",
        out_ch: int = 3,
    ) -> None:
        super().__init__()
        _check_args(ch, channel_mult, num_res_blocks)
        self.factor = downsample_factor(channel_mult)
        width = ch * channel_mult[-1]
        self.conv_in = nn.Conv2d(in_ch, width, 3, padding=1)
        self.mid = _mid_block(width, attention, norm)
        layers: list[nn.Module] = []
        for level in reversed(range(len(channel_mult))):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(width, ch * channel_mult[level], norm))
                width = ch * channel_mult[level]
            if level > 0:  # nearest x2 then a 3x3 conv (taming Upsample)
                layers += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(width, width, 3, padding=1)]
        self.up = nn.Sequential(*layers)
        self.norm_out = make_norm(norm, width)
        self.conv_out = nn.Conv2d(width, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """[B, in_ch, h, w] -> [B, out_ch, h*f, w*f]."""
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


def conv_kwargs(cfg: Any) -> dict[str, Any]:
    """The ConvEncoder/ConvDecoder keyword arguments taken from a tokenizer config."""
    return {
        "ch": cfg.ch,
        "channel_mult": cfg.channel_mult,
        "num_res_blocks": cfg.num_res_blocks,
        "attention": cfg.attention,
        "norm": cfg.norm,
    }
