"""The LDM / taming conv autoencoder, laid out so that the released checkpoints load by name.

Method: the encoder/decoder of taming-transformers (Esser et al. 2021, arXiv 2012.09841) and latent diffusion
(Rombach et al. 2022, arXiv 2112.10752), which MAR's KL-16 (LTH14/mar @fe470ac ``models/vae.py``) and RQ-VAE
(kakaobrain/rq-vae-transformer @341395e ``rqvae/models/rqvae/modules.py``) use unchanged. It is the second backbone
of the conv tokenizers (``backbone = "ldm"``); benchkit's own :mod:`benchkit.nn.convnet` stays the default.

What differs from :mod:`benchkit.nn.convnet`, all as in the official code:
- GroupNorm with 32 groups and eps 1e-6 everywhere (the width must be a multiple of 32);
- ``num_res_blocks`` ResBlocks per level in the encoder and ``num_res_blocks + 1`` in the decoder;
- attention blocks after every ResBlock of the levels listed in ``attn_levels`` (encoder) and
  ``decoder_attn_levels`` (decoder), plus res / attention / res in both middle blocks;
- single-head attention with separate 1x1-conv q, k, v and ``proj_out``;
- downsampling by a stride-2 3x3 conv after zero padding (0, 1, 0, 1) on the right and bottom only;
- parameter names ``down.{level}.block.{i}``, ``down.{level}.attn.{i}``, ``down.{level}.downsample.conv``,
  ``mid.block_1 / attn_1 / block_2``, ``up.{level}`` stored in resolution order (index 0 = full resolution).
Levels count from 0 at full resolution, so ``attn_levels`` does not depend on the image size. The benchkit
backbone's ``norm`` and ``attention`` options do not apply here. At widths below 256, GroupNorm(32) has fewer than
8 channels per group, which slowed tiny tokenizers trained from scratch (see :mod:`benchkit.nn.convnet`); this
layout is meant for the official weights.

Deviations: attention goes through ``scaled_dot_product_attention`` (same maths, different summation order); no
dropout and no timestep embedding (the released models use neither).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchkit.nn.convnet import ConvDecoder, ConvEncoder, conv_kwargs

GROUPS = 32


def ldm_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm(32, channels, eps=1e-6), the only normalisation of the LDM backbone."""
    if channels % GROUPS:
        raise ValueError(f"the ldm backbone needs widths that are multiples of {GROUPS}, got {channels}")
    return nn.GroupNorm(GROUPS, channels, eps=1e-6, affine=True)


class LDMResBlock(nn.Module):
    """(GN, swish, conv3x3) x 2 plus a 1x1 ``nin_shortcut`` when the width changes."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = ldm_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = ldm_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_ch, H, W] -> [B, out_ch, H, W]."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class LDMAttnBlock(nn.Module):
    """Single-head spatial self-attention: x + proj_out(softmax(q k^T / sqrt(C)) v), q, k, v 1x1 convs of GN(x)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = ldm_norm(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, C, H, W]."""
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).reshape(B, 1, C, H * W).transpose(-1, -2) for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)[:, 0]  # [B, HW, C]
        return x + self.proj_out(out.transpose(-1, -2).reshape(B, C, H, W))


class Downsample(nn.Module):
    """Zero-pad right and bottom by one, then a stride-2 3x3 conv (taming's asymmetric padding)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, C, H/2, W/2]."""
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, C, 2H, 2W]."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: ``block`` (ResBlocks), ``attn`` (one per block, or none) and an optional resampler."""

    def __init__(self, widths: list[tuple[int, int]], attention: bool, resample: nn.Module | None, name: str) -> None:
        super().__init__()
        self.block = nn.ModuleList(LDMResBlock(i, o) for i, o in widths)
        self.attn = nn.ModuleList(LDMAttnBlock(o) for _, o in widths) if attention else nn.ModuleList()
        if resample is not None:
            self.add_module(name, resample)
        self.resample_name = name if resample is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ResBlock (then attention) per block, then the resampler when the level has one."""
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        return getattr(self, self.resample_name)(x) if self.resample_name else x


class MidBlock(nn.Module):
    """``block_1`` / ``attn_1`` / ``block_2`` at the lowest resolution."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.block_1 = LDMResBlock(ch, ch)
        self.attn_1 = LDMAttnBlock(ch)
        self.block_2 = LDMResBlock(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class LDMEncoder(nn.Module):
    """Images [B, in_ch, H, W] -> [B, out_ch, H/f, W/f], f = 2 ** (len(channel_mult) - 1)."""

    def __init__(
        self,
        *,
        out_ch: int,
        ch: int,
        channel_mult: tuple[int, ...],
        num_res_blocks: int,
        attn_levels: tuple[int, ...] = (),
        in_ch: int = 3,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_ch, ch, 3, padding=1)
        levels, width = [], ch
        for level, mult in enumerate(channel_mult):
            widths = [(width if i == 0 else ch * mult, ch * mult) for i in range(num_res_blocks)]
            width = ch * mult
            down = Downsample(width) if level < len(channel_mult) - 1 else None
            levels.append(Level(widths, level in attn_levels, down, "downsample"))
        self.down = nn.ModuleList(levels)
        self.mid = MidBlock(width)
        self.norm_out = ldm_norm(width)
        self.conv_out = nn.Conv2d(width, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class LDMDecoder(nn.Module):
    """Latents [B, in_ch, h, w] -> images [B, out_ch, h*f, w*f]; levels run from the lowest resolution up."""

    def __init__(
        self,
        *,
        in_ch: int,
        ch: int,
        channel_mult: tuple[int, ...],
        num_res_blocks: int,
        attn_levels: tuple[int, ...] = (),
        out_ch: int = 3,
    ) -> None:
        super().__init__()
        width = ch * channel_mult[-1]
        self.conv_in = nn.Conv2d(in_ch, width, 3, padding=1)
        self.mid = MidBlock(width)
        levels: list[Level] = []
        for level in reversed(range(len(channel_mult))):
            out = ch * channel_mult[level]
            widths = [(width if i == 0 else out, out) for i in range(num_res_blocks + 1)]
            width = out
            levels.insert(0, Level(widths, level in attn_levels, Upsample(width) if level > 0 else None, "upsample"))
        self.up = nn.ModuleList(levels)  # index 0 = full resolution, as stored in the checkpoints
        self.norm_out = ldm_norm(width)
        self.conv_out = nn.Conv2d(width, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def ldm_backbone(cfg: Any, enc_out: int, dec_in: int) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    """(encoder, quant_conv, post_quant_conv, decoder) of a tokenizer config with ``backbone = "ldm"``: the encoder
    gives ``enc_out`` channels, the 1x1 convs keep the width, the decoder takes ``dec_in``."""
    net = {"ch": cfg.ch, "channel_mult": cfg.channel_mult, "num_res_blocks": cfg.num_res_blocks}
    encoder = LDMEncoder(out_ch=enc_out, attn_levels=cfg.attn_levels, **net)
    decoder = LDMDecoder(in_ch=dec_in, attn_levels=cfg.decoder_attn_levels, **net)
    return encoder, nn.Conv2d(enc_out, enc_out, 1), nn.Conv2d(dec_in, dec_in, 1), decoder


def tokenizer_backbone(cfg: Any, enc_out: int, dec_in: int) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    """(encoder, quant_conv, post_quant_conv, decoder) of a conv tokenizer config: the LDM layout with its 1x1
    convs for ``backbone = "ldm"``, else benchkit's conv net with identity convs (no parameters)."""
    if cfg.backbone == "ldm":
        return ldm_backbone(cfg, enc_out, dec_in)
    net = conv_kwargs(cfg)
    return ConvEncoder(out_ch=enc_out, **net), nn.Identity(), nn.Identity(), ConvDecoder(in_ch=dec_in, **net)


BACKBONES = ("benchkit", "ldm")


def check_backbone_options(cfg: Any) -> None:
    """Range checks of the backbone options a conv tokenizer config carries (``backbone``, the attention levels)."""
    backbone = cfg.backbone
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    levels = len(cfg.channel_mult)
    for name in ("attn_levels", "decoder_attn_levels"):
        bad = [lv for lv in getattr(cfg, name) if not 0 <= lv < levels]
        if bad:
            raise ValueError(f"{name} must hold levels in 0..{levels - 1} (one per channel_mult entry), got {bad[0]}")
    if backbone == "ldm" and cfg.ch % GROUPS:
        raise ValueError(f"backbone 'ldm' needs ch to be a multiple of {GROUPS} (GroupNorm(32)), got {cfg.ch}")
